#include "common/env.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include "common/metrics_log.h"
#include "common/sha256.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

TEST(EnvTest, AtomicWriteReplacesWholeFileAndLeavesNoTemporaries) {
  testing::ScopedTempDir dir;
  Env* env = Env::Default();
  std::string path = dir.File("a.txt");
  ASSERT_TRUE(env->WriteFileAtomic(path, "first").ok());
  ASSERT_TRUE(env->WriteFileAtomic(path, "second, longer").ok());
  auto text = env->ReadFile(path);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "second, longer");
  auto names = env->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"a.txt"});
  // From pieces: their concatenation, empty pieces included.
  const std::string big(3 << 20, 'x');
  const std::vector<std::string_view> pieces = {"head:", "", big, ":tail"};
  ASSERT_TRUE(env->WriteFileAtomic(path, pieces).ok());
  text = env->ReadFile(path);
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, "head:" + big + ":tail");
  EXPECT_EQ(Sha256Hex(pieces), Sha256Hex(*text));
  names = env->ListDir(dir.path());
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, std::vector<std::string>{"a.txt"});
}

TEST(EnvTest, MissingFileIsNotFound) {
  testing::ScopedTempDir dir;
  auto text = Env::Default()->ReadFile(dir.File("nope"));
  EXPECT_EQ(text.status().code(), StatusCode::kNotFound);
  EXPECT_NE(text.status().message().find("nope"), std::string::npos);
}

// Env::RemoveAll walks the tree itself (issue 7: std::filesystem::remove_all crashed in
// fedps-shard's Drain): nested folders, empty folders and files go; a symbolic link inside
// is removed without touching what it points to; a missing path is fine.
TEST(EnvTest, RemoveAllRemovesNestedFoldersButNotWhatLinksPointTo) {
  testing::ScopedTempDir dir;
  Env* env = Env::Default();
  const std::string root = dir.File("tree");
  ASSERT_TRUE(env->CreateDirs(root + "/a/b/c").ok());
  ASSERT_TRUE(env->CreateDirs(root + "/empty").ok());
  for (const char* f : {"/top.txt", "/a/one", "/a/b/two", "/a/b/c/three"}) {
    ASSERT_TRUE(env->WriteFileAtomic(root + f, f).ok());
  }
  const std::string outside = dir.File("outside");
  ASSERT_TRUE(env->CreateDirs(outside).ok());
  ASSERT_TRUE(env->WriteFileAtomic(outside + "/keep", "kept").ok());
  ASSERT_EQ(::symlink(outside.c_str(), (root + "/a/link").c_str()), 0);

  ASSERT_TRUE(env->RemoveAll(root).ok());
  EXPECT_FALSE(env->Exists(root));
  EXPECT_TRUE(env->Exists(outside + "/keep"));
  EXPECT_TRUE(env->RemoveAll(root).ok());  // already gone
  // A plain file too.
  ASSERT_TRUE(env->RemoveAll(outside + "/keep").ok());
  EXPECT_FALSE(env->Exists(outside + "/keep"));
  EXPECT_FALSE(env->RemoveAll("").ok());
}

TEST(EnvTest, ManualClockMovesOnlyWhenTold) {
  ManualClock clock(100);
  EXPECT_EQ(clock.NowMicros(), 100);
  clock.SleepForMicros(50);
  EXPECT_EQ(clock.NowMicros(), 150);
}

TEST(Sha256Test, KnownVectorsAndFile) {
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  testing::ScopedTempDir dir;
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(dir.File("f"), "abc").ok());
  auto h = Sha256File(dir.File("f"));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(*h, Sha256Hex("abc"));
}

TEST(MetricsLogTest, AppendsRecordsAndSkipsTornLine) {
  testing::ScopedTempDir dir;
  auto log = MetricsLog::Open(dir.File("run/metrics.jsonl"), "train");
  ASSERT_TRUE(log.ok());
  ASSERT_TRUE((*log)->Write("step", {{"step", 1}, {"loss", 2.5}}).ok());
  ASSERT_TRUE((*log)->Write("step", {{"step", 2}, {"loss", 2.0}}).ok());
  ASSERT_TRUE(Env::Default()->AppendToFile(dir.File("run/metrics.jsonl"), "{\"event\": \"tor").ok());
  auto records = ReadMetrics(dir.File("run/metrics.jsonl"));
  ASSERT_TRUE(records.ok());
  ASSERT_EQ(records->size(), 2u);
  EXPECT_EQ((*records)[1]["step"], 2);
  EXPECT_EQ((*records)[0]["source"], "train");
}

}  // namespace
}  // namespace fedps
