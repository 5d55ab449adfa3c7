// The fixture of the security tests (label security): a real redis-server and one real
// fedps-shard process (num_shards 1, the tiny preset, fp32 frames) with chosen [limits] and
// flags, a ShardChannel to it, and helpers to join, push, commit and pull.
#pragma once

#include <gtest/gtest.h>

#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "common/env.h"
#include "compression/codec.h"
#include "ps/registry.h"
#include "ps/rpc/shard_types.h"
#include "ps/shard_channel.h"
#include "ps/shard_tls.h"
#include "tests/testing/process.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/temp_dir.h"

namespace fedps {

using testing::ProcessOptions;
using testing::ScopedProcess;
using testing::ScopedRedisServer;
using testing::ScopedTempDir;
using testing::WaitFor;

inline constexpr int64_t kFrame = 16384;
inline constexpr auto kLongWait = std::chrono::seconds(60);
inline const char* kRun = "sec-test";

// Pseudo-words, enough for a 300-piece BPE vocabulary.
inline std::string Corpus() {
  std::string text;
  uint64_t x = 99;
  const char* letters = "etaoinshrdlucmfwypvbgkqjxz";
  for (int line = 0; line < 2000; ++line) {
    for (int w = 0; w < 10; ++w) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      int len = 2 + static_cast<int>((x >> 33) % 6);
      for (int c = 0; c < len; ++c) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        text += letters[(x >> 35) % (c == 0 ? 8 : 26)];
      }
      text += ' ';
    }
    text += '\n';
  }
  return text;
}

class ShardFixture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    tokdir_ = new ScopedTempDir();
    ASSERT_OK(Env::Default()->WriteFileAtomic(tokdir_->File("corpus.txt"), Corpus()));
    auto trained =
        testing::RunLogged({testing::BinaryDir() + "/bin/fedps-ctl", "tokenizer", "train",
                            "--input", tokdir_->File("corpus.txt"), "--vocab-size", "300", "--out",
                            tokdir_->File("tokenizer.model")},
                           tokdir_->File("train.log"), "", std::chrono::seconds(120));
    ASSERT_TRUE(trained.ok() && trained->success())
        << testing::ReadLogTail(tokdir_->File("train.log"));
  }
  static void TearDownTestSuite() {
    delete tokdir_;
    tokdir_ = nullptr;
  }

  void SetUp() override {
    ASSERT_OK(redis_.Start());
    ropts_.port = redis_.port();
    ropts_.run_id = kRun;
  }

  // Starts one fedps-shard (num_shards 1) with these [limits] lines (and ps_lines_ in its
// [ps] section); waits until SERVING.
  void StartShard(const std::string& limits) {
    const std::string config = dir_.File("run.toml");
    std::ofstream(config) << "[run]\nid = \"" << kRun << "\"\ndir = \"" << dir_.File("run")
                          << "\"\nseed = 5\n"
                          << "[model]\npreset = \"tiny\"\n"
                          << "[data]\ntokenizer = \"" << tokdir_->File("tokenizer.model") << "\"\n"
                          << "[compression]\ncodec = \"fp32\"\nthreads = 1\n"
                          << "[ps]\nnum_shards = 1\nredis = \"127.0.0.1:" << redis_.port() << "\"\n"
                          << "base_port = 0\nframe_elements = " << kFrame << "\n"
                          << "optimizer = \"sgd\"\nouter_lr = 1.0\nstaleness = \"constant\"\n"
                          << "max_staleness = 16\ncheckpoint_every = 0\n"
                          << ps_lines_ << "[limits]\n"
                          << limits;
    auto port = testing::PickFreePort();
    ASSERT_OK(port.status());
    port_ = *port;
    ASSERT_NO_FATAL_FAILURE(Launch());
  }

  // Starts (or, after a kill, restarts) the shard of StartShard on its port and folder.
  void Launch() {
    ProcessOptions po;
    po.argv = {testing::BinaryDir() + "/bin/fedps-shard",
               "--config",
               dir_.File("run.toml"),
               "--shard",
               "0",
               "--port",
               std::to_string(port_)};
    po.argv.insert(po.argv.end(), shard_args_.begin(), shard_args_.end());
    po.log_path = dir_.File("shard.log");
    auto p = ScopedProcess::Start(po);
    ASSERT_OK(p.status());
    shard_ = std::move(p).value();
    channel_ = std::make_unique<ShardChannel>(ShardChannelOptions{.port = port_, .tls = channel_tls_});
    bool serving = WaitFor(
        [&] {
          auto s = channel_->GetStatus();
          return s.ok() && s->state == rpc::ShardState::SERVING;
        },
        kLongWait, std::chrono::milliseconds(50));
    ASSERT_TRUE(serving) << testing::ReadLogTail(shard_.log_path());
    auto s = channel_->GetStatus();
    ASSERT_OK(s.status());
    status_ = *s;
    auto reg = Registry::Connect(ropts_);
    ASSERT_OK(reg.status());
    registry_ = std::move(reg).value();
  }

  int64_t JoinAs(const std::string& name) {
    auto epoch = registry_->Join(name, ClientInfo{}, std::chrono::milliseconds(120000));
    EXPECT_TRUE(epoch.ok()) << epoch.status().ToString();
    return epoch.ok() ? *epoch : 0;
  }

  std::vector<std::string> Frames(const std::vector<float>& delta) {
    auto codec = Codec::Create(
        CodecOptions{.kind = CodecKind::kFp32, .chunk_elements = status_.frame_elements});
    EXPECT_TRUE(codec.ok());
    auto frames = (*codec)->Encode(std::span<const float>(delta));
    EXPECT_TRUE(frames.ok());
    return frames.ok() ? *frames : std::vector<std::string>{};
  }

  rpc::PushRequest Request(const std::string& id, const std::string& client, int64_t epoch,
                           int64_t frame_index, std::string frame) {
    rpc::PushRequest req;
    req.header = MakeHeader(status_.run_id, status_.layout_hash, 0, status_.epoch, client);
    req.update_id = id;
    req.client_id = client;
    req.client_epoch = epoch;
    req.base_version = 0;
    req.tokens = 4096;
    req.local_steps = 8;
    req.codec = "fp32";
    req.frame_index = frame_index;
    req.total_frames =
        (status_.slice_elements + status_.frame_elements - 1) / status_.frame_elements;
    req.frame_elements = status_.frame_elements;
    req.frame = std::move(frame);
    return req;
  }

  // Pushes every frame; the last answer (or the first failure).
  StatusOr<rpc::PushResponse> PushAll(const std::string& id, const std::string& client,
                                      int64_t epoch, const std::vector<float>& delta) {
    std::vector<std::string> frames = Frames(delta);
    StatusOr<rpc::PushResponse> last = Internal("no frames");
    for (size_t f = 0; f < frames.size(); ++f) {
      last = channel_->Push(Request(id, client, epoch, static_cast<int64_t>(f), frames[f]));
      if (!last.ok()) return last;
    }
    return last;
  }

  // Commits `id` for `client` and waits until the shard applied it.
  void CommitAndWait(const std::string& id, const std::string& client, int64_t epoch,
                     int64_t version) {
    nlohmann::json meta = {{"base_version", 0}, {"tokens", 4096}, {"local_steps", 8}};
    auto seq = registry_->CommitUpdate(id, client, epoch, meta, 1);
    ASSERT_OK(seq.status());
    rpc::CommitNotice n;
    n.header = MakeHeader(status_.run_id, status_.layout_hash, 0, status_.epoch, client);
    n.update_id = id;
    n.seq = *seq;
    ASSERT_OK(channel_->CommitNotify(n));
    ASSERT_TRUE(WaitFor(
        [&] {
          auto s = channel_->GetStatus();
          return s.ok() && s->version >= version;
        },
        kLongWait, std::chrono::milliseconds(20)))
        << testing::ReadLogTail(shard_.log_path());
  }

  std::vector<float> Pull(int64_t* version) {
    std::vector<float> out(static_cast<size_t>(status_.slice_elements));
    auto codec = Codec::Create(
        CodecOptions{.kind = CodecKind::kFp32, .chunk_elements = status_.frame_elements});
    EXPECT_TRUE(codec.ok());
    const int64_t frames =
        (status_.slice_elements + status_.frame_elements - 1) / status_.frame_elements;
    for (int64_t f = 0; f < frames; ++f) {
      rpc::PullRequest req;
      req.header = MakeHeader(status_.run_id, status_.layout_hash, 0, status_.epoch, "test");
      req.codec = "fp32";
      req.frame_index = f;
      if (f > 0) req.__set_version(*version);
      auto r = channel_->Pull(req);
      EXPECT_TRUE(r.ok()) << r.status().ToString();
      if (!r.ok()) return {};
      if (f == 0) *version = r->version;
      EXPECT_TRUE((*codec)->DecodeFrame(r->frame, std::span<float>(out)).ok());
    }
    return out;
  }

  rpc::ShardStatus Status() {
    auto s = channel_->GetStatus();
    EXPECT_TRUE(s.ok()) << s.status().ToString();
    return s.ok() ? *s : rpc::ShardStatus{};
  }

  // The ShardError code of the last failed call ("none" for a transport failure).
  std::string LastCode() {
    const auto& code = channel_->last_error().code;
    return code ? ShardErrorCodeName(*code) : "none";
  }

  static inline ScopedTempDir* tokdir_ = nullptr;
  ScopedRedisServer redis_;
  ScopedTempDir dir_;
  RegistryOptions ropts_;
  int port_ = 0;
  std::vector<std::string> shard_args_;             // more fedps-shard flags (TLS)
  std::string ps_lines_;                            // more [ps] lines ("key = value\n" each)
  std::shared_ptr<TlsSocketFactory> channel_tls_;  // channel_'s TLS (null: plaintext)
  ScopedProcess shard_;
  std::unique_ptr<ShardChannel> channel_;
  rpc::ShardStatus status_;
  std::unique_ptr<Registry> registry_;
};


}  // namespace fedps
