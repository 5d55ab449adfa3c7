// fedps-shard processes end to end, over Thrift (ShardChannel) with a real redis-server:
// the initial slices are Model::Create's, committed updates apply on both shards to the
// hand-computed SGD result, a shard killed with SIGKILL recovers to the head without
// losing or repeating a committed update, SIGTERM drains and checkpoints, and a process
// whose run identity differs refuses to start naming the field.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>

#include <atomic>
#include <csignal>
#include <fstream>
#include <map>
#include <set>
#include <span>
#include <thread>

#include "common/env.h"
#include "common/metrics_log.h"
#include "compression/codec.h"
#include "model/decoder.h"
#include "model/presets.h"
#include "model/tokenizer.h"
#include "ps/registry.h"
#include "ps/rpc/shard_types.h"
#include "ps/shard_channel.h"
#include "tests/testing/ctl.h"
#include "tests/testing/process.h"
#include "tests/testing/pseudo_words.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

using ::testing::HasSubstr;
using testing::ProcessOptions;
using testing::ScopedProcess;
using testing::ScopedRedisServer;
using testing::ScopedTempDir;
using testing::WaitFor;

constexpr int kShards = 2;
constexpr int64_t kFrame = 16384;
constexpr uint64_t kSeed = 7;

std::vector<float> Delta(int k, int shard, int64_t n) {
  std::vector<float> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[i] = 1e-4f * static_cast<float>((i * (k + 5) + shard * 3) % 29) - 1.4e-3f;
  return v;
}

class ShardServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tokdir_ = new ScopedTempDir();
    ASSERT_OK(Env::Default()->WriteFileAtomic(tokdir_->File("corpus.txt"), testing::PseudoWordLines(12345, 3000)));
    TokenizerTrainOptions t;
    t.inputs = {tokdir_->File("corpus.txt")};
    t.vocab_size = 400;
    t.output_path = tokdir_->File("tokenizer.model");
    auto tok = Tokenizer::Train(t);
    ASSERT_OK(tok.status());
  }
  static void TearDownTestSuite() {
    delete tokdir_;
    tokdir_ = nullptr;
  }

  void SetUp() override {
    ASSERT_OK(redis_.Start());
    ropts_.port = redis_.port();
    ropts_.run_id = "srv-test";
  }

  std::string WriteConfig(const std::string& name, const std::string& codec) {
    std::string path = dir_.File(name);
    std::ofstream(path) << "[run]\nid = \"srv-test\"\ndir = \"" << dir_.File("run")
                        << "\"\nseed = " << kSeed << "\n[model]\npreset = \"tiny\"\n"
                        << "[data]\ntokenizer = \"" << tokdir_->File("tokenizer.model") << "\"\n"
                        << "[compression]\ncodec = \"" << codec << "\"\nthreads = 1\n"
                        << "[ps]\nnum_shards = " << kShards
                        << "\nredis = \"127.0.0.1:" << redis_.port() << "\"\n"
                        << "base_port = 0\nframe_elements = " << kFrame << "\n"
                        << "optimizer = \"sgd\"\nouter_lr = 1.0\nbuffer_size = 1\n"
                        << "staleness = \"constant\"\nmax_staleness = 16\ncheckpoint_every = 2\n"
                        << "shard_lease_ms = 3000\n";
    return path;
  }

  // Starts fedps-shard `i`; returns its port (0 on failure).
  int StartShard(int i, const std::string& config, ScopedProcess* proc) {
    auto port = testing::PickFreePort();
    EXPECT_TRUE(port.ok());
    ProcessOptions po;
    po.argv = {testing::BinPath("fedps-shard"),
               "--config",
               config,
               "--shard",
               std::to_string(i),
               "--port",
               std::to_string(*port)};
    po.log_path = dir_.File("shard-" + std::to_string(i) + ".log");
    auto p = ScopedProcess::Start(po);
    EXPECT_TRUE(p.ok()) << p.status().ToString();
    if (!p.ok()) return 0;
    *proc = std::move(p).value();
    return *port;
  }

  // Waits until the shard answers SERVING at version >= v.
  bool WaitServing(ShardChannel& ch, int64_t v, ScopedProcess& proc) {
    bool ok = WaitFor(
        [&] {
          auto s = ch.GetStatus();
          return s.ok() && s->state == rpc::ShardState::SERVING && s->version >= v;
        },
        std::chrono::seconds(60), std::chrono::milliseconds(50));
    EXPECT_TRUE(ok) << testing::ReadLogTail(proc.log_path());
    return ok;
  }

  std::vector<float> PullSlice(ShardChannel& ch, const rpc::ShardStatus& st, int64_t* version) {
    std::vector<float> out(static_cast<size_t>(st.slice_elements));
    auto codec =
        Codec::Create(CodecOptions{.kind = CodecKind::kFp32, .chunk_elements = st.frame_elements});
    EXPECT_TRUE(codec.ok());
    const int64_t frames = (st.slice_elements + st.frame_elements - 1) / st.frame_elements;
    for (int64_t f = 0; f < frames; ++f) {
      rpc::PullRequest req;
      req.header = MakeHeader(st.run_id, st.layout_hash, st.shard_index, st.epoch, "test");
      req.codec = "fp32";
      req.frame_index = f;
      if (f > 0) req.__set_version(*version);
      auto r = ch.Pull(req);
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (!r.ok()) return {};
      if (f == 0) *version = r->version;
      EXPECT_TRUE((*codec)->DecodeFrame(r->frame, std::span<float>(out)).ok());
    }
    return out;
  }

  // Pushes update k to a shard; returns the last response's state.
  int PushUpdate(ShardChannel& ch, const rpc::ShardStatus& st, const std::string& id, int64_t base,
                 const std::vector<float>& delta, std::optional<int64_t>* seq = nullptr) {
    auto codec =
        Codec::Create(CodecOptions{.kind = CodecKind::kFp32, .chunk_elements = st.frame_elements});
    auto frames = (*codec)->Encode(std::span<const float>(delta));
    EXPECT_TRUE(frames.ok());
    int state = 0;
    for (size_t f = 0; f < frames->size(); ++f) {
      rpc::PushRequest req;
      req.header = MakeHeader(st.run_id, st.layout_hash, st.shard_index, st.epoch, "test");
      req.update_id = id;
      req.client_id = "bob";
      req.client_epoch = client_epoch_;
      req.base_version = base;
      req.tokens = 4096;
      req.local_steps = 8;
      req.codec = "fp32";
      req.frame_index = static_cast<int64_t>(f);
      req.total_frames = static_cast<int64_t>(frames->size());
      req.frame_elements = st.frame_elements;
      req.frame = (*frames)[f];
      auto r = ch.Push(req);
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (!r.ok()) return -1;
      state = r->state;
      if (seq && r->__isset.seq) *seq = r->seq;
    }
    return state;
  }

  StatusOr<int64_t> Commit(Registry& reg, const std::string& id) {
    nlohmann::json meta = {{"base_version", 0}, {"tokens", 4096}, {"local_steps", 8}};
    return reg.CommitUpdate(id, "bob", client_epoch_, meta, kShards);
  }

  // Update k's id under the joined membership ("<client>/<client_epoch>/<counter>").
  std::string Id(int k) const {
    return "bob/" + std::to_string(client_epoch_) + "/" + std::to_string(k);
  }

  static ScopedTempDir* tokdir_;
  ScopedRedisServer redis_;
  ScopedTempDir dir_;
  RegistryOptions ropts_;
  int64_t client_epoch_ = 0;
};

ScopedTempDir* ShardServerTest::tokdir_ = nullptr;

TEST_F(ShardServerTest, TwoShardsApplyCommitsAndAKilledShardRecoversToTheHead) {
  const std::string config = WriteConfig("run.toml", "fp32");
  ScopedProcess procs[kShards];
  std::vector<std::unique_ptr<ShardChannel>> ch;
  for (int i = 0; i < kShards; ++i) {
    int port = StartShard(i, config, &procs[i]);
    ASSERT_GT(port, 0);
    ch.push_back(std::make_unique<ShardChannel>(ShardChannelOptions{.port = port}));
  }
  std::vector<rpc::ShardStatus> st(kShards);
  for (int i = 0; i < kShards; ++i) {
    ASSERT_TRUE(WaitServing(*ch[i], 0, procs[i]));
    auto s = ch[i]->GetStatus();
    ASSERT_OK(s.status());
    st[i] = *s;
    EXPECT_EQ(st[i].shard_index, i);
    EXPECT_EQ(st[i].num_shards, kShards);
    EXPECT_GT(st[i].epoch, 0);
  }
  EXPECT_EQ(st[0].slice_begin + st[0].slice_elements, st[1].slice_begin);
  EXPECT_GT(st[0].slice_elements, kFrame);  // several frames per slice

  // Version 0 is Model::Create(config, cpu, seed), slice by slice.
  auto tok = Tokenizer::Load(tokdir_->File("tokenizer.model"));
  ASSERT_OK(tok.status());
  ModelOptions mo;
  mo.preset = "tiny";
  auto mc = ResolveModelConfig(mo, (*tok)->vocab_size());
  ASSERT_OK(mc.status());
  auto model = Model::Create(*mc, torch::kCPU, kSeed);
  ASSERT_OK(model.status());
  EXPECT_EQ((*model)->layout().hash(), st[0].layout_hash);
  torch::Tensor flat = (*model)->flat_params().contiguous();
  EXPECT_EQ(flat.numel(), st[1].slice_begin + st[1].slice_elements);
  std::vector<std::vector<float>> expected(kShards);
  for (int i = 0; i < kShards; ++i) {
    int64_t v = -1;
    expected[i] = PullSlice(*ch[i], st[i], &v);
    EXPECT_EQ(v, 0);
    const float* p = flat.data_ptr<float>() + st[i].slice_begin;
    ASSERT_EQ(expected[i], std::vector<float>(p, p + st[i].slice_elements)) << "shard " << i;
  }

  auto reg = Registry::Connect(ropts_);
  ASSERT_OK(reg.status());
  auto epoch = (*reg)->Join("bob", ClientInfo{}, std::chrono::milliseconds(60000));
  ASSERT_OK(epoch.status());
  client_epoch_ = *epoch;

  // Updates 1..3: stage everywhere, commit, notify.
  for (int k = 1; k <= 3; ++k) {
    const std::string id = Id(k);
    for (int i = 0; i < kShards; ++i) {
      auto d = Delta(k, i, st[i].slice_elements);
      // Every frame twice: duplicates are acknowledged, stored once.
      EXPECT_EQ(PushUpdate(*ch[i], st[i], id, 0, d), rpc::UpdateState::STAGED);
      EXPECT_EQ(PushUpdate(*ch[i], st[i], id, 0, d), rpc::UpdateState::STAGED);
    }
    auto seq = Commit(**reg, id);
    ASSERT_OK(seq.status());
    EXPECT_EQ(*seq, k);
    for (int i = 0; i < kShards; ++i) {
      rpc::CommitNotice n;
      n.header = MakeHeader(st[i].run_id, st[i].layout_hash, i, st[i].epoch, "test");
      n.update_id = id;
      n.seq = *seq;
      ASSERT_OK(ch[i]->CommitNotify(n));
    }
  }
  // Updates 4 and 5 are staged on both shards; then shard 0 dies (SIGKILL) and they
  // commit while it is down.
  for (int k = 4; k <= 5; ++k) {
    for (int i = 0; i < kShards; ++i) {
      EXPECT_EQ(PushUpdate(*ch[i], st[i], Id(k), 0, Delta(k, i, st[i].slice_elements)),
                rpc::UpdateState::STAGED);
    }
  }
  ASSERT_TRUE(WaitServing(*ch[0], 3, procs[0]));
  ASSERT_OK(procs[0].Kill());
  ASSERT_OK(Commit(**reg, Id(4)).status());
  ASSERT_OK(Commit(**reg, Id(5)).status());
  // The dead shard fails fast with kUnavailable.
  EXPECT_EQ(ch[0]->GetStatus().status().code(), StatusCode::kUnavailable);

  int port = StartShard(0, config, &procs[0]);
  ASSERT_GT(port, 0);
  ch[0] = std::make_unique<ShardChannel>(ShardChannelOptions{.port = port});
  for (int i = 0; i < kShards; ++i) ASSERT_TRUE(WaitServing(*ch[i], 5, procs[i]));
  auto s0 = ch[0]->GetStatus();
  ASSERT_OK(s0.status());
  EXPECT_GT(s0->epoch, st[0].epoch);  // a new registration
  EXPECT_EQ(s0->version, 5);
  st[0] = *s0;

  // Both slices: x0 - d1 - ... - d5 (SGD lr 1, constant weights, one step per update).
  for (int i = 0; i < kShards; ++i) {
    std::vector<float> want = expected[i];
    for (int k = 1; k <= 5; ++k) {
      auto d = Delta(k, i, st[i].slice_elements);
      for (size_t j = 0; j < want.size(); ++j) want[j] -= d[j];
    }
    int64_t v = -1;
    std::vector<float> got = PullSlice(*ch[i], st[i], &v);
    EXPECT_EQ(v, 5);
    ASSERT_EQ(got.size(), want.size());
    for (size_t j = 0; j < want.size(); ++j)
      ASSERT_NEAR(got[j], want[j], 1e-6f) << "shard " << i << " @" << j;
  }

  // A client that lost its reply learns where update 1 stands by resending a frame.
  std::optional<int64_t> seq;
  EXPECT_EQ(PushUpdate(*ch[0], st[0], Id(1), 0, Delta(1, 0, st[0].slice_elements), &seq),
            rpc::UpdateState::APPLIED);
  EXPECT_EQ(seq.value_or(0), 1);

  // The apply records: shard 1 applied 1..5 once each; shard 0's second life replayed
  // from its checkpoint (version 2) to the head, contiguously.
  for (int i = 0; i < kShards; ++i) {
    auto records = ReadMetrics(dir_.File("run/shard-" + std::to_string(i) + "/metrics.jsonl"));
    ASSERT_OK(records.status());
    std::vector<std::vector<int64_t>> lives;
    for (const auto& r : *records) {
      if (r["event"] == "start") lives.emplace_back();
      if (r["event"] == "apply" && !lives.empty()) lives.back().push_back(r["seq"].get<int64_t>());
    }
    if (i == 1) {
      ASSERT_EQ(lives.size(), 1u);
      EXPECT_THAT(lives[0], ::testing::ElementsAre(1, 2, 3, 4, 5));
    } else {
      ASSERT_EQ(lives.size(), 2u);
      EXPECT_THAT(lives[0], ::testing::ElementsAre(1, 2, 3));
      EXPECT_THAT(lives[1], ::testing::ElementsAre(3, 4, 5));
    }
  }

  // SIGTERM: drain, checkpoint at the head, exit 0.
  auto ended = procs[1].Terminate(std::chrono::seconds(30));
  ASSERT_OK(ended.status());
  EXPECT_TRUE(ended->success()) << ended->ToString() << testing::ReadLogTail(procs[1].log_path());
  auto records = ReadMetrics(dir_.File("run/shard-1/metrics.jsonl"));
  ASSERT_OK(records.status());
  bool final_checkpoint = false;
  for (const auto& r : *records) {
    if (r["event"] == "checkpoint" && r["reason"] == "shutdown" && r["version"] == 5)
      final_checkpoint = true;
  }
  EXPECT_TRUE(final_checkpoint);
}

// Issue 7: SIGTERM at a version whose checkpoint already exists (written by the schedule,
// or loaded at start) drains and exits 0, leaving that checkpoint in place.
TEST_F(ShardServerTest, SigtermAtAnAlreadyCheckpointedVersionExitsCleanly) {
  const std::string config = WriteConfig("run.toml", "fp32");  // checkpoint_every = 2
  ScopedProcess procs[kShards];
  std::vector<std::unique_ptr<ShardChannel>> ch;
  std::vector<rpc::ShardStatus> st(kShards);
  for (int i = 0; i < kShards; ++i) {
    int port = StartShard(i, config, &procs[i]);
    ASSERT_GT(port, 0);
    ch.push_back(std::make_unique<ShardChannel>(ShardChannelOptions{.port = port}));
    ASSERT_TRUE(WaitServing(*ch[i], 0, procs[i]));
    auto s = ch[i]->GetStatus();
    ASSERT_OK(s.status());
    st[i] = *s;
  }
  auto reg = Registry::Connect(ropts_);
  ASSERT_OK(reg.status());
  auto epoch = (*reg)->Join("bob", ClientInfo{}, std::chrono::milliseconds(60000));
  ASSERT_OK(epoch.status());
  client_epoch_ = *epoch;
  for (int k = 1; k <= 2; ++k) {
    const std::string id = Id(k);
    for (int i = 0; i < kShards; ++i) {
      EXPECT_EQ(PushUpdate(*ch[i], st[i], id, 0, Delta(k, i, st[i].slice_elements)),
                rpc::UpdateState::STAGED);
    }
    ASSERT_OK(Commit(**reg, id).status());
  }
  ASSERT_TRUE(WaitFor(
      [&] {
        auto s = ch[0]->GetStatus();
        return s.ok() && s->version == 2 && s->checkpoint_version == 2;
      },
      std::chrono::seconds(30)));
  const std::string meta = dir_.File("run/shard-0/checkpoints/v-000000000002/meta.json");
  struct stat before {};
  ASSERT_EQ(::stat(meta.c_str(), &before), 0);

  auto unchanged_shutdowns = [&] {
    auto records = ReadMetrics(dir_.File("run/shard-0/metrics.jsonl"));
    EXPECT_TRUE(records.ok());
    int n = 0;
    for (const auto& r : records.ok() ? *records : std::vector<nlohmann::json>{}) {
      if (r["event"] == "checkpoint" && r["reason"] == "shutdown" && r["version"] == 2 &&
          r.value("unchanged", false)) {
        ++n;
      }
    }
    return n;
  };
  // Written by the schedule in this life, then loaded at start in the next one.
  for (int life = 1; life <= 2; ++life) {
    auto ended = procs[0].Terminate(std::chrono::seconds(30));
    ASSERT_OK(ended.status());
    ASSERT_TRUE(ended->success()) << ended->ToString() << testing::ReadLogTail(procs[0].log_path());
    EXPECT_EQ(unchanged_shutdowns(), life);
    struct stat after {};
    ASSERT_EQ(::stat(meta.c_str(), &after), 0);
    EXPECT_EQ(after.st_ino, before.st_ino);
    if (life == 2) break;
    int port = StartShard(0, config, &procs[0]);
    ASSERT_GT(port, 0);
    ch[0] = std::make_unique<ShardChannel>(ShardChannelOptions{.port = port});
    ASSERT_TRUE(WaitServing(*ch[0], 2, procs[0]));
  }
}

// Several frames of one update in flight at once (issue 7, item 4): per shard, two
// connections push the even and the odd frames of the same update in parallel (both
// also send frame 0, racing on it); the update is staged once, commits and applies.
TEST_F(ShardServerTest, FramesOfOneUpdatePushedInParallelOverTwoConnectionsStageOnce) {
  const std::string config = WriteConfig("run.toml", "fp32");
  ScopedProcess procs[kShards];
  std::vector<int> ports;
  std::vector<rpc::ShardStatus> st(kShards);
  std::vector<std::vector<float>> before(kShards);
  for (int i = 0; i < kShards; ++i) {
    ports.push_back(StartShard(i, config, &procs[i]));
    ASSERT_GT(ports.back(), 0);
    ShardChannel ch(ShardChannelOptions{.port = ports.back()});
    ASSERT_TRUE(WaitServing(ch, 0, procs[i]));
    auto s = ch.GetStatus();
    ASSERT_OK(s.status());
    st[i] = *s;
    int64_t v = -1;
    before[i] = PullSlice(ch, st[i], &v);
  }
  auto reg = Registry::Connect(ropts_);
  ASSERT_OK(reg.status());
  auto epoch = (*reg)->Join("bob", ClientInfo{}, std::chrono::milliseconds(60000));
  ASSERT_OK(epoch.status());
  client_epoch_ = *epoch;
  const std::string id = Id(1);
  for (int i = 0; i < kShards; ++i) {
    auto codec = Codec::Create(
        CodecOptions{.kind = CodecKind::kFp32, .chunk_elements = st[i].frame_elements});
    ASSERT_OK(codec.status());
    auto d = Delta(1, i, st[i].slice_elements);
    auto frames = (*codec)->Encode(std::span<const float>(d));
    ASSERT_OK(frames.status());
    ASSERT_GE(frames->size(), 4u);
    std::atomic<int> failures{0}, staged{0};
    auto pusher = [&](int parity) {
      ShardChannel ch(ShardChannelOptions{.port = ports[i]});
      for (size_t f = 0; f < frames->size(); ++f) {
        if (f != 0 && static_cast<int>(f % 2) != parity) continue;
        rpc::PushRequest req;
        req.header = MakeHeader(st[i].run_id, st[i].layout_hash, i, st[i].epoch, "test");
        req.update_id = id;
        req.client_id = "bob";
        req.client_epoch = client_epoch_;
        req.base_version = 0;
        req.tokens = 4096;
        req.local_steps = 8;
        req.codec = "fp32";
        req.frame_index = static_cast<int64_t>(f);
        req.total_frames = static_cast<int64_t>(frames->size());
        req.frame_elements = st[i].frame_elements;
        req.frame = (*frames)[f];
        auto r = ch.Push(req);
        if (!r.ok()) {
          ++failures;
          ADD_FAILURE() << "frame " << f << ": " << r.status().ToString();
        } else if (r->state == rpc::UpdateState::STAGED) {
          ++staged;
        }
      }
    };
    std::thread even(pusher, 0), odd(pusher, 1);
    even.join();
    odd.join();
    EXPECT_EQ(failures.load(), 0);
    EXPECT_GE(staged.load(), 1);
    ShardChannel ch(ShardChannelOptions{.port = ports[i]});
    auto s = ch.GetStatus();
    ASSERT_OK(s.status());
    EXPECT_EQ(s->staged_updates, 1) << "shard " << i;
    EXPECT_EQ(s->receiving_updates, 0) << "shard " << i;
  }
  ASSERT_OK(Commit(**reg, id).status());
  for (int i = 0; i < kShards; ++i) {
    ShardChannel ch(ShardChannelOptions{.port = ports[i]});
    ASSERT_TRUE(WaitServing(ch, 1, procs[i]));
    int64_t v = -1;
    std::vector<float> after = PullSlice(ch, st[i], &v);
    EXPECT_EQ(v, 1);
    auto d = Delta(1, i, st[i].slice_elements);
    ASSERT_EQ(after.size(), before[i].size());
    for (size_t j = 0; j < after.size(); ++j)
      ASSERT_NEAR(after[j], before[i][j] - d[j], 1e-6f) << "shard " << i;
  }
}

TEST_F(ShardServerTest, ARunIdentityMismatchRefusesToStartNamingTheField) {
  ScopedProcess first, second;
  int port = StartShard(0, WriteConfig("a.toml", "fp32"), &first);
  ASSERT_GT(port, 0);
  ShardChannel ch(ShardChannelOptions{.port = port});
  ASSERT_TRUE(WaitServing(ch, 0, first));
  // Same run id, another codec.
  ASSERT_GT(StartShard(1, WriteConfig("b.toml", "int8"), &second), 0);
  auto ended = second.Wait(std::chrono::seconds(60));
  ASSERT_OK(ended.status());
  EXPECT_EQ(ended->code, 1);
  std::string log = testing::ReadLogTail(second.log_path());
  EXPECT_THAT(log, HasSubstr("fedps-shard: error:"));
  EXPECT_THAT(log, HasSubstr("codec"));
  // Requests with another run's identity are refused too.
  auto st = ch.GetStatus();
  ASSERT_OK(st.status());
  rpc::PullRequest req;
  req.header = MakeHeader("other-run", st->layout_hash, 0, 0, "test");
  req.codec = "fp32";
  EXPECT_EQ(ch.Pull(req).status().code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(ch.last_error().code, rpc::ErrorCode::IDENTITY_MISMATCH);
}

}  // namespace
}  // namespace fedps
