// Commit-log trimming seen from the shards (docs/registry.md, "Trimming"): in-process
// ShardCores report their oldest kept checkpoint, the registry trims below it, a shard
// restarted after a crash still replays from its checkpoint to the head bit for bit, and a
// resend of an update whose record was trimmed is refused instead of staged again.
#include "tests/ps/shard_core_fixture.h"

namespace fedps {
namespace {

using namespace shard_core_testing;
using ::testing::HasSubstr;

// The slice of shard `s` after Nesterov (lr 1) stepped Delta(1..n, s) once each.
std::vector<float> Reference(int s, int n) {
  auto opt = OuterOptimizer::Create({.name = "nesterov", .lr = 1.0}, kN);
  EXPECT_TRUE(opt.ok());
  std::vector<float> x = InitSlice(s);
  for (int k = 1; k <= n; ++k) {
    auto d = Delta(k, s);
    EXPECT_TRUE((*opt)->Apply(std::span<float>(x), std::span<const float>(d), 1.0).ok());
  }
  return x;
}

TEST_F(ShardCoreTest, ATrimmedLogStillReplaysFromTheCheckpointAndRefusesTrimmedResends) {
  auto o0 = Options(0), o1 = Options(1);
  o0.ps.checkpoint_every = o1.ps.checkpoint_every = 2;
  o0.ps.optimizer = o1.ps.optimizer = "nesterov";  // stateful: the momentum must survive
  o0.ps.max_staleness = o1.ps.max_staleness =
      100;  // the resend below is not refused as stale first
  auto c0 = StartCore(o0);
  auto c1 = StartCore(o1);
  ASSERT_TRUE(c0 && c1);
  for (int k = 1; k <= 10; ++k) StageAndCommit({c0.get(), c1.get()}, k, k - 1);
  ASSERT_TRUE(c0->WaitForVersion(10, 10000) && c1->WaitForVersion(10, 10000));
  for (ShardCore* c : {c0.get(), c1.get()}) {
    // Checkpoints are written in the background; requests that arrive while one is being
    // written are served together at a later version, so which versions are kept depends on
    // timing: wait for the last one (v10) and for one kept besides v0.
    ASSERT_TRUE(testing::WaitFor(
        [&] {
          ShardStats st = c->Stats();
          return st.last_checkpoint_version >= 10 && st.oldest_checkpoint_version >= 2;
        },
        std::chrono::seconds(60)))
        << "last " << c->Stats().last_checkpoint_version << ", oldest " << c->Stats().oldest_checkpoint_version;
  }
  // Each shard reports its oldest kept checkpoint (keep 2), as its heartbeat does.
  int64_t oldest = kN;
  for (int s = 0; s < kShards; ++s) {
    ShardCore& c = s == 0 ? *c0 : *c1;
    ShardStats st = c.Stats();
    oldest = std::min(oldest, st.oldest_checkpoint_version);
    ASSERT_OK(registry_->ShardHeartbeat(s, c.GetStatus().epoch, &st));
  }
  auto trimmed = registry_->TrimLog(1000);
  ASSERT_OK(trimmed.status());
  EXPECT_EQ(trimmed->below, oldest);
  EXPECT_EQ(trimmed->trimmed, oldest - 1);
  EXPECT_EQ(registry_->LookupCommit("alice/1/1").status().code(), StatusCode::kOutOfRange);

  // A resend of a trimmed update: the shard forgot it (done_ keeps only the kept
  // checkpoints' replay log) and the registry refuses it; nothing is staged.
  auto frames = Frames(Delta(1, 1));
  PushResult r;
  CoreError e = c1->Push(Push(1, "alice/1/1", 0, 0, frames[0]), &r);
  EXPECT_EQ(e.code, ShardErrorCode::kStaleRefused) << e.message;
  EXPECT_THAT(e.message, HasSubstr("never committed again"));
  EXPECT_EQ(c1->GetStatus().staged_updates, 0);

  // Two more staged; shard 0 "crashes" (no drain) before they commit.
  for (int k = 11; k <= 12; ++k) {
    for (int s = 0; s < kShards; ++s) {
      ASSERT_CORE_OK(
          PushAll(s == 0 ? *c0 : *c1, s, "alice/1/" + std::to_string(k), 10, Delta(k, s), &r));
    }
  }
  c0->Stop();
  c0.reset();
  ASSERT_OK(Commit("alice/1/11", 10).status());
  ASSERT_OK(Commit("alice/1/12", 10).status());
  ASSERT_TRUE(c1->WaitForVersion(12, 10000));

  auto again = StartCore(o0);
  ASSERT_TRUE(again);
  ASSERT_TRUE(again->WaitForVersion(12, 10000));
  auto log = again->AppliedLog();
  ASSERT_FALSE(log.empty());
  EXPECT_GE(log.front().seq,
            oldest + 1);  // replayed from a kept checkpoint, above the trimmed part
  EXPECT_EQ(log.back().seq, 12);
  EXPECT_EQ(again->CurrentSlice().second, Reference(0, 12));  // bit for bit
  EXPECT_EQ(c1->CurrentSlice().second, Reference(1, 12));
}

}  // namespace
}  // namespace fedps
