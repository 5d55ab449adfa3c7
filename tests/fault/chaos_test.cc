// A seeded chaos run against real processes (docs/fault-tolerance.md, "The chaos test"):
// a private redis-server (append-only, fsync always), two fedps-shard and three
// fedps-client processes on real text; every round kill -9s one of them at random - a
// client (restarted at once), a shard (restarted at once, a new process that replays from
// its checkpoint) or redis-server (restarted after a short outage, or after one longer than
// the shards' directory lease) - and waits until the federation commits again, with nobody
// restarting anything but what the round killed. Then it checks:
//   * the commit log is 1..head without gap, each update id once;
//   * every client's acknowledged commits are in the log with their seqs (none lost);
//   * each shard, life by life (a life starts at its "start" record, from the version its
//     checkpoint holds), applied log entries start+1, start+2, ... in order, each once, with
//     the log's ids, none skipped, and its last life ended at the head;
//   * the model equals an offline replay of the commit log: each shard's final checkpoint
//     (written by its drain on SIGTERM) equals, bit for bit, the slice of a fresh ShardCore
//     that replays the whole log once from the shard's initial checkpoint and staged files;
//   * no shard or client halted or exited on its own (no operator restart was needed), and commits
//     resumed after every round; the stall after each Redis restart is printed beside
//     2 x the shard lease.
//
// FEDPS_CHAOS_ROUNDS (default 20) and FEDPS_CHAOS_SEED (default 20261204) choose the run;
// every choice comes from the seed (the timing of the processes does not).
// FEDPS_CHAOS_CHECKPOINT_EVERY (default 0: checkpoints only at drains, so the log is never
// trimmed and the replay starts at v-0) sets ps.checkpoint_every: the shards then trim the
// log while the chaos runs, the checks cover the kept part of the log (ids below it can no
// longer be compared, only the order of the applies), and the replay starts at the oldest
// checkpoint the shard keeps.
#include <gtest/gtest.h>

#include <random>
#include <thread>

#include "common/config.h"
#include "ps/shard_core.h"
#include "tests/fault/fault_fixture.h"

namespace fedps {
namespace fault_testing {

constexpr int64_t kChaosLeaseMs = 2000;  // ps.shard_lease_ms
constexpr int kClients = 3;

int64_t EnvInt(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  return v && *v ? std::atoll(v) : fallback;
}

// One life of a shard process, read from its metrics.jsonl.
struct ShardLife {
  int64_t start_version = 0;
  std::vector<nlohmann::json> applies;
};

std::vector<ShardLife> Lives(const std::string& metrics) {
  std::vector<ShardLife> lives;
  for (auto& r : Records(metrics)) {
    const std::string ev = r.value("event", "");
    if (ev == "start") {
      lives.push_back({r["version"].get<int64_t>(), {}});
    } else if (ev == "apply" && !lives.empty()) {
      lives.back().applies.push_back(std::move(r));
    }
  }
  return lives;
}

TEST_F(FaultTest, ChaosKillsOfClientsShardsAndRedisLoseNothingAndNeedNoOperator) {
  const int64_t rounds = EnvInt("FEDPS_CHAOS_ROUNDS", 20);
  const uint64_t seed = static_cast<uint64_t>(EnvInt("FEDPS_CHAOS_SEED", 20261204));
  std::mt19937_64 rng(seed);
  Knobs k;
  k.extra_ps = "shard_lease_ms = " + std::to_string(kChaosLeaseMs) + "\n";
  const std::string config = WriteConfig(k);
  const int64_t checkpoint_every = EnvInt("FEDPS_CHAOS_CHECKPOINT_EVERY", 0);
  if (checkpoint_every > 0) {  // checkpoints between drains: the shards trim the log
    std::string text = ReadText(config);
    const std::string from = "checkpoint_every = 0";
    ASSERT_NE(text.find(from), std::string::npos);
    text.replace(text.find(from), from.size(),
                 "checkpoint_every = " + std::to_string(checkpoint_every));
    std::ofstream(config) << text;
  }
  StartShards(config);
  if (HasFatalFailure()) return;
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  std::vector<std::string> names;
  std::vector<ScopedProcess> clients;
  std::vector<size_t> updates_at_start;  // each client's update records when its life began
  for (int c = 0; c < kClients; ++c) {
    names.push_back("chaos-" + std::to_string(c));
    clients.push_back(StartClient(config, names.back(), c));
    updates_at_start.push_back(0);
  }
  ASSERT_TRUE(testing::WaitFor([&] { return Seq(*reg) >= 5; }, 90s, 20ms))
      << testing::ReadLogTail(ClientLog(names[0]));

  // Nothing may stop by itself (a shard halted or fenced for good exits; a client that
  // gives up exits): that would need an operator.
  auto shards_healthy = [&](std::string* why) {
    for (int i = 0; i < kShards; ++i) {
      if (!shards_[i].running()) {
        *why = "shard " + std::to_string(i) + " exited:\n" +
               testing::ReadLogTail(shards_[i].log_path());
        return false;
      }
    }
    for (int c = 0; c < kClients; ++c) {
      if (!clients[c].running()) {
        *why = "client " + names[c] + " exited:\n" + testing::ReadLogTail(clients[c].log_path());
        return false;
      }
    }
    return true;
  };
  // Commits resumed: the head passed `from` by `n` (Redis may be answering slowly).
  auto progressed = [&](int64_t from, int64_t n, std::chrono::milliseconds within) {
    return testing::WaitFor([&] { return Seq(*reg) >= from + n; }, within, 20ms);
  };

  int client_kills = 0, shard_kills = 0, short_outages = 0, long_outages = 0;
  double longest_outage_s = 0, longest_stall_s = 0;
  const auto t_start = Clock::now();
  for (int64_t round = 0; round < rounds; ++round) {
    std::string why;
    ASSERT_TRUE(shards_healthy(&why)) << "round " << round << ": " << why;
    const int64_t before = Seq(*reg);
    ASSERT_GE(before, 0);
    const int what = static_cast<int>(rng() % 100);
    std::string action;
    if (what < 35) {  // a client, mid-whatever
      const int c = static_cast<int>(rng() % kClients);
      ASSERT_TRUE(clients[c].Kill().ok());
      std::this_thread::sleep_for(std::chrono::milliseconds(rng() % 300));  // the fault's length
      updates_at_start[c] = Records(ClientMetrics(names[c]), "update").size();
      clients[c] = StartClient(config, names[c], c);
      ++client_kills;
      action = "kill -9 client " + names[c];
    } else if (what < 60) {  // a shard: a new process replays from its checkpoint
      const int i = static_cast<int>(rng() % kShards);
      ASSERT_TRUE(shards_[i].Kill().ok());
      StartShard(config, i);
      if (HasFatalFailure()) return;
      ++shard_kills;
      action = "kill -9 shard " + std::to_string(i);
    } else {  // redis-server, for a short while or longer than the shard lease
      const bool longer = what >= 75;
      const int64_t down_ms =
          longer ? kChaosLeaseMs * 5 / 4 + static_cast<int64_t>(rng() % (kChaosLeaseMs / 2))
                 : 100 + static_cast<int64_t>(rng() % 900);
      ASSERT_TRUE(redis_->Stop().ok());
      const auto t_kill = Clock::now();
      std::this_thread::sleep_until(t_kill +
                                    std::chrono::milliseconds(down_ms));  // the fault's length
      Status up = redis_->Start();
      ASSERT_TRUE(up.ok()) << up.ToString();
      const auto t_up = Clock::now();
      longest_outage_s =
          std::max(longest_outage_s, std::chrono::duration<double>(t_up - t_kill).count());
      // The stall: from Redis being back to the next commit (both shards serve again).
      ASSERT_TRUE(progressed(before, 1, 90s))
          << "round " << round << ": no commit after Redis came back\n"
          << testing::ReadLogTail(shards_[0].log_path())
          << testing::ReadLogTail(ClientLog(names[0]));
      const double stall = SecondsSince(t_up);
      longest_stall_s = std::max(longest_stall_s, stall);
      (longer ? long_outages : short_outages) += 1;
      char buf[128];
      std::snprintf(buf, sizeof(buf),
                    "redis down %.2f s (%s the %.1f s shard lease), next commit %.2f s after",
                    std::chrono::duration<double>(t_up - t_kill).count(),
                    longer ? "longer than" : "within", kChaosLeaseMs / 1000.0, stall);
      action = buf;
    }
    ASSERT_TRUE(progressed(before, 2, 90s))
        << "round " << round << " (" << action << "): commits did not resume, seq " << Seq(*reg)
        << " (was " << before << ")\n"
        << testing::ReadLogTail(shards_[0].log_path())
        << testing::ReadLogTail(shards_[1].log_path()) << testing::ReadLogTail(ClientLog(names[0]));
    std::printf("[chaos] round %ld: %s; seq %ld -> %ld\n", long(round), action.c_str(),
                long(before), long(Seq(*reg)));
  }
  const double chaos_s = SecondsSince(t_start);
  {
    std::string why;
    ASSERT_TRUE(shards_healthy(&why)) << why;
  }

  // Every client's current life committed (so it also got past its start-up, where a
  // SIGTERM would still end it by the signal's default action).
  for (int c = 0; c < kClients; ++c) {
    EXPECT_TRUE(testing::WaitFor(
        [&] { return Records(ClientMetrics(names[c]), "update").size() > updates_at_start[c]; },
        90s, 50ms))
        << "client " << names[c] << " made no commit after its last restart\n"
        << testing::ReadLogTail(clients[c].log_path());
  }
  // Everyone stops cleanly: clients first (SIGTERM), then the shards drain at the head.
  for (auto& c : clients) {
    auto st = c.Terminate(30s);
    ASSERT_TRUE(st.ok());
    EXPECT_TRUE(st->success()) << st->ToString() << "\n" << testing::ReadLogTail(c.log_path());
  }
  const int64_t head = Seq(*reg);
  // The kept log: 1..head, or first..head once the shards trimmed below `first`.
  std::vector<CommittedUpdate> log = CommitLog(*reg);
  auto trimmed = reg->Trimmed();
  ASSERT_TRUE(trimmed.ok()) << trimmed.status().ToString();
  const int64_t first = trimmed->below;
  if (checkpoint_every == 0) {
    EXPECT_EQ(first, 1);
  }
  ASSERT_EQ(static_cast<int64_t>(log.size()), head - first + 1);
  auto id_at = [&](int64_t seq) { return log[static_cast<size_t>(seq - first)].update_id; };
  int64_t gaps = 0, duplicates = 0, lost = 0, half_applied = 0, unverifiable = 0;
  std::map<std::string, int64_t> seq_of;
  for (size_t i = 0; i < log.size(); ++i) {
    if (log[i].seq != first + static_cast<int64_t>(i)) ++gaps;
    if (!seq_of.emplace(log[i].update_id, log[i].seq).second) ++duplicates;
  }
  for (const auto& n : names) {
    for (const auto& u : Records(ClientMetrics(n), "update")) {
      if (u["seq"].get<int64_t>() < first) {  // trimmed: its id can no longer be compared
        ++unverifiable;
        continue;
      }
      auto it = seq_of.find(u["update_id"].get<std::string>());
      if (it == seq_of.end() || it->second != u["seq"].get<int64_t>()) {
        ++lost;
        ADD_FAILURE() << "acknowledged commit not in the log as recorded: " << u.dump();
      }
    }
  }
  rpc::ShardStatus final_status[kShards];
  for (int i = 0; i < kShards; ++i) {
    ASSERT_TRUE(testing::WaitFor([&] { return ShardVersion(i) == head; }, 60s, 50ms))
        << "shard " << i << " at " << ShardVersion(i) << ", head " << head << "\n"
        << testing::ReadLogTail(shards_[i].log_path());
    auto st = ShardStatusOf(i);
    ASSERT_TRUE(st.ok());
    final_status[i] = *st;
    EXPECT_EQ(st->state, rpc::ShardState::SERVING);
  }
  for (int i = 0; i < kShards; ++i) {
    auto st = shards_[i].Terminate(60s);
    ASSERT_TRUE(st.ok());
    EXPECT_TRUE(st->success()) << st->ToString() << "\n"
                               << testing::ReadLogTail(shards_[i].log_path());
  }

  // Life by life: each applied start+1, start+2, ... once, with the log's ids.
  int lives_total = 0;
  for (int i = 0; i < kShards; ++i) {
    std::vector<ShardLife> lives = Lives(ShardMetrics(i));
    ASSERT_FALSE(lives.empty());
    lives_total += static_cast<int>(lives.size());
    int64_t reached = 0;  // the highest version any earlier life applied
    for (size_t l = 0; l < lives.size(); ++l) {
      const ShardLife& life = lives[l];
      EXPECT_LE(life.start_version, reached)
          << "shard " << i << " life " << l << " started above what was applied";
      int64_t expect = life.start_version + 1;
      for (const auto& a : life.applies) {
        const int64_t seq = a["seq"].get<int64_t>();
        if (seq != expect || seq > head ||
            (seq >= first && id_at(seq) != a["update_id"].get<std::string>()) ||
            a["skipped"].get<bool>()) {
          ++half_applied;
          ADD_FAILURE() << "shard " << i << " life " << l << ": expected seq " << expect << ", got "
                        << a.dump();
        }
        expect = seq + 1;
      }
      reached = std::max(reached, expect - 1);
    }
    // The last life ends at the head (it drained there). A torn last record of a killed
    // life is skipped by Records(); the next life replays it from its checkpoint.
    if (reached != head) ++half_applied;
    EXPECT_EQ(reached, head) << "shard " << i;
  }

  // The model equals an offline replay: a fresh core replays the whole log once from the
  // shard's initial checkpoint (v-0) and its staged files; its slice must equal the final
  // checkpoint the drain wrote, bit for bit.
  auto cfg = LoadConfig(config);
  ASSERT_TRUE(cfg.ok()) << cfg.status().ToString();
  auto directory = reg->Shards();
  ASSERT_TRUE(directory.ok()) << directory.status().ToString();
  int replay_mismatches = 0;
  int64_t replay_from[kShards] = {0, 0};
  for (int i = 0; i < kShards; ++i) {
    const ShardInfo& info = (*directory)[i].info;
    ShardCoreOptions o;
    o.run_id = kRunId;
    o.layout_hash = final_status[i].layout_hash;
    o.shard_index = i;
    o.num_shards = kShards;
    o.slice_begin = info.slice_begin;
    o.slice_elements = info.slice_end - info.slice_begin;
    o.ps = cfg->ps;
    o.compression = cfg->compression;
    o.registry.port = redis_->port();
    o.registry.run_id = kRunId;
    o.poll_ms = 20;
    auto slice_of = [&](const std::string& dir, int64_t want) -> std::vector<float> {
      o.dir = dir;
      auto core = ShardCore::Create(o);
      EXPECT_TRUE(core.ok()) << core.status().ToString();
      if (!core.ok()) return {};
      Status s = (*core)->Start();
      EXPECT_TRUE(s.ok()) << s.ToString();
      EXPECT_TRUE((*core)->WaitForVersion(want, 120000)) << dir;
      auto [v, slice] = (*core)->CurrentSlice();
      EXPECT_EQ(v, want) << dir;
      (*core)->Stop();
      return slice;
    };
    const std::string live = dir_.File("run/shard-" + std::to_string(i));
    const std::string replay = dir_.File("replay-" + std::to_string(i));
    // From the oldest checkpoint the shard keeps: v-0 unless it checkpoints between drains.
    std::vector<std::string> kept;
    for (const auto& e : fs::directory_iterator(live + "/checkpoints")) {
      const std::string name = e.path().filename().string();
      if (name.rfind("v-", 0) == 0) kept.push_back(name);
    }
    std::sort(kept.begin(), kept.end());
    ASSERT_FALSE(kept.empty());
    if (checkpoint_every == 0) {
      EXPECT_EQ(kept.front(), "v-000000000000");
    }
    replay_from[i] = std::stoll(kept.front().substr(2));
    fs::create_directories(replay + "/checkpoints");
    fs::copy(live + "/staged", replay + "/staged", fs::copy_options::recursive);
    fs::copy(live + "/checkpoints/" + kept.front(), replay + "/checkpoints/" + kept.front(),
             fs::copy_options::recursive);
    const std::vector<float> final_slice = slice_of(live, head);  // loads the drain's checkpoint
    const std::vector<float> replayed = slice_of(replay, head);
    ASSERT_EQ(final_slice.size(), static_cast<size_t>(o.slice_elements));
    if (final_slice != replayed) ++replay_mismatches;
    EXPECT_EQ(final_slice, replayed)
        << "shard " << i << ": the model differs from an offline replay of the log";
  }

  std::printf(
      "[chaos] seed %lu, %ld rounds in %.0f s: %d client kills, %d shard kills (%d shard lives), "
      "%d Redis outages within the %.1f s shard lease, %d longer (longest %.2f s); %ld commits "
      "(log kept from seq %ld; %ld acknowledged commits in the trimmed part); gaps %ld, "
      "duplicated %ld, lost %ld, half-applied %ld, replay (from v-%ld, v-%ld) mismatches %d; "
      "operator restarts 0; longest stall after Redis was back %.2f s (2 x lease = %.1f s)\n",
      static_cast<unsigned long>(seed), long(rounds), chaos_s, client_kills, shard_kills,
      lives_total, short_outages, kChaosLeaseMs / 1000.0, long_outages, longest_outage_s,
      long(head), long(first), long(unverifiable), long(gaps), long(duplicates), long(lost),
      long(half_applied), long(replay_from[0]), long(replay_from[1]), replay_mismatches,
      longest_stall_s, 2 * kChaosLeaseMs / 1000.0);
  EXPECT_EQ(gaps + duplicates + lost + half_applied, 0);
}

}  // namespace fault_testing
}  // namespace fedps
