#include "client/client_state.h"

#include <gtest/gtest.h>

#include "common/env.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

ClientState SampleState() {
  ClientState s;
  s.next_counter = 8;
  s.trainer_step = 350;
  LoaderState ls;
  ls.seed = 5;
  ls.epoch = 2;
  ls.cursor = 17;
  ls.sequences_per_epoch = 99;
  s.loader = ls;
  s.totals = {{"committed", 6}, {"tokens", 12345}};
  PendingUpdate p;
  p.update_id = "org-a/gpu0/12/7";
  p.client_epoch = 12;
  p.counter = 7;
  p.base_version = 40;
  p.pulled_versions = {40, 41};
  p.tokens = 4096;
  p.local_steps = 8;
  p.codec = "bf16";
  p.info = {{"train_loss", 3.25}};
  p.shards = {{0, 0, 3, 2, {"frame-0-0", std::string("frame\0-0-1", 10)}}, {1, 3, 2, 2, {"frame-1-0"}}};
  s.pending = p;
  return s;
}

TEST(ClientStateStore, CopyWithoutPendingKeepsEverythingElse) {
  const ClientState s = SampleState();
  const ClientState c = CopyWithoutPending(s);
  EXPECT_FALSE(c.pending.has_value());
  EXPECT_EQ(c.next_counter, s.next_counter);
  EXPECT_EQ(c.trainer_step, s.trainer_step);
  ASSERT_TRUE(c.loader.has_value());
  EXPECT_EQ(*c.loader, *s.loader);
  EXPECT_EQ(c.totals, s.totals);
}

TEST(ClientStateStore, EmptyFolderHasNoState) {
  testing::ScopedTempDir dir;
  auto store = ClientStateStore::Open(dir.File("state"));
  ASSERT_TRUE(store.ok()) << store.status().ToString();
  EXPECT_EQ((*store)->Load().status().code(), StatusCode::kNotFound);
}

TEST(ClientStateStore, RoundTripsEverythingARestartNeeds) {
  testing::ScopedTempDir dir;
  ClientState in = SampleState();
  {
    auto store = ClientStateStore::Open(dir.File("state"));
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->Save(in).ok());
  }
  auto store = ClientStateStore::Open(dir.File("state"));
  ASSERT_TRUE(store.ok());
  auto out = (*store)->Load();
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->next_counter, 8);
  EXPECT_EQ(out->trainer_step, 350);
  ASSERT_TRUE(out->loader.has_value());
  EXPECT_EQ(*out->loader, *in.loader);
  EXPECT_EQ(out->totals, in.totals);
  ASSERT_TRUE(out->pending.has_value());
  const PendingUpdate& p = *out->pending;
  EXPECT_EQ(p.update_id, "org-a/gpu0/12/7");
  EXPECT_EQ(p.client_epoch, 12);
  EXPECT_EQ(p.counter, 7);
  EXPECT_EQ(p.base_version, 40);
  EXPECT_EQ(p.pulled_versions, (std::vector<int64_t>{40, 41}));
  EXPECT_EQ(p.tokens, 4096);
  EXPECT_EQ(p.local_steps, 8);
  EXPECT_EQ(p.codec, "bf16");
  EXPECT_EQ(p.info["train_loss"], 3.25);
  ASSERT_EQ(p.shards.size(), 2u);
  EXPECT_EQ(p.shards[0].frames, in.pending->shards[0].frames);  // binary-safe
  EXPECT_EQ(p.shards[1].frames, in.pending->shards[1].frames);
  EXPECT_EQ(p.shards[1].slice_begin, 3);
  EXPECT_EQ(p.shards[1].frame_elements, 2);
}

std::vector<std::pair<std::string, torch::Tensor>> SampleOptimizer() {
  return {{"exp_avg", torch::arange(10, torch::kFloat32)},
          {"exp_avg_sq", torch::full({10}, 0.5f)},
          {"step", torch::tensor({350.0f})}};
}

// The folder holds one copy of each piece: after many cycles exactly state.json,
// pending.bin (while an update is pending), optimizer.safetensors and LOCK.
TEST(ClientStateStore, ManyCyclesKeepOneCopyOfEachFile) {
  testing::ScopedTempDir dir;
  auto store = ClientStateStore::Open(dir.File("s"));
  ASSERT_TRUE(store.ok());
  ClientState s = SampleState();
  for (int cycle = 0; cycle < 20; ++cycle) {
    s.pending->update_id = "org-a/gpu0/12/" + std::to_string(100 + cycle);
    s.pending->shards[0].frames[0] = std::string(1000 + cycle, 'x');
    ASSERT_TRUE((*store)->Save(s).ok());
    if (cycle % 3 == 0) {
      ASSERT_TRUE((*store)->SaveOptimizer(SampleOptimizer()).ok());
    }
    ClientState committed = s;
    committed.pending.reset();
    ASSERT_TRUE((*store)->Save(committed).ok());
  }
  ASSERT_TRUE((*store)->Save(s).ok());  // one left pending
  auto names = Env::Default()->ListDir(dir.File("s"));
  ASSERT_TRUE(names.ok());
  EXPECT_EQ(*names, (std::vector<std::string>{"LOCK", "optimizer.safetensors", "pending.bin", "state.json"}));
  store->reset();
  auto reopened = ClientStateStore::Open(dir.File("s"));
  ASSERT_TRUE(reopened.ok());
  auto out = (*reopened)->Load();
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(out->pending->update_id, "org-a/gpu0/12/119");
  EXPECT_EQ(out->pending->shards[0].frames[0], std::string(1019, 'x'));
  auto opt = (*reopened)->LoadOptimizer(torch::kCPU);
  ASSERT_TRUE(opt.ok()) << opt.status().ToString();
  ASSERT_EQ(opt->size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::equal((*opt)[i].second, SampleOptimizer()[i].second));
  // Clearing the pending update removes its frames.
  out->pending.reset();
  ASSERT_TRUE((*reopened)->Save(*out).ok());
  EXPECT_FALSE(Env::Default()->Exists(dir.File("s/pending.bin")));
}

TEST(ClientStateStore, ANewPendingUpdateWaitsForTheOldOne) {
  testing::ScopedTempDir dir;
  auto store = ClientStateStore::Open(dir.File("s"));
  ASSERT_TRUE(store.ok());
  ClientState s = SampleState();
  ASSERT_TRUE((*store)->Save(s).ok());
  ASSERT_TRUE((*store)->Save(s).ok());  // the same pending update again: fine
  s.pending->update_id = "org-a/gpu0/12/8";
  EXPECT_EQ((*store)->Save(s).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ((*store)->LoadOptimizer(torch::kCPU).status().code(), StatusCode::kNotFound);
}

TEST(ClientStateStore, FreeBytesIsPositive) {
  testing::ScopedTempDir dir;
  auto store = ClientStateStore::Open(dir.File("s"));
  ASSERT_TRUE(store.ok());
  auto free = (*store)->FreeBytes();
  ASSERT_TRUE(free.ok()) << free.status().ToString();
  EXPECT_GT(*free, 0);
}

TEST(ClientStateStore, OneProcessAtATime) {
  testing::ScopedTempDir dir;
  auto a = ClientStateStore::Open(dir.File("s"));
  ASSERT_TRUE(a.ok());
  // flock locks belong to the open file description: a second open in this process
  // conflicts just as another process would.
  auto b = ClientStateStore::Open(dir.File("s"));
  EXPECT_EQ(b.status().code(), StatusCode::kFailedPrecondition);
  a->reset();
  EXPECT_TRUE(ClientStateStore::Open(dir.File("s")).ok());
}

TEST(ClientStateStore, CorruptPendingFramesAreDataLossNotGarbage) {
  testing::ScopedTempDir dir;
  {
    auto store = ClientStateStore::Open(dir.File("s"));
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->Save(SampleState()).ok());
  }
  auto names = Env::Default()->ListDir(dir.File("s"));
  ASSERT_TRUE(names.ok());
  for (const auto& n : *names) {
    if (n != "pending.bin") continue;
    auto bytes = Env::Default()->ReadFile(dir.File("s/" + n));
    ASSERT_TRUE(bytes.ok());
    std::string b = *bytes;
    b[b.size() - 2] ^= 0x40;
    ASSERT_TRUE(Env::Default()->WriteFileAtomic(dir.File("s/" + n), b).ok());
  }
  auto store = ClientStateStore::Open(dir.File("s"));
  ASSERT_TRUE(store.ok());
  EXPECT_EQ((*store)->Load().status().code(), StatusCode::kDataLoss);
}

TEST(ClientStateStore, ACrashBeforeStateJsonKeepsThePreviousState) {
  testing::ScopedTempDir dir;
  ClientState s = SampleState();
  s.pending.reset();
  {
    auto store = ClientStateStore::Open(dir.File("s"));
    ASSERT_TRUE(store.ok());
    ASSERT_TRUE((*store)->Save(s).ok());
  }
  // A new update's frames written, state.json not yet replaced (the crash).
  ASSERT_TRUE(Env::Default()->WriteFileAtomic(dir.File("s/pending.bin"), "torn").ok());
  auto store = ClientStateStore::Open(dir.File("s"));
  ASSERT_TRUE(store.ok());
  auto out = (*store)->Load();
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_FALSE(out->pending.has_value());
  EXPECT_EQ(out->next_counter, 8);
  // The next save of a pending update replaces the leftover with sound frames.
  ClientState next = SampleState();
  next.next_counter = 9;
  ASSERT_TRUE((*store)->Save(next).ok());
  auto again = (*store)->Load();
  ASSERT_TRUE(again.ok()) << again.status().ToString();
  EXPECT_EQ(again->next_counter, 9);
  EXPECT_EQ(again->pending->shards[0].frames, next.pending->shards[0].frames);
}

}  // namespace
}  // namespace fedps
