// A registry that lost acknowledged commits and handed their seqs to other updates
// (docs/fault-tolerance.md, "Redis loses its last acknowledged writes"): in-process
// ShardCores against a real redis-server whose state is rolled back the way Redis with
// `appendfsync everysec` loses its last second (tests/testing/registry_rollback.h), then
// other updates are committed until the log's head is back at the shards' version, so the
// head check alone sees nothing wrong. Both ways a shard reads the log are covered: the
// apply loop (woken by commit_notify) and a re-registration after a lapsed lease
// (ShardCore::Resume with Registry::ReadLog). The shards halt with DATA_LOSS naming the
// seq and the update ids, and apply nothing.
#include "tests/ps/shard_core_fixture.h"
#include "tests/testing/registry_rollback.h"

namespace fedps {
namespace {

using namespace shard_core_testing;
using ::testing::HasSubstr;

class ShardDivergenceTest : public ShardCoreTest {
 protected:
  // Commits updates 1..3 on both shards, rolls the registry back to seq 1 (2 and 3 lost),
  // and commits `recommitted` (ids of alice) as seqs 2 and 3. Shard 1's apply loop reads
  // the log only when nudged; shard 0 is fenced while this happens (its lease lapsed while
  // Redis was away) and resumes afterwards. Checks both halt naming `want`.
  void RunSeqReuse(const std::vector<std::string>& recommitted,
                   const std::vector<std::string>& want) {
    auto o1 = Options(1);
    o1.poll_ms = 600000;  // the apply loop reads the log when commit_notify wakes it
    auto c0 = StartCore(Options(0));
    auto c1 = StartCore(o1);
    ASSERT_TRUE(c0 && c1);
    for (int k = 1; k <= 3; ++k) {
      const int64_t seq = StageAndCommit({c0.get(), c1.get()}, k, k - 1);
      ASSERT_EQ(seq, k);
      ASSERT_CORE_OK(c1->CommitNotify(Header(1), "alice/1/" + std::to_string(k), seq));
      ASSERT_TRUE(c0->WaitForVersion(k, 10000) && c1->WaitForVersion(k, 10000));
    }
    CheckpointResult ck;  // shard 1's restart below starts from version 3
    ASSERT_CORE_OK(c1->Checkpoint(Header(1), "test", &ck));
    ASSERT_EQ(ck.version, 3);
    c0->Fence("test: the lease lapsed while Redis was away");

    ASSERT_OK(testing::RollBackCommitLog(redis_, kRun, 1));
    // Other updates take seqs 2 and 3. The shards still hold the staged slices of 1..3
    // (kept as their replay log) and stage new ones; the marks are written directly, as
    // the shards' MarkStaged would (shard 0 is fenced, shard 1 answers a resend from
    // memory).
    for (const std::string& id : recommitted) {
      if (id != "alice/1/2" && id != "alice/1/3") {
        PushResult r;
        ASSERT_CORE_OK(PushAll(*c1, 1, id, 1, Delta(9, 1), &r));
        ASSERT_EQ(r.state, UpdateState::kStaged);
      }
      const int64_t base = id == "alice/1/3" ? 2 : 1;
      const nlohmann::json record = {{"base_version", base}, {"tokens", 1000}, {"local_steps", 10}};
      for (int s = 0; s < kShards; ++s) ASSERT_OK(registry_->MarkStaged(id, s, 0, record).status());
      ASSERT_OK(Commit(id, base).status());
    }
    ASSERT_EQ(*registry_->GlobalSeq(), 3);  // the head is back at the shards' version

    // The apply loop reads the log: the entry at its version is not the one it applied.
    ASSERT_CORE_OK(
        c1->CommitNotify(Header(1), recommitted.front(), 2));  // staged here: it wakes the loop
    ASSERT_TRUE(testing::WaitFor([&] { return c1->GetStatus().state == ShardState::kHalted; },
                                 std::chrono::seconds(10)));
    // Re-registration: the same check before un-fencing.
    auto log = registry_->ReadLog(3, 0);
    ASSERT_OK(log.status());
    Status resumed = c0->Resume(RegisterInDirectory(c0->options()), 3, *log);
    EXPECT_EQ(resumed.code(), StatusCode::kDataLoss) << resumed.ToString();
    EXPECT_EQ(c0->GetStatus().state, ShardState::kHalted);

    for (ShardCore* c : {c0.get(), c1.get()}) {
      const CoreStatus st = c->GetStatus();
      for (const std::string& w : want) EXPECT_THAT(st.halt_message, HasSubstr(w));
      EXPECT_EQ(st.version, 3);
      EXPECT_EQ(c->AppliedLog().size(), 3u) << "nothing applied after the rollback";
      PullArgs a;
      a.header = Header(c == c0.get() ? 0 : 1);
      a.codec = "fp32";
      PullResult r;
      CoreError e = c->Pull(a, &r);
      EXPECT_EQ(e.code, ShardErrorCode::kDataLoss);
      EXPECT_THAT(e.message, HasSubstr("reused a seq"));
    }
    // A restart does not get past it: the checkpoint records the update applied at its
    // version, and the log has another one there.
    c1.reset();
    auto again = ShardCore::Create(o1);
    ASSERT_OK(again.status());
    ASSERT_OK((*again)->Start());
    ASSERT_TRUE(testing::WaitFor([&] { return (*again)->GetStatus().state == ShardState::kHalted; },
                                 std::chrono::seconds(10)));
    EXPECT_EQ((*again)->GetStatus().version, 3);
    EXPECT_TRUE((*again)->AppliedLog().empty());
  }
};

// Seq 3 went to another update: the ids differ.
TEST_F(ShardDivergenceTest, ASeqReusedForAnotherUpdateHaltsWithDataLossNamingBothIds) {
  RunSeqReuse({"alice/1/4", "alice/1/5"},
              {"seq 3 is update alice/1/5", "applied update alice/1/3"});
}

// Seq 3 holds the very update the shards applied there, but seq 2 does not: only the
// commit chain tells the histories apart.
TEST_F(ShardDivergenceTest, TheSameUpdateAtTheSeqAfterAnotherHistoryHaltsOnTheCommitChain) {
  RunSeqReuse({"alice/1/4", "alice/1/3"},
              {"seq 3 is update alice/1/3 (chain", "after another history"});
}

}  // namespace
}  // namespace fedps
