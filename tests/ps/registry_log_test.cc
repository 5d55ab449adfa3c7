// The commit log as shards read it (docs/registry.md, "Commit chain"): Registry::ReadLog
// returns the entry at a version with the entries after it, and every entry carries a
// commit chain that stands for the whole log up to it, so that a registry rolled back the
// way Redis loses its last acknowledged writes (tests/testing/registry_rollback.h) is told
// apart from the history a shard applied, even where the same update lands on the same seq.
// Against a private redis-server.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>

#include "ps/registry.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/registry_rollback.h"
#include "tests/testing/status_assert.h"

namespace fedps {
namespace {

using std::chrono::milliseconds;
using testing::ScopedRedisServer;

constexpr milliseconds kLease{60000};
constexpr const char* kRun = "log1";

class RegistryLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(redis_.Start());
    RegistryOptions o;
    o.port = redis_.port();
    o.run_id = kRun;
    auto r = Registry::Connect(o);
    ASSERT_OK(r.status());
    reg_ = std::move(r).value();
    auto epoch = reg_->Join("ann", {"h", {}}, kLease);
    ASSERT_OK(epoch.status());
    epoch_ = *epoch;
  }

  // Stages `id` on the one shard and commits it; returns its seq (-1 on failure).
  int64_t Commit(const std::string& id) {
    Status marked = reg_->MarkStaged(id, 0, 0).status();
    EXPECT_OK(marked);
    auto seq = reg_->CommitUpdate(id, "ann", epoch_, {{"tokens", 10}}, 1);
    EXPECT_OK(seq.status());
    return seq.ok() ? *seq : -1;
  }

  std::string ChainAt(int64_t seq) {
    auto log = reg_->ReadLog(seq, 0);
    EXPECT_OK(log.status());
    return log.ok() && log->at ? log->at->chain : "";
  }

  ScopedRedisServer redis_;
  std::unique_ptr<Registry> reg_;
  int64_t epoch_ = 0;
};

TEST_F(RegistryLogTest, ReadLogReturnsTheEntryAtAVersionAndTheOnesAfterIt) {
  for (const char* id : {"ann/1/1", "ann/1/2", "ann/1/3", "ann/1/4"}) Commit(id);
  auto log = reg_->ReadLog(2, 10);
  ASSERT_OK(log.status());
  EXPECT_EQ(log->head, 4);
  ASSERT_TRUE(log->at.has_value());
  EXPECT_EQ(log->at->update_id, "ann/1/2");
  EXPECT_EQ(log->at->seq, 2);
  ASSERT_EQ(log->after.size(), 2u);
  EXPECT_EQ(log->after[0].update_id, "ann/1/3");
  EXPECT_EQ(log->after[1].update_id, "ann/1/4");
  // A limit caps the entries after, never drops the one at the version.
  log = reg_->ReadLog(1, 1);
  ASSERT_OK(log.status());
  ASSERT_TRUE(log->at.has_value());
  EXPECT_EQ(log->at->update_id, "ann/1/1");
  ASSERT_EQ(log->after.size(), 1u);
  EXPECT_EQ(log->after[0].seq, 2);
  // Version 0 has no entry; a version past the head neither, and nothing after.
  log = reg_->ReadLog(0, 0);
  ASSERT_OK(log.status());
  EXPECT_FALSE(log->at.has_value());
  EXPECT_TRUE(log->after.empty());
  log = reg_->ReadLog(9, 10);
  ASSERT_OK(log.status());
  EXPECT_FALSE(log->at.has_value());
  EXPECT_TRUE(log->after.empty());
  EXPECT_EQ(log->head, 4);
  EXPECT_EQ(reg_->ReadLog(-1, 1).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(RegistryLogTest, TheCommitChainTellsARolledBackHistoryApart) {
  for (const char* id : {"ann/1/1", "ann/1/2", "ann/1/3"}) Commit(id);
  const std::string c1 = ChainAt(1), c2 = ChainAt(2), c3 = ChainAt(3);
  EXPECT_EQ(c1.size(), 40u);  // sha1 hex
  EXPECT_EQ(std::set<std::string>({c1, c2, c3}).size(), 3u);
  auto looked = reg_->LookupCommit("ann/1/3");
  ASSERT_OK(looked.status());
  EXPECT_EQ(looked->chain, c3);

  // Redis lost seqs 2 and 3; the same updates commit again in the same order: the same
  // history, the same chains.
  ASSERT_OK(testing::RollBackCommitLog(redis_, kRun, 1));
  EXPECT_EQ(*reg_->GlobalSeq(), 1);
  EXPECT_EQ(Commit("ann/1/2"), 2);
  EXPECT_EQ(Commit("ann/1/3"), 3);
  EXPECT_EQ(ChainAt(2), c2);
  EXPECT_EQ(ChainAt(3), c3);

  // Lost again; now another update takes seq 2 and ann/1/3 lands on seq 3 once more: the
  // same id at seq 3, another chain.
  ASSERT_OK(testing::RollBackCommitLog(redis_, kRun, 1));
  EXPECT_EQ(Commit("ann/1/9"), 2);
  EXPECT_EQ(Commit("ann/1/3"), 3);
  auto log = reg_->ReadLog(3, 0);
  ASSERT_OK(log.status());
  ASSERT_TRUE(log->at.has_value());
  EXPECT_EQ(log->at->update_id, "ann/1/3");
  EXPECT_NE(log->at->chain, c3);
  EXPECT_EQ(ChainAt(1), c1);  // the history below the loss is untouched
}

}  // namespace
}  // namespace fedps
