// StagedStore: a detached expired update frees its name at once, so a push of the same id
// that stages after it keeps its own file when the old bytes are discarded (the shard's
// expiry drops an entry and detaches its file under one lock; docs/fault-tolerance.md).
#include "ps/staged_store.h"

#include <gtest/gtest.h>

#include "common/env.h"
#include "compression/codec.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

Status Stage(const StagedStore& store, const std::string& id, const std::vector<std::string>& frames,
             const std::vector<uint64_t>& checksums) {
  const nlohmann::json record = {{"base_version", 0}, {"tokens", 10}, {"local_steps", 1}};
  ASSIGN_OR_RETURN(auto writer, store.Begin(id, "alice", record, static_cast<int64_t>(frames.size())));
  for (size_t i = 0; i < frames.size(); ++i) RETURN_IF_ERROR(writer->AddFrame(static_cast<int64_t>(i), frames[i]));
  return writer->Finish(checksums, /*sum_squares=*/0.0);
}

// Two real fp32 frames of 4 values each, all `v`.
std::vector<std::string> Frames(float v) {
  CodecOptions o;
  o.kind = CodecKind::kFp32;
  o.chunk_elements = 4;
  o.threads = 1;
  auto codec = Codec::Create(o);
  EXPECT_TRUE(codec.ok());
  const std::vector<float> values(8, v);
  auto frames = (*codec)->Encode(values);
  EXPECT_TRUE(frames.ok());
  return frames.ok() ? *frames : std::vector<std::string>();
}

TEST(StagedStoreTest, ADetachedUpdateFreesItsNameForAPushOfTheSameId) {
  testing::ScopedTempDir dir;
  StagedStore store(dir.File("staged"), {0, 0, 16}, Env::Default());
  ASSERT_OK(store.Init());
  const std::vector<std::string> old_frames = Frames(1.0f), new_frames = Frames(2.0f);
  ASSERT_OK(Stage(store, "alice/1/1", old_frames, {11, 12}));

  const std::string detached = store.Detach("alice/1/1");
  ASSERT_FALSE(detached.empty());
  EXPECT_FALSE(Env::Default()->Exists(store.Path("alice/1/1")));
  EXPECT_EQ(store.Read("alice/1/1").status().code(), StatusCode::kDataLoss);

  // The same id staged again before the old bytes are gone (the race the detach closes).
  ASSERT_OK(Stage(store, "alice/1/1", new_frames, {21, 22}));
  store.Discard(detached);
  EXPECT_FALSE(Env::Default()->Exists(detached));
  auto read = store.Read("alice/1/1");
  ASSERT_OK(read.status());
  const StagedUpdate& u = *read;
  EXPECT_EQ(u.frames, new_frames);
}

TEST(StagedStoreTest, ADetachedFileLeftByACrashIsRemovedWhenIndexed) {
  testing::ScopedTempDir dir;
  StagedStore store(dir.File("staged"), {0, 0, 16}, Env::Default());
  ASSERT_OK(store.Init());
  ASSERT_OK(Stage(store, "bob/1/1", Frames(1.0f), {1, 2}));
  ASSERT_OK(Stage(store, "bob/1/2", Frames(2.0f), {3, 4}));
  const std::string detached = store.Detach("bob/1/1");  // and no Discard: the process died
  ASSERT_TRUE(Env::Default()->Exists(detached));
  auto index = store.Index();
  ASSERT_OK(index.status());
  const std::vector<StagedUpdate>& kept = *index;
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].update_id, "bob/1/2");
  EXPECT_FALSE(Env::Default()->Exists(detached));
}

}  // namespace
}  // namespace fedps
