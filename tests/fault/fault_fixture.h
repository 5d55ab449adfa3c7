// FaultTest: the fixture of the fault-tolerance tests (tests/fault/*_test.cc): a private
// redis-server (append-only, fsync always), real text prepared once per test by
// `fedps-ctl prepare` and partitioned for 3 clients, a run config (tiny preset, short
// leases), and helpers that start fedps-shard / fedps-client processes, read their
// status, metrics.jsonl records and the commit log. Everything waits on conditions with
// deadlines (testing::WaitFor). Processes, Redis and the temp folder are RAII objects.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "common/env.h"
#include "ps/registry.h"
#include "ps/shard_channel.h"
#include "tests/testing/ctl.h"
#include "tests/testing/process.h"
#include "tests/testing/real_text.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace fault_testing {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;
using testing::ProcessOptions;
using testing::ScopedProcess;

inline constexpr int kShards = 2;
inline constexpr const char* kRunId = "fault-it";

inline double SecondsSince(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

inline std::string ReadText(const std::string& path) {
  auto t = Env::Default()->ReadFile(path);
  return t.ok() ? *t : std::string();
}

// The records of a metrics.jsonl with the given event ("" = all). Tolerates a line being
// written right now (it is skipped), since the writers are running.
inline std::vector<nlohmann::json> Records(const std::string& path, const std::string& event = "") {
  std::vector<nlohmann::json> out;
  std::istringstream in(ReadText(path));
  std::string line;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.is_object()) continue;
    if (event.empty() || j.value("event", "") == event) out.push_back(std::move(j));
  }
  return out;
}

inline size_t CountOf(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + what.size())) ++n;
  return n;
}

// The counter N of the last "training update N" line of a client log; -1 if none.
inline int64_t LastTrainingUpdate(const std::string& log) {
  const std::string key = "training update ";
  size_t p = log.rfind(key);
  if (p == std::string::npos) return -1;
  return std::atoll(log.c_str() + p + key.size());
}

class FaultTest : public ::testing::Test {
 protected:
  struct Knobs {
    int64_t max_staleness = 64;
    int64_t local_steps = 4;
    std::string extra_ps;  // more [ps] lines
  };

  void SetUp() override {
    for (const std::string& missing :
         {testing::MissingBinaries({"fedps-ctl", "fedps-shard", "fedps-client"}), testing::RealTextMissing()}) {
      if (!missing.empty()) GTEST_SKIP() << missing;
    }
    Status prepared = testing::PrepareRealText(dir_.path(), /*iid_clients=*/3);
    ASSERT_TRUE(prepared.ok()) << prepared.ToString();
    testing::RedisServerOptions ro;
    ro.persistence = true;  // appendonly yes, appendfsync always: a kill -9 loses nothing acknowledged
    redis_ = std::make_unique<testing::ScopedRedisServer>(ro);
    Status s = redis_->Start();
    ASSERT_TRUE(s.ok()) << s.ToString();
  }

  // Tiny model, 2 shards, SGD (lr 1), polynomial staleness weight (1 + s)^-0.5, short
  // client leases (1.5 s, heartbeat every 0.3 s), few local steps on small batches.
  std::string WriteConfig(const Knobs& k) {
    std::string path = dir_.File("run.toml");
    std::ofstream(path) << "[run]\nid = \"" << kRunId << "\"\ndir = \"" << dir_.File("run") << "\"\nseed = 7\n"
                        << "[model]\npreset = \"tiny\"\n"
                        << "[data]\nprepared = \"" << dir_.File("data") << "\"\n"
                        << "[train]\nseq_len = 64\nmicro_batch = 4\nthreads = 1\nlr = 3e-3\nwarmup_steps = 2\n"
                        << "steps = 2000\nlog_every = 5\neval_batches = 2\n"
                        << "[compression]\ncodec = \"bf16\"\nthreads = 1\n"
                        << "[ps]\nnum_shards = " << kShards << "\nredis = \"127.0.0.1:" << redis_->port() << "\"\n"
                        << "base_port = 0\nframe_elements = 65536\noptimizer = \"sgd\"\nouter_lr = 1.0\n"
                        << "staleness = \"polynomial\"\nstaleness_a = 0.5\nmax_staleness = " << k.max_staleness
                        << "\ncheckpoint_every = 0\n"
                        << k.extra_ps << "[client]\nlocal_steps = " << k.local_steps
                        << "\nheartbeat_ms = 300\nlease_ms = 1500\n"
                        << "retry_initial_ms = 50\nretry_max_ms = 500\n";
    return path;
  }

  // Starts fedps-shard i (on a free port) without waiting for it.
  void StartShard(const std::string& config, int i) {
    auto port = testing::PickFreePort();
    ASSERT_TRUE(port.ok());
    shard_ports_[i] = *port;
    ProcessOptions o;
    o.argv = {testing::BinPath("fedps-shard"), "--config", config, "--shard", std::to_string(i), "--port",
              std::to_string(*port)};  // --dir: <run.dir>/shard-<i>, beside its metrics.jsonl
    o.log_path = dir_.File("shard-" + std::to_string(i) + ".log");
    auto p = ScopedProcess::Start(o);
    ASSERT_TRUE(p.ok()) << p.status().ToString();
    shards_[i] = std::move(p).value();
  }
  // Whether shard i answers status() with SERVING within `timeout`.
  bool WaitServing(int i, std::chrono::milliseconds timeout = std::chrono::seconds(60)) {
    return testing::WaitFor(
        [&] {
          auto st = ShardStatusOf(i);
          return st.ok() && st->state == rpc::ShardState::SERVING;
        },
        timeout, std::chrono::milliseconds(50));
  }
  void StartShards(const std::string& config) {
    for (int i = 0; i < kShards; ++i) {
      StartShard(config, i);
      if (::testing::Test::HasFatalFailure()) return;
    }
    for (int i = 0; i < kShards; ++i) {
      ASSERT_TRUE(WaitServing(i)) << "shard " << i << " did not start:\n" << testing::ReadLogTail(shards_[i].log_path());
    }
  }

  StatusOr<rpc::ShardStatus> ShardStatusOf(int i) {
    ShardChannelOptions o;
    o.port = shard_ports_[i];
    o.call_timeout = 5s;
    ShardChannel ch(o);
    return ch.GetStatus();
  }
  int64_t ShardVersion(int i) {
    auto st = ShardStatusOf(i);
    return st.ok() ? st->version : -1;
  }

  std::string ShardMetrics(int i) { return dir_.File("run/shard-" + std::to_string(i) + "/metrics.jsonl"); }
  std::string ClientMetrics(const std::string& name) { return dir_.File("run/clients/" + name + "/metrics.jsonl"); }
  std::string ClientLog(const std::string& name) { return dir_.File(name + ".log"); }

  // A training client named `name` on data partition `part` (0..2).
  ScopedProcess StartClient(const std::string& config, const std::string& name, int part,
                            const std::vector<std::string>& extra = {}) {
    ProcessOptions o;
    o.argv = {testing::BinPath("fedps-client"), "--config", config, "--name", name, "--data",
              dir_.File("clients/client-" + std::to_string(part))};
    o.argv.insert(o.argv.end(), extra.begin(), extra.end());
    o.log_path = ClientLog(name);
    auto p = ScopedProcess::Start(o);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? std::move(p).value() : ScopedProcess();
  }

  std::unique_ptr<Registry> ConnectRegistry() {
    RegistryOptions o;
    o.port = redis_->port();
    o.run_id = kRunId;
    o.command_timeout = 3s;
    auto r = Registry::Connect(o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  int64_t Seq(Registry& reg) {
    auto s = reg.GlobalSeq();
    return s.ok() ? *s : -1;
  }

  // The whole commit log, checked contiguous (CommittedAfter returns kDataLoss on a gap).
  std::vector<CommittedUpdate> CommitLog(Registry& reg) {
    std::vector<CommittedUpdate> all;
    for (;;) {
      auto b = reg.CommittedAfter(all.empty() ? 0 : all.back().seq, 500);
      EXPECT_TRUE(b.ok()) << b.status().ToString();
      if (!b.ok() || b->empty()) break;
      all.insert(all.end(), b->begin(), b->end());
    }
    return all;
  }

  // The log has seqs 1..head without gap or duplicate, each update id once; every shard
  // applied exactly that sequence once (one life each: shards are never restarted here),
  // none skipped; every client's update record agrees with the log.
  void ExpectLogAppliedExactlyOnce(Registry& reg, const std::vector<std::string>& clients) {
    const int64_t head = Seq(reg);
    std::vector<CommittedUpdate> log = CommitLog(reg);
    ASSERT_EQ(static_cast<int64_t>(log.size()), head);
    std::set<std::string> ids;
    for (size_t k = 0; k < log.size(); ++k) {
      EXPECT_EQ(log[k].seq, static_cast<int64_t>(k) + 1);
      EXPECT_TRUE(ids.insert(log[k].update_id).second) << "update committed twice: " << log[k].update_id;
    }
    for (int i = 0; i < kShards; ++i) {
      EXPECT_TRUE(testing::WaitFor([&] { return ShardVersion(i) == head; }, 30s, 50ms))
          << "shard " << i << " at version " << ShardVersion(i) << ", head " << head << "\n"
          << testing::ReadLogTail(shards_[i].log_path());
      std::vector<nlohmann::json> applies = Records(ShardMetrics(i), "apply");
      ASSERT_EQ(static_cast<int64_t>(applies.size()), head) << "shard " << i;
      for (size_t k = 0; k < applies.size(); ++k) {
        EXPECT_EQ(applies[k]["seq"].get<int64_t>(), static_cast<int64_t>(k) + 1) << "shard " << i;
        EXPECT_EQ(applies[k]["update_id"].get<std::string>(), log[k].update_id) << "shard " << i;
        EXPECT_FALSE(applies[k]["skipped"].get<bool>()) << applies[k].dump();
      }
    }
    for (const auto& name : clients) {
      for (const auto& u : Records(ClientMetrics(name), "update")) {
        const int64_t seq = u["seq"].get<int64_t>();
        ASSERT_GE(seq, 1);
        ASSERT_LE(seq, head) << u.dump();
        EXPECT_EQ(log[seq - 1].update_id, u["update_id"].get<std::string>()) << u.dump();
      }
    }
  }

  void RunStraggler(const Knobs& knobs, bool expect_refused);

  testing::ScopedTempDir dir_;
  std::unique_ptr<testing::ScopedRedisServer> redis_;
  ScopedProcess shards_[kShards];
  int shard_ports_[kShards] = {0, 0};
};

}  // namespace fault_testing
}  // namespace fedps
