// fedps-client against the real thing: a private redis-server, two fedps-shard processes
// and two or three fedps-client processes, on real text prepared by fedps-ctl (the tiny
// preset). Checks that updates are committed exactly once and applied, that validation
// loss of the global model falls, that a client killed with an update in flight resumes it
// under the same update id, and synchronous rounds (ps.mode = "sync"): a round waits for
// its clients, and closes on its timeout without a frozen one.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>
#include <tuple>

#include "common/env.h"
#include "common/tls_certs.h"
#include "common/metrics_log.h"
#include "common/safetensors.h"
#include "ps/registry.h"
#include "ps/rounds.h"
#include "ps/shard_channel.h"
#include "ps/shard_tls.h"
#include "tests/testing/ctl.h"
#include "tests/testing/process.h"
#include "tests/testing/real_text.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using testing::ProcessOptions;
using testing::ScopedProcess;

std::vector<nlohmann::json> Records(const std::string& path, const std::string& event) {
  std::vector<nlohmann::json> out;
  auto records = ReadMetrics(path);
  if (!records.ok()) return out;
  for (auto& r : *records) {
    if (r["event"] == event) out.push_back(r);
  }
  return out;
}

class ClientIntegration : public ::testing::Test {
 protected:
  void SetUp() override {
    for (const std::string& missing :
         {testing::MissingBinaries({"fedps-ctl", "fedps-shard", "fedps-client"}), testing::RealTextMissing()}) {
      if (!missing.empty()) GTEST_SKIP() << missing;
    }
    Status prepared = testing::PrepareRealText(dir_.path(), /*iid_clients=*/3);
    ASSERT_TRUE(prepared.ok()) << prepared.ToString();
    ASSERT_TRUE(redis_.Start().ok());
  }

  // The run config: tiny model, 2 shards, plain SGD with lr 1 (x <- trained model of the
  // update), small frames so that slices travel in several frames.
  std::string WriteConfig(const std::string& extra_ps = "", const std::string& extra_client = "") {
    std::string path = dir_.File("run.toml");
    std::ofstream(path) << "[run]\nid = \"client-it\"\ndir = \"" << dir_.File("run") << "\"\nseed = 5\n"
                        << "[model]\npreset = \"tiny\"\n"
                        << "[data]\nprepared = \"" << dir_.File("data") << "\"\n"
                        << "[train]\nseq_len = 64\nmicro_batch = 8\nthreads = 1\nlr = 3e-3\nwarmup_steps = 5\n"
                        << "steps = 400\nlog_every = 5\neval_batches = 4\n"
                        << "[compression]\ncodec = \"bf16\"\nthreads = 1\n"
                        << "[ps]\nnum_shards = 2\nredis = \"127.0.0.1:" << redis_.port() << "\"\n"
                        << "base_port = 0\nframe_elements = 65536\noptimizer = \"sgd\"\nouter_lr = 1.0\n"
                        << "staleness = \"constant\"\nmax_staleness = 16\n" << extra_ps
                        << "[client]\nlocal_steps = 10\nheartbeat_ms = 300\nlease_ms = 5000\n"
                        << "retry_initial_ms = 50\nretry_max_ms = 500\neval_every_versions = 1\n" << extra_client;
    return path;
  }

  void StartShards(const std::string& config) {
    for (int i = 0; i < 2; ++i) {
      auto port = testing::PickFreePort();
      ASSERT_TRUE(port.ok());
      shard_ports_[i] = *port;
      ProcessOptions o;
      o.argv = {testing::BinPath("fedps-shard"), "--config", config, "--shard", std::to_string(i), "--port",
                std::to_string(*port), "--dir", dir_.File("shard-" + std::to_string(i))};
      if (!ca_.empty()) {
        const std::vector<std::string> tls = TlsFlags("shard-" + std::to_string(i));
        o.argv.insert(o.argv.end(), tls.begin(), tls.end());
        o.argv.insert(o.argv.end(), {"--tls-crl", JoinPath(ca_, "crl.pem")});
      }
      o.log_path = dir_.File("shard-" + std::to_string(i) + ".log");
      auto p = ScopedProcess::Start(o);
      ASSERT_TRUE(p.ok()) << p.status().ToString();
      shards_[i] = std::move(p).value();
    }
    for (int i = 0; i < 2; ++i) {
      bool serving = testing::WaitFor(
          [&] {
            ShardChannelOptions o;
            o.port = shard_ports_[i];
            o.tls = probe_tls_;
            ShardChannel ch(o);
            auto st = ch.GetStatus();
            return st.ok() && st->state == rpc::ShardState::SERVING;
          },
          60s, 100ms);
      ASSERT_TRUE(serving) << "shard " << i << " did not start:\n" << testing::ReadLogTail(shards_[i].log_path());
    }
  }

  int64_t ShardVersion(int i) {
    ShardChannelOptions o;
    o.port = shard_ports_[i];
    o.tls = probe_tls_;
    ShardChannel ch(o);
    auto st = ch.GetStatus();
    return st.ok() ? st->version : -1;
  }

  // Mutual TLS from here on: a CA in <dir>/tls with certificates for both shards, `clients`
  // and the operator (whose certificate the fixture's own probes use).
  void UseTls(const std::vector<std::string>& clients) {
    ca_ = dir_.File("tls");
    ASSERT_TRUE(InitCertificateAuthority(ca_, "test CA", 30).ok());
    std::vector<std::pair<std::string, std::string>> holders = {
        {"shard-0", kRoleShard}, {"shard-1", kRoleShard}, {"ops", kRoleOperator}};
    for (const std::string& c : clients) holders.emplace_back(c, kRoleClient);
    for (const auto& [name, role] : holders) {
      auto issued = IssueCertificate(ca_, CertificateRequest{name, role, {}, 30}, ca_);
      ASSERT_TRUE(issued.ok()) << issued.status().ToString();
    }
    TlsOptions ops;
    ops.mode = "mutual";
    ops.ca = JoinPath(ca_, "ca.pem");
    ops.cert = JoinPath(ca_, "ops.pem");
    ops.key = JoinPath(ca_, "ops.key");
    auto f = TlsSocketFactory::Create(ops, /*server=*/false);
    ASSERT_TRUE(f.ok()) << f.status().ToString();
    probe_tls_ = *f;
  }

  // The TLS flags of `holder`'s certificate (UseTls).
  std::vector<std::string> TlsFlags(const std::string& holder) {
    return {"--tls-mode", "mutual", "--tls-ca", JoinPath(ca_, "ca.pem"), "--tls-cert", JoinPath(ca_, holder + ".pem"),
            "--tls-key", JoinPath(ca_, holder + ".key")};
  }

  ScopedProcess StartClient(const std::string& config, const std::string& name, const std::vector<std::string>& extra) {
    ProcessOptions o;
    o.argv = {testing::BinPath("fedps-client"), "--config", config, "--name", name};
    o.argv.insert(o.argv.end(), extra.begin(), extra.end());
    std::string log = name;
    std::replace(log.begin(), log.end(), '/', '_');
    o.log_path = dir_.File(log + ".log");
    auto p = ScopedProcess::Start(o);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    return p.ok() ? std::move(p).value() : ScopedProcess();
  }

  // Runs the evaluator once (one "eval" record) and returns that record.
  nlohmann::json EvaluateOnce(const std::string& config, const std::string& name) {
    ScopedProcess p = StartClient(config, name, {"--evaluate", "--max-updates", "1", "--data", dir_.File("data")});
    auto st = p.Wait(300s);
    EXPECT_TRUE(st.ok() && st->success()) << testing::ReadLogTail(p.log_path());
    auto evals = Records(dir_.File("run/clients/" + name + "/metrics.jsonl"), "eval");
    EXPECT_EQ(evals.size(), 1u) << testing::ReadLogTail(p.log_path());
    return evals.empty() ? nlohmann::json() : evals.back();
  }

  std::unique_ptr<Registry> ConnectRegistry() {
    RegistryOptions o;
    o.port = redis_.port();
    o.run_id = "client-it";
    auto r = Registry::Connect(o);
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  testing::ScopedTempDir dir_;
  testing::ScopedRedisServer redis_;
  ScopedProcess shards_[2];
  int shard_ports_[2] = {0, 0};
  std::string ca_;                               // UseTls's CA folder ("": plaintext)
  std::shared_ptr<TlsSocketFactory> probe_tls_;  // the operator's, for the fixture's probes
};

TEST_F(ClientIntegration, ThreeClientsCommitUpdatesOnceAndValidationLossFalls) {
  // FedBuff with SGD lr 1: every 3 updates the shards step on their mean (FedAvg), so three
  // clients that pulled the same version do not add up to three times one client's move.
  std::string config = WriteConfig("buffer_size = 3\n");
  StartShards(config);
  if (HasFatalFailure()) return;
  nlohmann::json before = EvaluateOnce(config, "eval-before");
  ASSERT_FALSE(before.is_null());
  EXPECT_EQ(before["version"], 0);

  const int kUpdates = 3;
  const int kClients = 3;
  ScopedProcess a = StartClient(config, "org-a/c0", {"--data", dir_.File("clients/client-0"), "--max-updates",
                                                     std::to_string(kUpdates)});
  ScopedProcess b = StartClient(config, "org-b/c1", {"--data", dir_.File("clients/client-1"), "--max-updates",
                                                     std::to_string(kUpdates), "--throttle", "1.5"});
  ScopedProcess c = StartClient(config, "org-c/c2", {"--data", dir_.File("clients/client-2"), "--max-updates",
                                                     std::to_string(kUpdates)});
  for (ScopedProcess* p : {&a, &b, &c}) {
    auto st = p->Wait(600s);
    ASSERT_TRUE(st.ok()) << "client still running:\n" << testing::ReadLogTail(p->log_path());
    EXPECT_TRUE(st->success()) << st->ToString() << "\n" << testing::ReadLogTail(p->log_path());
  }

  // Every update committed once, with contiguous seqs; each client logged its own.
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  auto seq = reg->GlobalSeq();
  ASSERT_TRUE(seq.ok());
  EXPECT_EQ(*seq, kClients * kUpdates);
  std::set<int64_t> seqs;
  std::set<std::string> ids;
  for (const char* name : {"org-a/c0", "org-b/c1", "org-c/c2"}) {
    std::string metrics = dir_.File(std::string("run/clients/") + name + "/metrics.jsonl");
    auto updates = Records(metrics, "update");
    EXPECT_EQ(updates.size(), size_t(kUpdates)) << metrics;
    for (const auto& u : updates) {
      seqs.insert(u["seq"].get<int64_t>());
      ids.insert(u["update_id"].get<std::string>());
      EXPECT_GT(u["bytes_sent"].get<int64_t>(), 0);
      EXPECT_GT(u["compression_ratio"].get<double>(), 1.5) << "bf16 + zstd vs fp32";
      EXPECT_EQ(u["steps"], 10);
      EXPECT_GE(u["staleness"].get<int64_t>(), 0);
      auto c = reg->LookupCommit(u["update_id"].get<std::string>());
      ASSERT_TRUE(c.ok()) << u.dump();
      EXPECT_EQ(c->seq, u["seq"].get<int64_t>());
    }
    EXPECT_EQ(Records(metrics, "end").size(), 1u);
  }
  EXPECT_EQ(seqs.size(), size_t(kClients * kUpdates));
  EXPECT_EQ(ids.size(), size_t(kClients * kUpdates));
  // Both left the federation.
  auto members = reg->Members();
  ASSERT_TRUE(members.ok());
  EXPECT_TRUE(members->empty());
  // What `fedps-ctl members` shows of them: their domains and their last heartbeat stats.
  auto past = reg->PastMembers(10);
  ASSERT_TRUE(past.ok());
  EXPECT_EQ(past->size(), size_t(kClients));
  for (const auto& m : *past) {
    EXPECT_FALSE(m.data_domains.empty()) << m.name;
    if (m.stats.contains("updates")) {
      EXPECT_LE(m.stats["updates"].get<int64_t>(), kUpdates) << m.name;
      EXPECT_GE(m.stats["mean_staleness"].get<double>(), 0.0) << m.name;
    }
  }

  // Applied by both shards, and the global model got better.
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(testing::WaitFor([&] { return ShardVersion(i) == kClients * kUpdates; }, 60s, 50ms))
        << "shard " << i << " at version " << ShardVersion(i) << "\n" << testing::ReadLogTail(shards_[i].log_path());
  }
  nlohmann::json after = EvaluateOnce(config, "eval-after");
  ASSERT_FALSE(after.is_null());
  EXPECT_EQ(after["version"], kClients * kUpdates);
  EXPECT_EQ(after["federation_tokens"].get<int64_t>(), kClients * kUpdates * 10 * 8 * 64);
  EXPECT_LT(after["loss"].get<double>(), before["loss"].get<double>() - 0.1)
      << "validation loss " << before["loss"] << " -> " << after["loss"];
  for (const char* d : {"code", "licenses"}) {
    EXPECT_LT(after["domains"][d]["loss"].get<double>(), before["domains"][d]["loss"].get<double>()) << d;
  }
}

// Synchronous rounds (ps.mode = "sync"): the update ids of every round entry in the log.
std::vector<std::vector<std::string>> RoundsInLog(Registry& reg) {
  std::vector<std::vector<std::string>> out;
  auto log = reg.CommittedAfter(0, 100);
  EXPECT_TRUE(log.ok()) << log.status().ToString();
  if (!log.ok()) return out;
  for (const auto& entry : *log) {
    auto round = ParseClosedRound(entry);
    EXPECT_TRUE(round.ok()) << entry.update_id << ": " << round.status().ToString();
    if (!round.ok()) continue;
    EXPECT_EQ(round->round + 1, entry.seq);
    std::vector<std::string> ids;
    for (const auto& u : round->updates) ids.push_back(u.update_id);
    out.push_back(ids);
  }
  return out;
}

TEST_F(ClientIntegration, SyncRoundsWaitForEveryClientAndTrainFromTheRoundsBase) {
  std::string config = WriteConfig("mode = \"sync\"\nround_clients = 2\n", "pipeline_depth = 0\n");
  StartShards(config);
  if (HasFatalFailure()) return;
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  const int kUpdates = 2;
  ScopedProcess a = StartClient(config, "sync-a", {"--data", dir_.File("clients/client-0"), "--max-updates",
                                                   std::to_string(kUpdates)});
  // Round 0 waits for the second client, which is not even started yet.
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        auto r = reg->CurrentRound();
        return r.ok() && r->committed == 1;
      },
      300s, 50ms))
      << testing::ReadLogTail(a.log_path());
  EXPECT_EQ(*reg->GlobalSeq(), 0);
  EXPECT_EQ(ShardVersion(0), 0);
  ScopedProcess b = StartClient(config, "sync-b", {"--data", dir_.File("clients/client-1"), "--max-updates",
                                                   std::to_string(kUpdates)});
  for (ScopedProcess* p : {&a, &b}) {
    auto st = p->Wait(600s);
    ASSERT_TRUE(st.ok()) << "client still running:\n" << testing::ReadLogTail(p->log_path());
    EXPECT_TRUE(st->success()) << st->ToString() << "\n" << testing::ReadLogTail(p->log_path());
  }
  EXPECT_NE(testing::ReadLogTail(a.log_path()).find("waiting for round 0 to close"), std::string::npos)
      << testing::ReadLogTail(a.log_path());
  // One log entry per round, each with one update of each client, all trained from the
  // round's base version (staleness 0).
  EXPECT_EQ(*reg->GlobalSeq(), kUpdates);
  auto rounds = RoundsInLog(*reg);
  ASSERT_EQ(rounds.size(), size_t(kUpdates));
  for (const auto& ids : rounds) EXPECT_EQ(ids.size(), 2u);
  for (const char* name : {"sync-a", "sync-b"}) {
    auto updates = Records(dir_.File(std::string("run/clients/") + name + "/metrics.jsonl"), "update");
    ASSERT_EQ(updates.size(), size_t(kUpdates)) << name;
    for (int r = 0; r < kUpdates; ++r) {
      EXPECT_EQ(updates[r]["round"], r) << name;
      EXPECT_EQ(updates[r]["base_version"], r) << name;
      EXPECT_EQ(updates[r]["seq"], r + 1) << name;
      EXPECT_EQ(updates[r]["staleness"], 0) << name;
      const auto& ids = rounds[r];
      EXPECT_EQ(std::count(ids.begin(), ids.end(), updates[r]["update_id"].get<std::string>()), 1) << name;
    }
  }
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(testing::WaitFor([&] { return ShardVersion(i) == kUpdates; }, 60s, 50ms))
        << testing::ReadLogTail(shards_[i].log_path());
  }
}

TEST_F(ClientIntegration, ASyncRoundClosesOnItsTimeoutWithoutAFrozenClientAndTheFederationGoesOn) {
  std::string config =
      WriteConfig("mode = \"sync\"\nround_clients = 2\nround_timeout_ms = 1500\n", "pipeline_depth = 0\n");
  StartShards(config);
  if (HasFatalFailure()) return;
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  // Client b joins and is frozen (SIGSTOP) before it can commit anything.
  ScopedProcess b = StartClient(config, "sync-b", {"--data", dir_.File("clients/client-1"), "--max-updates", "1"});
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        auto m = reg->Members();
        return m.ok() && !m->empty();
      },
      300s, 20ms))
      << testing::ReadLogTail(b.log_path());
  ASSERT_TRUE(b.Stop().ok());
  ASSERT_EQ(reg->CurrentRound().status().code(), StatusCode::kNotFound) << "b committed before it was frozen";
  // Client a alone: every round closes on its timeout, with a's update only.
  ScopedProcess a = StartClient(config, "sync-a", {"--data", dir_.File("clients/client-0"), "--max-updates", "2"});
  auto st = a.Wait(600s);
  ASSERT_TRUE(st.ok() && st->success()) << testing::ReadLogTail(a.log_path());
  // a's last round closes on its timeout after a left (the shards close it).
  EXPECT_TRUE(testing::WaitFor([&] { return reg->GlobalSeq().ok() && *reg->GlobalSeq() == 2; }, 60s, 50ms));
  // b goes on: whatever it trained from is refused or accepted, it ends with one update in
  // a later round, and every update is in exactly one round.
  ASSERT_TRUE(b.Continue().ok());
  auto sb = b.Wait(600s);
  ASSERT_TRUE(sb.ok() && sb->success()) << testing::ReadLogTail(b.log_path());
  auto a_updates = Records(dir_.File("run/clients/sync-a/metrics.jsonl"), "update");
  auto b_updates = Records(dir_.File("run/clients/sync-b/metrics.jsonl"), "update");
  ASSERT_EQ(a_updates.size(), 2u);
  ASSERT_EQ(b_updates.size(), 1u);
  for (const auto& d : Records(dir_.File("run/clients/sync-b/metrics.jsonl"), "update_dropped")) {
    EXPECT_NE(d["reason"].get<std::string>().find("closed without it"), std::string::npos) << d.dump();
  }
  EXPECT_TRUE(testing::WaitFor([&] { return reg->GlobalSeq().ok() && *reg->GlobalSeq() == 3; }, 60s, 50ms));
  auto rounds = RoundsInLog(*reg);
  ASSERT_EQ(rounds.size(), 3u);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(rounds[r], std::vector<std::string>{a_updates[r]["update_id"].get<std::string>()});
  }
  EXPECT_EQ(rounds[2], std::vector<std::string>{b_updates[0]["update_id"].get<std::string>()});
  auto log = reg->CommittedAfter(0, 10);
  ASSERT_TRUE(log.ok());
  for (const auto& entry : *log) EXPECT_EQ(ParseClosedRound(entry)->closed_by, "timeout") << entry.update_id;
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(testing::WaitFor([&] { return ShardVersion(i) == 3; }, 60s, 50ms))
        << testing::ReadLogTail(shards_[i].log_path());
  }
}

TEST_F(ClientIntegration, AClientKilledWithAnUpdateInFlightResumesItUnderTheSameId) {
  // Shard 1 is frozen for a while below: its directory lease must outlive that.
  std::string config = WriteConfig("shard_lease_ms = 120000\n");
  StartShards(config);
  if (HasFatalFailure()) return;
  const std::string state = dir_.File("run/clients/c-kill");
  // A slow first update (throttled training) leaves time to freeze shard 1 after the pull:
  // the client then saves its pending update, stages it on shard 0 and hangs on shard 1.
  ScopedProcess c = StartClient(config, "c-kill", {"--data", dir_.File("clients/client-0"), "--max-updates", "2",
                                                   "--throttle", "20"});
  ASSERT_TRUE(testing::WaitFor(
      [&] { return testing::ReadLogTail(c.log_path()).find("training update 1") != std::string::npos; }, 120s, 5ms))
      << testing::ReadLogTail(c.log_path());
  ASSERT_TRUE(shards_[1].Stop().ok());
  bool pending = testing::WaitFor(
      [&] {
        auto text = Env::Default()->ReadFile(state + "/state.json");
        if (!text.ok()) return false;
        auto j = nlohmann::json::parse(*text, nullptr, false);
        return j.is_object() && j.contains("pending") && j["pending"].is_object();
      },
      120s, 50ms);
  ASSERT_TRUE(pending) << testing::ReadLogTail(c.log_path());
  auto j = nlohmann::json::parse(*Env::Default()->ReadFile(state + "/state.json"));
  const std::string update_id = j["pending"]["update_id"];
  // Pipelined (client.pipeline_depth 1): update 2 trains while update 1 is pushed in the
  // background; the kill lands in the middle of that background push.
  ASSERT_TRUE(testing::WaitFor(
      [&] {
        auto log = Env::Default()->ReadFile(c.log_path());
        return log.ok() && log->find("training update 2") != std::string::npos;
      },
      60s, 5ms))
      << testing::ReadLogTail(c.log_path());
  ASSERT_TRUE(c.Kill().ok());  // SIGKILL: no clean-up at all
  ASSERT_TRUE(shards_[1].Continue().ok());

  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  EXPECT_EQ(reg->LookupCommit(update_id).status().code(), StatusCode::kNotFound);

  ScopedProcess again = StartClient(config, "c-kill", {"--data", dir_.File("clients/client-0"), "--max-updates", "2"});
  auto st = again.Wait(600s);
  ASSERT_TRUE(st.ok()) << testing::ReadLogTail(again.log_path());
  EXPECT_TRUE(st->success()) << testing::ReadLogTail(again.log_path());

  // The interrupted update was committed exactly once, under its original id, then one more.
  auto c1 = reg->LookupCommit(update_id);
  ASSERT_TRUE(c1.ok()) << update_id << "\n" << testing::ReadLogTail(again.log_path());
  auto seq = reg->GlobalSeq();
  ASSERT_TRUE(seq.ok());
  auto updates = Records(state + "/metrics.jsonl", "update");
  ASSERT_EQ(updates.size(), 2u);
  EXPECT_EQ(updates[0]["update_id"], update_id);
  EXPECT_NE(updates[1]["update_id"], update_id);
  EXPECT_EQ(*seq, 2);
  // The second update continues the counter (…/2) under the new membership epoch.
  std::string second = updates[1]["update_id"];
  EXPECT_EQ(second.substr(second.rfind('/')), "/2");
  for (int i = 0; i < 2; ++i) {
    EXPECT_TRUE(testing::WaitFor([&] { return ShardVersion(i) == 2; }, 60s, 50ms)) << ShardVersion(i);
  }
}

// Resident memory of a process, from /proc (0 when it is gone).
int64_t RssBytes(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  }
  return 0;
}

// Bytes in a folder, metrics.jsonl (the log, which grows by design) left out.
int64_t StateBytes(const std::string& dir) {
  int64_t total = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    if (e.is_regular_file(ec) && e.path().filename() != "metrics.jsonl") total += e.file_size(ec);
  }
  return total;
}

TEST_F(ClientIntegration, ManyPipelinedCyclesKeepMemoryAndStateFlat) {
  // Short cycles (2 local steps), the moments saved every 3 updates: 36 updates.
  std::string config = WriteConfig();
  std::ofstream(config, std::ios::app) << "optimizer_save_every = 3\n";
  StartShards(config);
  if (HasFatalFailure()) return;
  int64_t params = 0;
  for (int i = 0; i < 2; ++i) {
    ShardChannelOptions o;
    o.port = shard_ports_[i];
    ShardChannel ch(o);
    auto st = ch.GetStatus();
    ASSERT_TRUE(st.ok());
    params += st->slice_elements;
  }
  const std::string state = dir_.File("run/clients/c-long");
  const std::string metrics = state + "/metrics.jsonl";
  const int kUpdates = 36;
  ScopedProcess c = StartClient(config, "c-long", {"--data", dir_.File("clients/client-0"), "--max-updates",
                                                   std::to_string(kUpdates), "--local-steps", "2"});
  // (updates committed, RSS, state bytes) while it runs.
  std::vector<std::tuple<int64_t, int64_t, int64_t>> samples;
  while (!testing::ProcessGone(c.pid())) {
    const int64_t n = static_cast<int64_t>(Records(metrics, "update").size());
    const int64_t rss = RssBytes(c.pid());
    if (rss > 0) samples.emplace_back(n, rss, StateBytes(state));
    std::this_thread::sleep_for(50ms);
  }
  auto st = c.Wait(60s);
  ASSERT_TRUE(st.ok() && st->success()) << testing::ReadLogTail(c.log_path());
  auto updates = Records(metrics, "update");
  ASSERT_EQ(updates.size(), size_t(kUpdates));
  for (const auto& u : updates) EXPECT_TRUE(u["pipelined"].get<bool>());

  // RSS: what it was once warm (10 updates in) is what it stays (no per-cycle growth).
  int64_t warm = 0, late_max = 0, disk_max = 0;
  for (const auto& [n, rss, disk] : samples) {
    if (n >= 8 && n <= 12) warm = std::max(warm, rss);
    if (n >= 24) late_max = std::max(late_max, rss);
    disk_max = std::max(disk_max, disk);
  }
  ASSERT_GT(warm, 0) << samples.size() << " samples";
  ASSERT_GT(late_max, 0);
  EXPECT_LE(late_max, warm + warm / 20 + (8 << 20)) << "RSS " << warm << " after ~10 updates, " << late_max
                                                    << " after 24+";
  // Disk: within docs/client.md's bound E + 16P (E < 2P + frame headers for bf16), and one
  // copy of each file at the end.
  EXPECT_LE(disk_max, 18 * params + (1 << 20)) << params << " parameters";
  auto names = Env::Default()->ListDir(state);
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, (std::vector<std::string>{"LOCK", "metrics.jsonl", "optimizer.safetensors", "state.json"}));
  // Exactly once: contiguous seqs, one commit per update id.
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  std::set<int64_t> seqs;
  for (const auto& u : updates) {
    auto commit = reg->LookupCommit(u["update_id"].get<std::string>());
    ASSERT_TRUE(commit.ok());
    EXPECT_EQ(commit->seq, u["seq"].get<int64_t>());
    seqs.insert(commit->seq);
  }
  EXPECT_EQ(seqs.size(), size_t(kUpdates));
  EXPECT_EQ(*seqs.rbegin(), kUpdates);
}

TEST_F(ClientIntegration, ResetInnerOptimizerStartsEveryUpdatesMomentsAfresh) {
  // Two clients of one federation, 3 updates of 4 inner steps each, the moments saved after
  // every update: the saved AdamW step counts of the last update are 12 when the moments
  // carry across updates (the default) and 4 with client.reset_inner_optimizer, which
  // zeroes them each time a pulled model is loaded.
  std::string keep = WriteConfig("", "optimizer_save_every = 1\n");
  std::string reset = dir_.File("run-reset.toml");
  fs::copy_file(keep, reset);
  std::ofstream(reset, std::ios::app) << "reset_inner_optimizer = true\n";
  StartShards(keep);
  if (HasFatalFailure()) return;
  for (const auto& [config, name, steps] : {std::tuple{keep, "c-keep", 12.0f}, std::tuple{reset, "c-reset", 4.0f}}) {
    ScopedProcess c = StartClient(config, name, {"--data", dir_.File("clients/client-0"), "--max-updates", "3",
                                                 "--local-steps", "4"});
    auto st = c.Wait(300s);
    ASSERT_TRUE(st.ok() && st->success()) << testing::ReadLogTail(c.log_path());
    auto saved = ReadSafetensors(dir_.File(std::string("run/clients/") + name + "/optimizer.safetensors"));
    ASSERT_TRUE(saved.ok()) << saved.status().ToString();
    const TensorBytes* step = saved->Find("step");
    ASSERT_NE(step, nullptr);
    ASSERT_EQ(step->dtype, DType::kF32);
    ASSERT_EQ(step->numel(), 2);
    float counts[2];
    std::memcpy(counts, step->data.data(), sizeof(counts));
    EXPECT_EQ(counts[0], steps) << name;
    EXPECT_EQ(counts[1], steps) << name;
  }
}

TEST_F(ClientIntegration, WithMutualTlsAClientCommitsOnlyUnderItsCertificatesName) {
  ASSERT_NO_FATAL_FAILURE(UseTls({"tls-a"}));
  std::string config = WriteConfig();
  StartShards(config);
  if (HasFatalFailure()) return;
  // Another name with tls-a's certificate: refused at start, before joining.
  std::vector<std::string> args = {"--data", dir_.File("clients/client-0"), "--max-updates", "1"};
  std::vector<std::string> tls = TlsFlags("tls-a");
  args.insert(args.end(), tls.begin(), tls.end());
  ScopedProcess impostor = StartClient(config, "tls-b", args);
  auto refused = impostor.Wait(120s);
  ASSERT_TRUE(refused.ok());
  EXPECT_FALSE(refused->success());
  EXPECT_NE(testing::ReadLogTail(impostor.log_path()).find("this client is --name tls-b"), std::string::npos)
      << testing::ReadLogTail(impostor.log_path());
  // Its own name: pulls, pushes and commits over TLS.
  ScopedProcess a = StartClient(config, "tls-a", args);
  auto st = a.Wait(600s);
  ASSERT_TRUE(st.ok()) << testing::ReadLogTail(a.log_path());
  EXPECT_TRUE(st->success()) << st->ToString() << "\n" << testing::ReadLogTail(a.log_path());
  EXPECT_EQ(Records(dir_.File("run/clients/tls-a/metrics.jsonl"), "update").size(), 1u);
  EXPECT_TRUE(testing::WaitFor([&] { return ShardVersion(0) == 1 && ShardVersion(1) == 1; }, 60s, 50ms));
}

TEST_F(ClientIntegration, SigtermEndsTheLoopCleanlyAndLeaves) {
  std::string config = WriteConfig();
  StartShards(config);
  if (HasFatalFailure()) return;
  const std::string metrics = dir_.File("run/clients/c-term/metrics.jsonl");
  ScopedProcess c = StartClient(config, "c-term", {"--data", dir_.File("clients/client-1")});  // until stopped
  ASSERT_TRUE(testing::WaitFor([&] { return Records(metrics, "update").size() >= 2; }, 300s, 20ms))
      << testing::ReadLogTail(c.log_path());
  auto st = c.Terminate(60s);  // SIGTERM; SIGKILL only if it does not end in time
  ASSERT_TRUE(st.ok());
  EXPECT_TRUE(st->success()) << st->ToString() << "\n" << testing::ReadLogTail(c.log_path());
  auto end = Records(metrics, "end");
  ASSERT_EQ(end.size(), 1u);
  EXPECT_EQ(end[0]["stopped"], true);
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  auto members = reg->Members();
  ASSERT_TRUE(members.ok());
  EXPECT_TRUE(members->empty()) << "the client left";
  auto past = reg->PastMembers(10);
  ASSERT_TRUE(past.ok());
  ASSERT_FALSE(past->empty());
  EXPECT_EQ(past->front().end_reason, "left");
}

TEST_F(ClientIntegration, ASecondProcessUnderALiveNameIsRefusedAndTheFirstGoesOn) {
  std::string config = WriteConfig();
  StartShards(config);
  if (HasFatalFailure()) return;
  const std::string metrics = dir_.File("run/clients/twin/metrics.jsonl");
  ScopedProcess first = StartClient(config, "twin", {"--data", dir_.File("clients/client-0")});  // until stopped
  ASSERT_TRUE(testing::WaitFor([&] { return Records(metrics, "update").size() >= 1; }, 300s, 20ms))
      << testing::ReadLogTail(first.log_path());
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  auto before = reg->Members();
  ASSERT_TRUE(before.ok() && before->size() == 1u);

  // The same name from another state folder (another machine, say): it waits for the
  // name's lease to lapse, sees it renewed for 2 x lease_ms and exits 1 naming the holder.
  ProcessOptions o;
  o.argv = {testing::BinPath("fedps-client"), "--config", config, "--name", "twin", "--state", dir_.File("twin-2"),
            "--data", dir_.File("clients/client-1")};
  o.log_path = dir_.File("twin-2.log");
  auto second = ScopedProcess::Start(o);
  ASSERT_TRUE(second.ok()) << second.status().ToString();
  auto st = second->Wait(120s);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->code, 1) << st->ToString();
  const std::string log = testing::ReadLogTail(second->log_path());
  EXPECT_NE(log.find("another live process holds the client name twin"), std::string::npos) << log;

  // The first kept its membership (same epoch) and commits on.
  auto after = reg->Members();
  ASSERT_TRUE(after.ok() && after->size() == 1u);
  EXPECT_EQ(after->front().epoch, before->front().epoch);
  const size_t updates = Records(metrics, "update").size();
  EXPECT_TRUE(testing::WaitFor([&] { return Records(metrics, "update").size() > updates; }, 300s, 20ms))
      << testing::ReadLogTail(first.log_path());
  auto past = reg->PastMembers(10);
  ASSERT_TRUE(past.ok());
  EXPECT_TRUE(past->empty()) << "no membership was replaced";
  auto stopped = first.Terminate(60s);
  ASSERT_TRUE(stopped.ok());
  EXPECT_TRUE(stopped->success()) << stopped->ToString() << "\n" << testing::ReadLogTail(first.log_path());
}

TEST_F(ClientIntegration, RefusesAConfigThatDoesNotMatchTheRun) {
  std::string config = WriteConfig();
  StartShards(config);
  if (HasFatalFailure()) return;
  std::string other = dir_.File("other.toml");
  std::string text = *Env::Default()->ReadFile(config);
  text.replace(text.find("codec = \"bf16\""), 14, "codec = \"int8\"");
  std::ofstream(other) << text;
  ScopedProcess c = StartClient(other, "wrong", {"--max-updates", "1"});
  auto st = c.Wait(120s);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->code, 1);
  std::string log = testing::ReadLogTail(c.log_path());
  EXPECT_NE(log.find("fedps-client: error:"), std::string::npos) << log;
  EXPECT_NE(log.find("codec"), std::string::npos) << log;
}

TEST_F(ClientIntegration, ADiskTooFullIsRefusedBeforeTheCycleWritesAnything) {
  // More free space asked for than any disk has: the client must stop before training,
  // with a message naming the setting, and leave nothing pending.
  std::string config = WriteConfig();
  std::ofstream(config, std::ios::app) << "min_free_disk_mb = 1000000000\n";
  StartShards(config);
  if (HasFatalFailure()) return;
  ScopedProcess c = StartClient(config, "c-full", {"--data", dir_.File("clients/client-0"), "--max-updates", "1"});
  auto st = c.Wait(120s);
  ASSERT_TRUE(st.ok());
  EXPECT_EQ(st->code, 1);
  std::string log = testing::ReadLogTail(c.log_path());
  EXPECT_NE(log.find("MB free; the next update needs"), std::string::npos) << log;
  EXPECT_NE(log.find("client.min_free_disk_mb"), std::string::npos) << log;
  EXPECT_TRUE(Records(dir_.File("run/clients/c-full/metrics.jsonl"), "update").empty());
  EXPECT_FALSE(Env::Default()->Exists(dir_.File("run/clients/c-full/pending.bin")));
  auto reg = ConnectRegistry();
  ASSERT_NE(reg, nullptr);
  auto seq = reg->GlobalSeq();
  ASSERT_TRUE(seq.ok());
  EXPECT_EQ(*seq, 0);
}

}  // namespace
}  // namespace fedps
