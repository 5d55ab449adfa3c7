// Commit-log trimming by real fedps-shard processes (docs/registry.md, "Trimming"): with
// checkpoints every few updates, the shards report their oldest kept checkpoint in their
// heartbeats and trim the log below it; a shard killed with kill -9 restarts from a kept
// checkpoint and replays the kept log to the head; the log's kept part stays contiguous and
// an early update's commit lookup says it was trimmed instead of "not committed".
#include <gtest/gtest.h>

#include "tests/fault/fault_fixture.h"

namespace fedps {
namespace fault_testing {

TEST_F(FaultTest, ShardsTrimTheCommitLogBelowTheirCheckpointsAndStillRecover) {
  Knobs k;
  k.extra_ps = "shard_lease_ms = 2000\n";  // beats (and trims) every 0.4 s
  std::string config = WriteConfig(k);
  {
    // checkpoint_every = 0 in the fixture's config: every 5 updates here.
    std::string text = ReadText(config);
    const std::string from = "checkpoint_every = 0";
    ASSERT_NE(text.find(from), std::string::npos);
    text.replace(text.find(from), from.size(), "checkpoint_every = 5");
    std::ofstream(config) << text;
  }
  StartShards(config);
  if (HasFatalFailure()) return;
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  ScopedProcess c0 = StartClient(config, "t-0", 0);
  ScopedProcess c1 = StartClient(config, "t-1", 1);
  auto below = [&]() -> int64_t {
    auto t = reg->Trimmed();
    return t.ok() ? t->below : -1;
  };
  ASSERT_TRUE(testing::WaitFor([&] { return Seq(*reg) >= 30 && below() > 10; }, 120s, 50ms))
      << "seq " << Seq(*reg) << ", log kept from " << below() << "\n"
      << testing::ReadLogTail(shards_[0].log_path());
  const std::vector<CommittedUpdate> early = CommitLog(*reg);
  ASSERT_FALSE(early.empty());
  EXPECT_GT(early.front().seq, 1);

  // kill -9 a shard and restart it: it loads a kept checkpoint and replays the kept log.
  ASSERT_TRUE(shards_[1].Kill().ok());
  StartShard(config, 1);
  if (HasFatalFailure()) return;
  ASSERT_TRUE(WaitServing(1)) << testing::ReadLogTail(shards_[1].log_path());
  const int64_t below_at_restart = below();  // shard 1's last report held it while it was down
  const int64_t resumed = Seq(*reg);
  ASSERT_TRUE(testing::WaitFor([&] { return Seq(*reg) >= resumed + 10; }, 120s, 50ms))
      << testing::ReadLogTail(shards_[1].log_path());
  for (auto* c : {&c0, &c1}) {
    auto st = c->Terminate(30s);
    ASSERT_TRUE(st.ok());
    EXPECT_TRUE(st->success()) << st->ToString() << "\n" << testing::ReadLogTail(c->log_path());
  }
  const int64_t head = Seq(*reg);
  for (int i = 0; i < kShards; ++i) {
    EXPECT_TRUE(testing::WaitFor([&] { return ShardVersion(i) == head; }, 30s, 50ms))
        << "shard " << i << " at " << ShardVersion(i) << ", head " << head;
    auto st = ShardStatusOf(i);
    ASSERT_TRUE(st.ok());
    EXPECT_EQ(st->state, rpc::ShardState::SERVING);
  }
  // The kept log: contiguous from the trim point to the head, each id once.
  auto trimmed = reg->Trimmed();
  ASSERT_TRUE(trimmed.ok());
  const std::vector<CommittedUpdate> kept = CommitLog(*reg);
  ASSERT_FALSE(kept.empty());
  EXPECT_EQ(kept.front().seq, trimmed->below);
  EXPECT_EQ(kept.back().seq, head);
  EXPECT_EQ(static_cast<int64_t>(kept.size()), head - trimmed->below + 1);
  EXPECT_EQ(trimmed->entries, trimmed->below - 1);
  std::set<std::string> ids;
  for (const auto& c : kept) EXPECT_TRUE(ids.insert(c.update_id).second) << c.update_id;
  // The restarted shard's life applied from its checkpoint, in order, to the head.
  std::vector<nlohmann::json> applies;
  int64_t start = -1;
  for (auto& r : Records(ShardMetrics(1))) {
    if (r.value("event", "") == "start") {
      start = r["version"].get<int64_t>();
      applies.clear();
    } else if (r.value("event", "") == "apply") {
      applies.push_back(r);
    }
  }
  ASSERT_GE(start + 1, below_at_restart) << "the restart needed no trimmed entry";
  int64_t expect = start + 1;
  for (const auto& a : applies) {
    EXPECT_EQ(a["seq"].get<int64_t>(), expect) << a.dump();
    expect = a["seq"].get<int64_t>() + 1;
  }
  EXPECT_EQ(expect - 1, head);
  // An update of the trimmed part: its lookup says so (never committed again).
  ASSERT_LT(early.front().seq, trimmed->below);
  auto first = reg->LookupCommit(early.front().update_id);
  EXPECT_EQ(first.status().code(), StatusCode::kOutOfRange) << first.status().ToString();
  std::printf(
      "[fault] log trimmed below seq %ld (%ld entries, head %ld); restarted shard 1 replayed %zu "
      "from "
      "checkpoint %ld (log kept from %ld then); lookup of an early id: %s\n",
      long(trimmed->below), long(trimmed->entries), long(head), applies.size(), long(start),
      long(below_at_restart), first.status().ToString().c_str());
}

}  // namespace fault_testing
}  // namespace fedps
