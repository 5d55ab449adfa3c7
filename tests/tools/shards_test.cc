// `fedps-ctl checkpoint` and `fedps-ctl pull-model` against a real federation: a private
// redis-server and two fedps-shard processes (tiny preset) on data prepared by
// `fedps-ctl prepare`. Checkpoint reports both shards with a version and a path that
// exists; pull-model assembles version 0 bit for bit equal to Model::Create(tiny, cpu,
// seed), and after a committed update waits for it (--version-min) and assembles the
// updated model; `fedps-ctl eval` works on the result; with a shard killed both commands
// fail with one readable line naming it; a foreign tokenizer is refused.
#include <gtest/gtest.h>

#include <csignal>
#include <filesystem>
#include <fstream>
#include <span>

#include "common/env.h"
#include "compression/codec.h"
#include "model/checkpoint.h"
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

namespace fs = std::filesystem;
using testing::ProcessOptions;
using testing::ScopedProcess;
using testing::ScopedRedisServer;
using testing::ScopedTempDir;
using testing::WaitFor;

constexpr int kShards = 2;
constexpr uint64_t kSeed = 11;
constexpr const char* kRun = "shards-ctl";

// fedps-ctl with stdout and stderr in files of their own under `dir`.
testing::CtlResult Ctl(const std::string& args, const std::string& dir) {
  static int n = 0;
  ++n;
  return testing::RunCtl(args, dir + "/ctl-" + std::to_string(n) + ".out", dir + "/ctl-" + std::to_string(n) + ".err");
}

// Lines of `text` that contain `needle`.
int CountLines(const std::string& text, const std::string& needle) {
  int n = 0;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (text.substr(start, end - start).find(needle) != std::string::npos) ++n;
    start = end + 1;
  }
  return n;
}

// Pseudo-word documents (40 of 80 lines), enough for a small BPE vocabulary and a
// validation split.
void WriteCorpus(const std::string& dir) {
  fs::create_directories(dir);
  const std::string text = testing::PseudoWordLines(2024, 40 * 80);
  size_t begin = 0;
  for (int doc = 0; doc < 40; ++doc) {
    size_t end = begin;
    for (int line = 0; line < 80; ++line) end = text.find('\n', end) + 1;
    std::ofstream(dir + "/doc-" + std::to_string(doc) + ".txt") << text.substr(begin, end - begin);
    begin = end;
  }
}

class ShardCommandsTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new ScopedTempDir();
    WriteCorpus(data_->File("corpus/words"));
    testing::CtlResult r = Ctl("prepare --input words=" + data_->File("corpus/words") +
                       " --vocab-size 400 --val-fraction 0.2 --out " + data_->File("data"),
                   data_->path());
    ASSERT_EQ(r.code, 0) << r.out << r.err;
  }
  static void TearDownTestSuite() {
    delete data_;
    data_ = nullptr;
  }

  void SetUp() override {
    for (const char* b : {"fedps-ctl", "fedps-shard"}) {
      if (!fs::exists(testing::BinPath(b))) GTEST_SKIP() << testing::BinPath(b) << " is not built";
    }
    ASSERT_TRUE(fs::exists(data_->File("data/tokenizer.model")));
    ASSERT_OK(redis_.Start());
    config_ = dir_.File("run.toml");
    std::ofstream(config_) << "[run]\nid = \"" << kRun << "\"\ndir = \"" << dir_.File("run")
                           << "\"\nseed = " << kSeed << "\n[model]\npreset = \"tiny\"\n"
                           << "[data]\nprepared = \"" << data_->File("data") << "\"\n"
                           << "[compression]\ncodec = \"fp32\"\nthreads = 1\n"
                           << "[ps]\nnum_shards = " << kShards
                           << "\nredis = \"127.0.0.1:" << redis_.port() << "\"\n"
                           << "base_port = 0\nframe_elements = 16384\n"
                           << "optimizer = \"sgd\"\nouter_lr = 1.0\nbuffer_size = 1\n"
                           << "staleness = \"constant\"\nmax_staleness = 16\n"
                           << "shard_lease_ms = 3000\n";
    for (int i = 0; i < kShards; ++i) {
      auto port = testing::PickFreePort();
      ASSERT_OK(port.status());
      ProcessOptions po;
      po.argv = {testing::BinPath("fedps-shard"), "--config",           config_, "--shard", std::to_string(i),
                 "--port",           std::to_string(*port)};
      po.log_path = dir_.File("shard-" + std::to_string(i) + ".log");
      auto p = ScopedProcess::Start(po);
      ASSERT_OK(p.status());
      procs_[i] = std::move(p).value();
      channels_[i] = std::make_unique<ShardChannel>(ShardChannelOptions{.port = *port});
    }
    for (int i = 0; i < kShards; ++i) {
      bool serving = WaitFor(
          [&] {
            auto s = channels_[i]->GetStatus();
            return s.ok() && s->state == rpc::ShardState::SERVING;
          },
          std::chrono::seconds(60), std::chrono::milliseconds(50));
      ASSERT_TRUE(serving) << testing::ReadLogTail(procs_[i].log_path());
      auto s = channels_[i]->GetStatus();
      ASSERT_OK(s.status());
      status_[i] = *s;
    }
  }

  RegistryOptions Options() const {
    RegistryOptions o;
    o.port = redis_.port();
    o.run_id = kRun;
    return o;
  }

  // The initial model, as the shards build it.
  std::unique_ptr<Model> InitialModel() {
    auto tok = Tokenizer::Load(data_->File("data/tokenizer.model"));
    EXPECT_TRUE(tok.ok());
    ModelOptions mo;
    mo.preset = "tiny";
    auto mc = ResolveModelConfig(mo, (*tok)->vocab_size());
    EXPECT_TRUE(mc.ok());
    auto model = Model::Create(*mc, torch::kCPU, kSeed);
    EXPECT_TRUE(model.ok());
    return std::move(model).value();
  }

  // Stages update `id` with slice `delta` on shard i (fp32 frames).
  void Stage(int i, const std::string& id, int64_t client_epoch, const std::vector<float>& delta) {
    const rpc::ShardStatus& st = status_[i];
    auto codec =
        Codec::Create(CodecOptions{.kind = CodecKind::kFp32, .chunk_elements = st.frame_elements});
    ASSERT_OK(codec.status());
    auto frames = (*codec)->Encode(std::span<const float>(delta));
    ASSERT_OK(frames.status());
    int state = 0;
    for (size_t f = 0; f < frames->size(); ++f) {
      rpc::PushRequest req;
      req.header = MakeHeader(st.run_id, st.layout_hash, i, st.epoch, "test");
      req.update_id = id;
      req.client_id = "alice";
      req.client_epoch = client_epoch;
      req.base_version = 0;
      req.tokens = 1000;
      req.local_steps = 1;
      req.codec = "fp32";
      req.frame_index = static_cast<int64_t>(f);
      req.total_frames = static_cast<int64_t>(frames->size());
      req.frame_elements = st.frame_elements;
      req.frame = (*frames)[f];
      auto r = channels_[i]->Push(req);
      ASSERT_OK(r.status());
      state = r->state;
    }
    EXPECT_EQ(state, rpc::UpdateState::STAGED);
  }

  static ScopedTempDir* data_;
  ScopedRedisServer redis_;
  ScopedTempDir dir_;
  std::string config_;
  ScopedProcess procs_[kShards];
  std::unique_ptr<ShardChannel> channels_[kShards];
  rpc::ShardStatus status_[kShards];
};

ScopedTempDir* ShardCommandsTest::data_ = nullptr;

TEST_F(ShardCommandsTest, CheckpointAndPullModelOfALiveFederation) {
  // checkpoint: both shards, version 0, a folder that exists.
  auto ck = Ctl("checkpoint --json --config " + config_, dir_.path());
  ASSERT_EQ(ck.code, 0) << ck.out << ck.err;
  auto j = nlohmann::json::parse(ck.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << ck.out;
  EXPECT_TRUE(j["ok"].get<bool>());
  ASSERT_EQ(j["shards"].size(), static_cast<size_t>(kShards));
  for (int i = 0; i < kShards; ++i) {
    const auto& s = j["shards"][i];
    EXPECT_EQ(s["index"], i);
    EXPECT_TRUE(s["ok"].get<bool>()) << s.dump();
    EXPECT_EQ(s["version"], 0);
    ASSERT_TRUE(s["path"].is_string()) << s.dump();
    EXPECT_TRUE(fs::is_directory(s["path"].get<std::string>())) << s.dump();
  }
  auto table =
      Ctl("checkpoint --redis 127.0.0.1:" + std::to_string(redis_.port()) + " --run " + kRun,
          dir_.path());
  ASSERT_EQ(table.code, 0) << table.out << table.err;
  EXPECT_EQ(CountLines(table.out, "checkpoints"), kShards) << table.out;

  // pull-model at version 0: the initial model, bit for bit; eval and a HF export work.
  const std::string out = dir_.File("pulled");
  auto pm =
      Ctl("pull-model --json --config " + config_ + " --out " + out + " --hf " + dir_.File("hf"),
          dir_.path());
  ASSERT_EQ(pm.code, 0) << pm.out << pm.err;
  EXPECT_NE(pm.err.find("shard 0 v0, shard 1 v0"), std::string::npos) << pm.err;
  auto ckpt = LoadCheckpoint(out, /*with_optimizer=*/false);
  ASSERT_OK(ckpt.status());
  EXPECT_EQ(ckpt->step, 0);
  EXPECT_EQ(ckpt->layout_hash, status_[0].layout_hash);
  ASSERT_EQ(ckpt->state["shard_versions"].size(), static_cast<size_t>(kShards));
  EXPECT_EQ(ckpt->state["shard_versions"][1]["version"], 0);
  auto initial = InitialModel();
  ASSERT_TRUE(initial);
  auto pulled = ModelFromCheckpoint(*ckpt, torch::kCPU);
  ASSERT_OK(pulled.status());
  EXPECT_TRUE(torch::equal((*pulled)->flat_params(), initial->flat_params()));
  for (const auto& [name, t] : initial->NamedParameters()) {
    ASSERT_TRUE(ckpt->params.count(name)) << name;
    EXPECT_TRUE(torch::equal(ckpt->params.at(name), t)) << name;
  }
  EXPECT_TRUE(fs::exists(dir_.File("hf/model.safetensors")));
  EXPECT_TRUE(fs::exists(dir_.File("hf/config.json")));
  auto ev = Ctl("eval --json --checkpoint " + out + " --data " + data_->File("data") +
                      " --device cpu --batches 1 --batch 2 --seq-len 32",
                  dir_.path());
  ASSERT_EQ(ev.code, 0) << ev.out << ev.err;
  auto ej = nlohmann::json::parse(ev.out, nullptr, false);
  ASSERT_FALSE(ej.is_discarded()) << ev.out;
  EXPECT_EQ(ej["step"], 0);

  // One committed update (SGD lr 1: x1 = x0 - delta); pull-model --version-min 1 sees it.
  auto reg = Registry::Connect(Options());
  ASSERT_OK(reg.status());
  auto epoch = (*reg)->Join("alice", ClientInfo{}, std::chrono::milliseconds(60000));
  ASSERT_OK(epoch.status());
  const std::string id = "alice/" + std::to_string(*epoch) + "/1";
  torch::Tensor x0 = initial->flat_params().contiguous();
  std::vector<float> want(x0.data_ptr<float>(), x0.data_ptr<float>() + x0.numel());
  for (int i = 0; i < kShards; ++i) {
    std::vector<float> delta(static_cast<size_t>(status_[i].slice_elements));
    for (size_t k = 0; k < delta.size(); ++k) {
      delta[k] = 1e-3f * static_cast<float>(static_cast<int64_t>((k * 7 + i) % 13) - 6);
      want[status_[i].slice_begin + k] -= delta[k];
    }
    Stage(i, id, *epoch, delta);
  }
  auto seq = (*reg)->CommitUpdate(
      id, "alice", *epoch, {{"base_version", 0}, {"tokens", 1000}, {"local_steps", 1}}, kShards);
  ASSERT_OK(seq.status());
  ASSERT_EQ(*seq, 1);
  auto pm1 =
      Ctl("pull-model --config " + config_ + " --out " + out + " --version-min 1 --wait-s 60",
          dir_.path());
  ASSERT_EQ(pm1.code, 0) << pm1.out << pm1.err;
  auto ckpt1 = LoadCheckpoint(out, false);
  ASSERT_OK(ckpt1.status());
  EXPECT_EQ(ckpt1->step, 1);
  auto m1 = ModelFromCheckpoint(*ckpt1, torch::kCPU);
  ASSERT_OK(m1.status());
  torch::Tensor got = (*m1)->flat_params().contiguous();
  ASSERT_EQ(got.numel(), static_cast<int64_t>(want.size()));
  const float* g = got.data_ptr<float>();
  for (size_t k = 0; k < want.size(); ++k) ASSERT_NEAR(g[k], want[k], 1e-6f) << "element " << k;
  EXPECT_TRUE(fs::is_directory(out + "/step-00000000"));  // earlier pulls are kept by default

  // A tokenizer that is not the run's is refused.
  ASSERT_OK(Env::Default()->WriteFileAtomic(dir_.File("other.model"), "not the tokenizer"));
  auto bad = Ctl("pull-model --config " + config_ + " --out " + dir_.File("x") + " --tokenizer " +
                       dir_.File("other.model"),
                   dir_.path());
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.err.find("sha256"), std::string::npos) << bad.err;
  EXPECT_FALSE(fs::exists(dir_.File("x")));
}

TEST_F(ShardCommandsTest, AKilledShardFailsBothCommandsWithOneLineNamingIt) {
  ASSERT_OK(procs_[1].Kill());
  const std::string dead = "127.0.0.1:" + std::to_string(channels_[1]->options().port);

  auto ck = Ctl("checkpoint --config " + config_, dir_.path());
  EXPECT_EQ(ck.code, 1) << ck.out << ck.err;
  EXPECT_EQ(CountLines(ck.err, "error"), 1) << ck.err;
  EXPECT_NE(ck.err.find("fedps-ctl checkpoint: error: checkpoint failed on 1 shard: shard 1 (" +
                        dead + ")"),
            std::string::npos)
      << ck.err;
  EXPECT_EQ(ck.err.find("terminate"), std::string::npos) << ck.err;
  EXPECT_EQ(CountLines(ck.out, "FAILED"), 1)
      << ck.out;  // the table still shows shard 0's checkpoint
  EXPECT_EQ(CountLines(ck.out, "checkpoints"), 1) << ck.out;

  auto js = Ctl("checkpoint --json --config " + config_, dir_.path());
  EXPECT_EQ(js.code, 1);
  auto j = nlohmann::json::parse(js.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << js.out;
  EXPECT_FALSE(j["ok"].get<bool>());
  EXPECT_TRUE(j["shards"][0]["ok"].get<bool>());
  EXPECT_FALSE(j["shards"][1]["ok"].get<bool>());
  EXPECT_TRUE(j["shards"][1]["error"].is_string());

  auto pm = Ctl("pull-model --config " + config_ + " --out " + dir_.File("pulled"), dir_.path());
  EXPECT_EQ(pm.code, 1) << pm.out << pm.err;
  EXPECT_EQ(CountLines(pm.err, "error"), 1) << pm.err;
  EXPECT_NE(
      pm.err.find("fedps-ctl pull-model: error: pull failed on 1 shard: shard 1 (" + dead + ")"),
      std::string::npos)
      << pm.err;
  EXPECT_FALSE(fs::exists(dir_.File("pulled")));

  // Once the lease lapsed the directory itself says so.
  ASSERT_TRUE(WaitFor(
      [&] {
        auto reg = Registry::Connect(Options());
        if (!reg.ok()) return false;
        auto shards = (*reg)->Shards();
        return shards.ok() && shards->size() == 2 && !(*shards)[1].alive;
      },
      std::chrono::seconds(20), std::chrono::milliseconds(200)));
  auto late =
      Ctl("pull-model --config " + config_ + " --out " + dir_.File("pulled"), dir_.path());
  EXPECT_EQ(late.code, 1);
  EXPECT_NE(late.err.find("shard 1 (" + dead + "): lease expired"), std::string::npos) << late.err;
}

}  // namespace
}  // namespace fedps
