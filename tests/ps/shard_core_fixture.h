// ShardCoreTest: the fixture of the in-process ShardCore tests (tests/ps/shard_core_test.cc,
// tests/ps/shard_divergence_test.cc): a real redis-server with the run initialised and one
// member ("alice"), shard options (2 shards of 1000 floats, 4 frames, SGD lr 1), and helpers
// that start cores, push, commit and pull.
#pragma once

#include "ps/shard_core.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <limits>
#include <span>

#include "common/metrics_log.h"
#include "compression/codec.h"
#include "ps/registry.h"
#include "tests/testing/process.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace shard_core_testing {

using ::testing::HasSubstr;
using testing::ScopedRedisServer;
using testing::ScopedTempDir;

#define ASSERT_CORE_OK(expr)                                                                      \
  do {                                                                                            \
    const ::fedps::CoreError ce_ = (expr);                                                        \
    ASSERT_TRUE(ce_.ok()) << #expr << " -> " << static_cast<int>(ce_.code) << " " << ce_.message; \
  } while (0)

inline constexpr int64_t kN = 1000;     // slice length of every shard
inline constexpr int64_t kFrame = 256;  // -> 4 frames, the last one short
inline constexpr int kShards = 2;
inline constexpr const char* kRun = "core-test";
inline constexpr const char* kLayout = "layout-hash-for-tests";

inline std::vector<float> InitSlice(int shard) {
  std::vector<float> v(kN);
  for (int64_t i = 0; i < kN; ++i)
    v[i] = 0.01f * static_cast<float>((i * 7 + shard * 13) % 101) - 0.5f;
  return v;
}

inline std::vector<float> Delta(int k, int shard) {
  std::vector<float> v(kN);
  for (int64_t i = 0; i < kN; ++i)
    v[i] = 0.001f * static_cast<float>((i * (k + 3) + shard) % 17) - 0.008f;
  return v;
}

inline CoreHeader Header(int shard) { return CoreHeader{kRun, kLayout, shard, 0, "test"}; }

class ShardCoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(redis_.Start());
    ropts_.port = redis_.port();
    ropts_.run_id = kRun;
    auto r = Registry::Connect(ropts_);
    ASSERT_OK(r.status());
    registry_ = std::move(r).value();
    RunIdentity id;
    id.model_preset = "test";
    id.layout_hash = kLayout;
    id.tokenizer_sha256 = "none";
    id.codec = "fp32";
    id.num_shards = kShards;
    ASSERT_OK(registry_->InitRun(id).status());
    auto epoch = registry_->Join("alice", ClientInfo{}, std::chrono::milliseconds(60000));
    ASSERT_OK(epoch.status());
    client_epoch_ = *epoch;
    CodecOptions co;
    co.kind = CodecKind::kFp32;
    co.chunk_elements = kFrame;
    auto codec = Codec::Create(co);
    ASSERT_OK(codec.status());
    codec_ = std::move(codec).value();
  }

  ShardCoreOptions Options(int shard) {
    ShardCoreOptions o;
    o.run_id = kRun;
    o.layout_hash = kLayout;
    o.shard_index = shard;
    o.num_shards = kShards;
    o.slice_begin = shard * kN;
    o.slice_elements = kN;
    o.dir = dir_.File("shard-" + std::to_string(shard));
    o.ps.frame_elements = kFrame;
    o.ps.optimizer = "sgd";
    o.ps.outer_lr = 1.0;
    o.ps.staleness = "constant";
    o.ps.max_staleness = 8;
    o.ps.checkpoint_every = 0;
    o.registry = ropts_;
    o.poll_ms = 20;
    o.init_slice = [shard]() -> StatusOr<std::vector<float>> { return InitSlice(shard); };
    return o;
  }

  // Registers the core's shard in the directory (stage marks are fenced by its epoch).
  int64_t RegisterInDirectory(const ShardCoreOptions& o) {
    auto reg = Registry::Connect(ropts_);
    EXPECT_TRUE(reg.ok()) << reg.status().ToString();
    if (!reg.ok()) return 0;
    auto epoch = (*reg)->RegisterShard({o.shard_index, "127.0.0.1:1", o.slice_begin, o.slice_begin + o.slice_elements, 1},
                                       std::chrono::hours(1));
    EXPECT_TRUE(epoch.ok()) << epoch.status().ToString();
    return epoch.ok() ? *epoch : 0;
  }

  std::unique_ptr<ShardCore> StartCore(ShardCoreOptions o) {
    auto core = ShardCore::Create(std::move(o));
    EXPECT_TRUE(core.ok()) << core.status().ToString();
    if (!core.ok()) return nullptr;
    Status s = (*core)->Start();
    EXPECT_TRUE(s.ok()) << s.ToString();
    (*core)->SetEpoch(RegisterInDirectory((*core)->options()));
    EXPECT_TRUE(testing::WaitFor([&] { return (*core)->GetStatus().state == ShardState::kServing; },
                                 std::chrono::seconds(10)));
    return std::move(core).value();
  }

  std::vector<std::string> Frames(const std::vector<float>& v) {
    auto f = codec_->Encode(std::span<const float>(v));
    EXPECT_TRUE(f.ok());
    return f.ok() ? *f : std::vector<std::string>{};
  }

  PushArgs Push(int shard, const std::string& id, int64_t base, int64_t frame,
                const std::string& bytes) {
    PushArgs a;
    a.header = Header(shard);
    a.update_id = id;
    a.client_id = "alice";
    a.client_epoch = client_epoch_;
    a.base_version = base;
    a.tokens = 1000;
    a.local_steps = 10;
    a.codec = "fp32";
    a.frame_index = frame;
    a.total_frames = (kN + kFrame - 1) / kFrame;
    a.frame_elements = kFrame;
    a.frame = bytes;
    return a;
  }

  // Pushes every frame of `delta`; returns the last answer.
  CoreError PushAll(ShardCore& core, int shard, const std::string& id, int64_t base,
                    const std::vector<float>& delta, PushResult* last) {
    auto frames = Frames(delta);
    for (size_t i = 0; i < frames.size(); ++i) {
      *last = PushResult();
      CoreError e = core.Push(Push(shard, id, base, static_cast<int64_t>(i), frames[i]), last);
      if (!e.ok()) return e;
    }
    return {};
  }

  // The staged files still being written (frames of updates being received), and their bytes.
  std::vector<std::string> FilesBeingWritten(ShardCore& core, int64_t* bytes = nullptr) {
    const std::string dir = JoinPath(core.options().dir, "staged");
    auto names = Env::Default()->ListDir(dir);
    EXPECT_TRUE(names.ok()) << names.status().ToString();
    std::vector<std::string> out;
    if (bytes) *bytes = 0;
    for (const std::string& n : names.ok() ? *names : std::vector<std::string>{}) {
      if (n.find(".tmp.") == std::string::npos) continue;
      out.push_back(n);
      auto size = Env::Default()->FileSize(JoinPath(dir, n));
      if (bytes && size.ok()) *bytes += *size;
    }
    return out;
  }

  StatusOr<int64_t> Commit(const std::string& id, int64_t base) {
    nlohmann::json meta = {{"base_version", base}, {"tokens", 1000}, {"local_steps", 10}};
    return registry_->CommitUpdate(id, "alice", client_epoch_, meta, kShards);
  }

  // Stages update k on both shards and commits it.
  int64_t StageAndCommit(std::vector<ShardCore*> cores, int k, int64_t base) {
    const std::string id = "alice/1/" + std::to_string(k);
    for (ShardCore* c : cores)
      EXPECT_TRUE(c->WaitForVersion(base, 10000));  // the client pulled `base`
    for (int s = 0; s < kShards; ++s) {
      PushResult r;
      CoreError e = PushAll(*cores[s], s, id, base, Delta(k, s), &r);
      EXPECT_TRUE(e.ok()) << e.message;
      EXPECT_EQ(r.state, UpdateState::kStaged);
    }
    auto seq = Commit(id, base);
    EXPECT_TRUE(seq.ok()) << seq.status().ToString();
    return seq.ok() ? *seq : -1;
  }

  std::vector<float> PullAll(ShardCore& core, int shard, int64_t* version,
                             std::optional<int64_t> pin = {}) {
    std::vector<float> out(kN);
    for (int64_t f = 0; f < (kN + kFrame - 1) / kFrame; ++f) {
      PullArgs a;
      a.header = Header(shard);
      a.codec = "fp32";
      a.frame_index = f;
      if (f > 0 || pin) a.version = pin ? *pin : *version;
      PullResult r;
      CoreError e = core.Pull(a, &r);
      EXPECT_TRUE(e.ok()) << e.message;
      if (!e.ok()) return {};
      if (f == 0 && !pin) *version = r.version;
      EXPECT_EQ(r.version, pin ? *pin : *version);
      EXPECT_TRUE(codec_->DecodeFrame(r.frame, std::span<float>(out)).ok());
    }
    return out;
  }

  ScopedRedisServer redis_;
  ScopedTempDir dir_;
  RegistryOptions ropts_;
  std::unique_ptr<Registry> registry_;
  int64_t client_epoch_ = 0;
  std::unique_ptr<Codec> codec_;
};

}  // namespace shard_core_testing
}  // namespace fedps
