// The commit log as shards read it (docs/registry.md, "Commit chain"): Registry::ReadLog
// returns the entry at a version with the entries after it, and every entry carries a
// commit chain that stands for the whole log up to it, so that a registry rolled back the
// way Redis loses its last acknowledged writes (tests/testing/registry_rollback.h) is told
// apart from the history a shard applied, even where the same update lands on the same seq.
// Trimming (docs/registry.md, "Trimming"): the log is cut below the oldest checkpoint every
// shard keeps, Redis memory stays flat over thousands of commits, and a trimmed update is
// never committed again. Against a private redis-server.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <set>
#include <sstream>

#include "ps/registry.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/registry_rollback.h"
#include "tests/testing/status_assert.h"

namespace fedps {
namespace {

using std::chrono::milliseconds;
using testing::ScopedRedisServer;

constexpr milliseconds kLease{60000};

#define ASSERT_OK_AND_ASSIGN_LOG(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_LOG_IMPL(FEDPS_CONCAT(log_or_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_LOG_IMPL(tmp, lhs, expr)                  \
  auto tmp = (expr);                                                   \
  ASSERT_TRUE(tmp.ok()) << #expr << " -> " << tmp.status().ToString(); \
  lhs = std::move(tmp).value()
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

// ---- trimming ---------------------------------------------------------------------------

class RegistryTrimTest : public RegistryLogTest {
 protected:
  void SetUp() override {
    RegistryLogTest::SetUp();
    RunIdentity id;
    id.model_preset = "tiny";
    id.layout_hash = "layout";
    id.tokenizer_sha256 = "tok";
    id.codec = "fp32";
    id.num_shards = 2;
    ASSERT_OK(reg_->InitRun(id).status());
    for (int i = 0; i < 2; ++i) {
      auto e =
          reg_->RegisterShard({i, "127.0.0.1:1", i * 10, i * 10 + 10, 1}, std::chrono::hours(1));
      ASSERT_OK(e.status());
      shard_epoch_[i] = *e;
    }
  }
  // Stages `id` on both shards and commits it for `client` (epoch); returns its seq.
  StatusOr<int64_t> Commit2(const std::string& id, const std::string& client, int64_t epoch) {
    for (int i = 0; i < 2; ++i) RETURN_IF_ERROR(reg_->MarkStaged(id, i, shard_epoch_[i]).status());
    return reg_->CommitUpdate(id, client, epoch, {{"tokens", 10}}, 2);
  }
  std::string Id(int64_t epoch, int64_t k) {
    return "ann/" + std::to_string(epoch) + "/" + std::to_string(k);
  }
  // Shard i reports its oldest kept checkpoint, as its heartbeat does.
  void Report(int i, int64_t oldest) {
    ShardStats st;
    st.oldest_checkpoint_version = oldest;
    ASSERT_OK(reg_->ShardHeartbeat(i, shard_epoch_[i], &st));
  }
  int64_t Info(const std::string& field) {
    auto info = redis_.Command({"INFO", "memory"});
    EXPECT_OK(info.status());
    std::istringstream in(info.ok() ? *info : "");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind(field + ":", 0) == 0) return std::stoll(line.substr(field.size() + 1));
    }
    return -1;
  }
  int64_t Keys() {
    auto n = redis_.Command({"DBSIZE"});
    return n.ok() ? std::stoll(*n) : -1;
  }
  int64_t shard_epoch_[2] = {0, 0};
};

TEST_F(RegistryTrimTest, TheLogIsTrimmedBelowTheOldestCheckpointOfEveryShard) {
  for (int k = 1; k <= 10; ++k) ASSERT_OK(Commit2(Id(epoch_, k), "ann", epoch_).status());
  // Nothing while a shard has not reported.
  Report(0, 8);
  ASSERT_OK_AND_ASSIGN_LOG(auto none, reg_->TrimLog(1000));
  EXPECT_EQ(none.trimmed, 0);
  EXPECT_EQ(none.below, 1);
  // The lower of the two.
  Report(1, 6);
  ASSERT_OK_AND_ASSIGN_LOG(auto first, reg_->TrimLog(1000));
  EXPECT_EQ(first.trimmed, 5);
  EXPECT_EQ(first.below, 6);
  Report(1, 9);
  ASSERT_OK_AND_ASSIGN_LOG(auto second, reg_->TrimLog(1));  // at most one entry a call
  EXPECT_EQ(second.trimmed, 1);
  EXPECT_EQ(second.below, 7);
  ASSERT_OK_AND_ASSIGN_LOG(auto third, reg_->TrimLog(1000));
  EXPECT_EQ(third.trimmed, 1);
  EXPECT_EQ(third.below, 8);
  ASSERT_OK_AND_ASSIGN_LOG(auto again, reg_->TrimLog(1000));  // idempotent
  EXPECT_EQ(again.trimmed, 0);
  ASSERT_OK_AND_ASSIGN_LOG(TrimmedLog t, reg_->Trimmed());
  EXPECT_EQ(t.below, 8);
  EXPECT_EQ(t.entries, 7);
  EXPECT_EQ(t.tokens, 70);
  // The kept part reads as before: from seq 8 on, the entry at the oldest checkpoint kept.
  ASSERT_OK_AND_ASSIGN_LOG(auto log, reg_->CommittedAfter(0, 100));
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log.front().seq, 8);
  EXPECT_EQ(log.back().seq, 10);
  ASSERT_OK_AND_ASSIGN_LOG(LogRead at8, reg_->ReadLog(8, 10));
  ASSERT_TRUE(at8.at.has_value());
  EXPECT_EQ(at8.at->update_id, Id(epoch_, 8));
  // New commits chain on from the kept head.
  ASSERT_OK_AND_ASSIGN_LOG(int64_t seq, Commit2(Id(epoch_, 11), "ann", epoch_));
  EXPECT_EQ(seq, 11);
  EXPECT_EQ(ChainAt(11).size(), 40u);
}

// A client resending an update whose record was trimmed must learn it is done, and its
// commit must be refused, never take a new seq.
TEST_F(RegistryTrimTest, ATrimmedUpdateIsNeverCommittedAgain) {
  for (int k = 1; k <= 10; ++k) ASSERT_OK(Commit2(Id(epoch_, k), "ann", epoch_).status());
  Report(0, 8);
  Report(1, 8);
  ASSERT_OK(reg_->TrimLog(1000).status());
  auto looked = reg_->LookupCommit(Id(epoch_, 3));
  EXPECT_EQ(looked.status().code(), StatusCode::kOutOfRange) << looked.status().ToString();
  EXPECT_THAT(looked.status().message(), ::testing::HasSubstr("never committed again"));
  EXPECT_THAT(looked.status().message(), ::testing::HasSubstr("keeps seqs from 8"));
  auto again = Commit2(Id(epoch_, 3), "ann", epoch_);
  EXPECT_EQ(again.status().code(), StatusCode::kOutOfRange) << again.status().ToString();
  // An older counter that was never committed (given up) is refused the same way.
  EXPECT_EQ(Commit2(Id(epoch_, 0), "ann", epoch_).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(*reg_->GlobalSeq(), 10);
  // Kept records answer as before; newer counters and later memberships commit.
  ASSERT_OK_AND_ASSIGN_LOG(CommittedUpdate kept, reg_->LookupCommit(Id(epoch_, 8)));
  EXPECT_EQ(kept.seq, 8);
  EXPECT_EQ(reg_->LookupCommit(Id(epoch_, 12)).status().code(), StatusCode::kNotFound);
  ASSERT_OK_AND_ASSIGN_LOG(int64_t s11, Commit2(Id(epoch_, 11), "ann", epoch_));
  EXPECT_EQ(s11, 11);
  ASSERT_OK_AND_ASSIGN_LOG(int64_t e2, reg_->Join("ann", {"h", {}}, kLease));
  ASSERT_OK_AND_ASSIGN_LOG(int64_t s12, Commit2(Id(e2, 1), "ann", e2));  // a fresh state folder
  EXPECT_EQ(s12, 12);
  // Another client's ids are not touched by ann's floor.
  ASSERT_OK_AND_ASSIGN_LOG(int64_t bob, reg_->Join("bob", {"h", {}}, kLease));
  ASSERT_OK_AND_ASSIGN_LOG(int64_t s13, Commit2("bob/" + std::to_string(bob) + "/1", "bob", bob));
  EXPECT_EQ(s13, 13);
}

// Issue 9: "the commit log is trimmed below the lowest version every shard has
// checkpointed (test: Redis memory stays flat over thousands of commits)".
TEST_F(RegistryTrimTest, RedisMemoryStaysFlatOverThousandsOfCommits) {
  RegistryOptions o = reg_->options();
  o.events_max_len = 50;  // the event stream has its own cap; keep it small here
  auto r = Registry::Connect(o);
  ASSERT_OK(r.status());
  reg_ = std::move(r).value();
  int64_t k = 0;
  auto run = [&](int n, bool trim) {
    for (int i = 0; i < n; ++i) {
      ++k;
      ASSERT_OK(Commit2(Id(epoch_, k), "ann", epoch_).status());
      if (trim && k % 50 == 0) {  // shards checkpoint every 50 and keep the last two
        Report(0, k - 50);
        Report(1, k - 50);
        ASSERT_OK(reg_->TrimLog(1000).status());
      }
    }
  };
  run(500, true);
  const int64_t mem0 = Info("used_memory"), keys0 = Keys();
  run(3000, true);
  const int64_t mem1 = Info("used_memory"), keys1 = Keys();
  // The same commits without trimming, for scale.
  run(500, false);
  const int64_t mem2 = Info("used_memory");
  const double per_commit = (mem2 - mem1) / 500.0;
  std::printf(
      "[trim] used_memory %ld -> %ld bytes over 3000 trimmed commits (keys %ld -> %ld); "
      "untrimmed: %.0f bytes per commit\n",
      long(mem0), long(mem1), long(keys0), long(keys1), per_commit);
  EXPECT_GT(per_commit, 100);
  EXPECT_LE(keys1, keys0);
  // Flat: less than what 10% of those commits would hold untrimmed (allocator noise is a
  // few tens of KB).
  EXPECT_LT(mem1 - mem0, 3000 * per_commit * 0.10);
  ASSERT_OK_AND_ASSIGN_LOG(TrimmedLog t, reg_->Trimmed());
  EXPECT_EQ(t.below, 3450);
  EXPECT_EQ(t.entries, 3449);
}

}  // namespace
}  // namespace fedps
