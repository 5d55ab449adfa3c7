// Self-healing membership against real processes (docs/fault-tolerance.md, "Redis outages"):
// a private redis-server, two fedps-shard processes and fedps-client processes.
//
//   * Redis killed for longer than the shards' directory lease and restarted with its
//     append-only file: the shards register again with new epochs, the client rejoins,
//     commits resume and every seq is applied once; nobody restarts anything;
//   * fedps-shard and fedps-client started while Redis is down wait for it (a progress
//     line) and go on when it comes up;
//   * Redis restarted without its data (the registry went back in time): the shards halt
//     with DATA_LOSS naming the seqs instead of applying other updates under them;
//   * Redis lost its last acknowledged commits and handed their seqs to other updates
//     (appendfsync everysec; rolled back by tests/testing/registry_rollback.h while the
//     shards are frozen, then refilled to their version): the shards halt with DATA_LOSS
//     naming the seq and both update ids.
//
// The outages' lengths are set by the test (they are the fault); nothing asserts a time.
#include <gtest/gtest.h>

#include <thread>

#include "tests/fault/fault_fixture.h"
#include "tests/testing/registry_rollback.h"

namespace fedps {
namespace fault_testing {

constexpr int64_t kShardLeaseMs = 2000;

TEST_F(FaultTest, ShardsAndClientRideOutARedisOutageLongerThanTheShardLease) {
  Knobs k;
  k.extra_ps = "shard_lease_ms = " + std::to_string(kShardLeaseMs) + "\n";
  const std::string config = WriteConfig(k);
  StartShards(config);
  if (HasFatalFailure()) return;
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  const std::vector<std::string> names = {"o-0"};
  ScopedProcess c0 = StartClient(config, names[0], 0);
  ASSERT_TRUE(testing::WaitFor([&] { return Seq(*reg) >= 5; }, 60s, 20ms)) << testing::ReadLogTail(ClientLog("o-0"));
  int64_t epoch_before[kShards];
  for (int i = 0; i < kShards; ++i) {
    auto st = ShardStatusOf(i);
    ASSERT_TRUE(st.ok());
    epoch_before[i] = st->epoch;
  }

  ASSERT_TRUE(redis_->Stop().ok());
  const auto t_kill = Clock::now();
  // Down for 1.5 leases: every shard lease and the client's lapse (Redis keeps absolute
  // expiry times in its append-only file).
  std::this_thread::sleep_until(t_kill + std::chrono::milliseconds(kShardLeaseMs * 3 / 2));
  Status restarted = redis_->Start();
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();
  const auto t_up = Clock::now();
  int64_t seq_restart = -1;
  ASSERT_TRUE(testing::WaitFor([&] { return (seq_restart = Seq(*reg)) >= 0; }, 10s, 20ms));

  // Both shards serve again under new, larger epochs, without an operator.
  double resumed_s[kShards] = {0, 0};
  for (int i = 0; i < kShards; ++i) {
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          auto st = ShardStatusOf(i);
          return st.ok() && st->state == rpc::ShardState::SERVING && st->epoch > epoch_before[i];
        },
        60s, 20ms))
        << "shard " << i << " did not resume\n" << testing::ReadLogTail(shards_[i].log_path());
    resumed_s[i] = SecondsSince(t_up);
    EXPECT_TRUE(shards_[i].running());
    EXPECT_NE(ReadText(shards_[i].log_path()).find("registered again as epoch"), std::string::npos)
        << testing::ReadLogTail(shards_[i].log_path());
  }
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        auto shards = reg->Shards();
        if (!shards.ok() || shards->size() != kShards) return false;
        for (const auto& s : *shards) {
          if (!s.alive || s.epoch <= epoch_before[s.info.index]) return false;
        }
        return true;
      },
      30s, 50ms))
      << "the directory does not list both shards alive with new epochs";

  // Commits resume: the client rejoined and commits past the restart.
  auto committed_after_restart = [&] {
    for (const auto& u : Records(ClientMetrics(names[0]), "update")) {
      if (u["seq"].get<int64_t>() > seq_restart) return true;
    }
    return false;
  };
  ASSERT_TRUE(testing::WaitFor([&] { return Seq(*reg) >= seq_restart + 4 && committed_after_restart(); }, 90s, 50ms))
      << "seq " << Seq(*reg) << " (restart at " << seq_restart << ")\n"
      << testing::ReadLogTail(ClientLog(names[0])) << testing::ReadLogTail(shards_[0].log_path());
  EXPECT_NE(ReadText(ClientLog(names[0])).find("was fenced"), std::string::npos)
      << "the client's lease lapsed during the outage: it must have rejoined\n"
      << testing::ReadLogTail(ClientLog(names[0]));
  std::printf("[fault] redis down %.2f s (shard lease %.1f s); shards serving again %.2f s / %.2f s after Redis "
              "was back; seq %ld at restart, %ld now\n",
              std::chrono::duration<double>(t_up - t_kill).count(), kShardLeaseMs / 1000.0, resumed_s[0],
              resumed_s[1], long(seq_restart), long(Seq(*reg)));

  auto st = c0.Terminate(30s);
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->success()) << st->ToString() << "\n" << testing::ReadLogTail(c0.log_path());
  ExpectLogAppliedExactlyOnce(*reg, names);
}

TEST_F(FaultTest, ShardsAndClientStartedWhileRedisIsDownWaitForIt) {
  const std::string config = WriteConfig(Knobs{});
  ASSERT_TRUE(redis_->Stop().ok());
  for (int i = 0; i < kShards; ++i) {
    StartShard(config, i);
    if (HasFatalFailure()) return;
  }
  ScopedProcess c0 = StartClient(config, "w-0", 0);
  const std::string waiting = "waiting for Redis at 127.0.0.1:" + std::to_string(redis_->port());
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        return ReadText(shards_[0].log_path()).find(waiting) != std::string::npos &&
               ReadText(shards_[1].log_path()).find(waiting) != std::string::npos &&
               ReadText(ClientLog("w-0")).find(waiting) != std::string::npos;
      },
      60s, 50ms))
      << testing::ReadLogTail(shards_[0].log_path()) << testing::ReadLogTail(ClientLog("w-0"));
  for (int i = 0; i < kShards; ++i) EXPECT_TRUE(shards_[i].running()) << testing::ReadLogTail(shards_[i].log_path());
  EXPECT_TRUE(c0.running()) << testing::ReadLogTail(ClientLog("w-0"));

  Status started = redis_->Start();
  ASSERT_TRUE(started.ok()) << started.ToString();
  for (int i = 0; i < kShards; ++i) {
    EXPECT_TRUE(WaitServing(i)) << "shard " << i << "\n" << testing::ReadLogTail(shards_[i].log_path());
  }
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  ASSERT_TRUE(testing::WaitFor([&] { return Seq(*reg) >= 2; }, 90s, 50ms)) << testing::ReadLogTail(ClientLog("w-0"));
  auto st = c0.Terminate(30s);
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->success()) << st->ToString() << "\n" << testing::ReadLogTail(c0.log_path());
}

TEST_F(FaultTest, RedisRestartedWithoutItsDataHaltsTheShardsWithDataLoss) {
  Knobs k;
  k.extra_ps = "shard_lease_ms = " + std::to_string(kShardLeaseMs) + "\n";
  const std::string config = WriteConfig(k);
  StartShards(config);
  if (HasFatalFailure()) return;
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  {
    ScopedProcess c0 = StartClient(config, "d-0", 0);
    ASSERT_TRUE(testing::WaitFor([&] { return Seq(*reg) >= 3; }, 60s, 20ms)) << testing::ReadLogTail(ClientLog("d-0"));
    auto st = c0.Terminate(30s);
    ASSERT_TRUE(st.ok());
  }
  const int64_t head = Seq(*reg);
  for (int i = 0; i < kShards; ++i) {
    ASSERT_TRUE(testing::WaitFor([&] { return ShardVersion(i) == head; }, 30s, 20ms));
  }
  const size_t applies[kShards] = {Records(ShardMetrics(0), "apply").size(), Records(ShardMetrics(1), "apply").size()};

  // The registry loses everything: Redis restarts from an empty folder.
  ASSERT_TRUE(redis_->Stop().ok());
  for (const auto& e : fs::directory_iterator(redis_->dir())) {
    if (e.path().filename() != "redis-server.log") fs::remove_all(e.path());
  }
  Status restarted = redis_->Start();
  ASSERT_TRUE(restarted.ok()) << restarted.ToString();

  const std::string want = "commit log ends at seq 0 but shard ";
  for (int i = 0; i < kShards; ++i) {
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          auto st = ShardStatusOf(i);
          return st.ok() && st->state == rpc::ShardState::HALTED;
        },
        60s, 50ms))
        << "shard " << i << "\n" << testing::ReadLogTail(shards_[i].log_path());
    const std::string log = ReadText(shards_[i].log_path());
    EXPECT_NE(log.find(want + std::to_string(i) + " applied up to seq " + std::to_string(head)), std::string::npos)
        << testing::ReadLogTail(shards_[i].log_path());
    EXPECT_EQ(ShardVersion(i), head);
    EXPECT_EQ(Records(ShardMetrics(i), "apply").size(), applies[i]) << "nothing may be applied after the loss";
    // Every request now answers DATA_LOSS naming the seqs.
    ShardChannelOptions o;
    o.port = shard_ports_[i];
    o.call_timeout = 5s;
    ShardChannel ch(o);
    auto status = ShardStatusOf(i);
    ASSERT_TRUE(status.ok());
    rpc::PullRequest req;
    req.header.run_id = kRunId;
    req.header.layout_hash = status->layout_hash;
    req.header.shard_index = i;
    req.codec = status->codecs.empty() ? "fp32" : status->codecs.front();
    auto pulled = ch.Pull(req);
    EXPECT_FALSE(pulled.ok());
    EXPECT_NE(pulled.status().message().find("went back in time"), std::string::npos) << pulled.status().ToString();
  }
}

TEST_F(FaultTest, RedisThatLostItsLastCommitsAndReusedTheirSeqsHaltsTheShards) {
  Knobs k;
  k.extra_ps = "shard_lease_ms = " + std::to_string(kShardLeaseMs) + "\n";
  const std::string config = WriteConfig(k);
  StartShards(config);
  if (HasFatalFailure()) return;
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  {
    ScopedProcess c0 = StartClient(config, "l-0", 0);
    ASSERT_TRUE(testing::WaitFor([&] { return Seq(*reg) >= 4; }, 60s, 20ms)) << testing::ReadLogTail(ClientLog("l-0"));
    auto st = c0.Terminate(30s);
    ASSERT_TRUE(st.ok());
  }
  const int64_t head = Seq(*reg);
  for (int i = 0; i < kShards; ++i) {
    ASSERT_TRUE(testing::WaitFor([&] { return ShardVersion(i) == head; }, 30s, 20ms));
  }
  const std::vector<CommittedUpdate> before = CommitLog(*reg);
  ASSERT_EQ(static_cast<int64_t>(before.size()), head);
  const size_t applies[kShards] = {Records(ShardMetrics(0), "apply").size(), Records(ShardMetrics(1), "apply").size()};

  // While the shards are frozen, Redis "loses" its last two commits and hands seqs
  // head - 1 and head to two other updates (stage marks written as the shards would).
  for (auto& s : shards_) ASSERT_TRUE(s.Stop().ok());
  ASSERT_TRUE(testing::RollBackCommitLog(*redis_, kRunId, head - 2).ok());
  auto epoch = reg->Join("other", {"h", {}}, 60s);
  ASSERT_TRUE(epoch.ok()) << epoch.status().ToString();
  std::string reused;
  for (int n = 1; n <= 2; ++n) {
    reused = "other/" + std::to_string(*epoch) + "/" + std::to_string(n);
    const nlohmann::json record = {{"base_version", head - 2}, {"tokens", 256}, {"local_steps", 4}};
    for (int i = 0; i < kShards; ++i) ASSERT_TRUE(reg->MarkStaged(reused, i, 0, record).ok());
    auto seq = reg->CommitUpdate(reused, "other", *epoch, record, kShards);
    ASSERT_TRUE(seq.ok()) << seq.status().ToString();
    EXPECT_EQ(*seq, head - 2 + n);
  }
  ASSERT_EQ(Seq(*reg), head);  // back at the shards' version: the head check sees nothing
  for (auto& s : shards_) ASSERT_TRUE(s.Continue().ok());

  const std::string want = "reused a seq: its commit record at seq " + std::to_string(head) + " is update " + reused;
  for (int i = 0; i < kShards; ++i) {
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          auto st = ShardStatusOf(i);
          return st.ok() && st->state == rpc::ShardState::HALTED;
        },
        60s, 50ms))
        << "shard " << i << "\n" << testing::ReadLogTail(shards_[i].log_path());
    const std::string log = ReadText(shards_[i].log_path());
    EXPECT_NE(log.find(want + " but shard " + std::to_string(i) + " applied update " + before[head - 1].update_id),
              std::string::npos)
        << testing::ReadLogTail(shards_[i].log_path());
    EXPECT_EQ(ShardVersion(i), head);
    EXPECT_EQ(Records(ShardMetrics(i), "apply").size(), applies[i]) << "nothing may be applied after the loss";
  }
}

}  // namespace fault_testing
}  // namespace fedps
