// SnapshotStore (ps/snapshots.h) on a manual clock: a finished pull releases its version
// (after the short grace), an unfinished one keeps it for the TTL after its latest frame,
// a slow pull is not evicted by fast ones that finished, and the buffer of a released
// version is kept as the spare the next copy-on-write uses.
#include "ps/snapshots.h"

#include <gtest/gtest.h>

#include "compression/codec.h"

namespace fedps {
namespace {

constexpr int64_t kElements = 1000;
constexpr int64_t kFrames = 4;  // 250 elements each
constexpr int64_t kTtlMs = 30000;

class SnapshotStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::map<CodecKind, std::unique_ptr<Codec>> codecs;
    auto codec = Codec::Create(CodecOptions{.kind = CodecKind::kFp32, .chunk_elements = kElements / kFrames});
    ASSERT_TRUE(codec.ok()) << codec.status().ToString();
    codecs[CodecKind::kFp32] = std::move(codec).value();
    SnapshotStore::Options o;
    o.slice_elements = kElements;
    o.total_frames = kFrames;
    o.snapshot_ttl_ms = kTtlMs;
    o.max_pinned_snapshots = 2;
    o.copy_threads = 1;
    store_ = std::make_unique<SnapshotStore>(o, std::move(codecs), &clock_);
    store_->Reset(0, std::vector<float>(kElements, 0.0f));
  }

  // Applies one more version: every value + 1.
  void Apply(int64_t version) {
    std::span<float> m = store_->BeginWrite();
    for (float& x : m) x += 1.0f;
    store_->Publish(version);
  }

  // Pulls frames [first, last] of `version` (nullopt: the current one) as `who`; returns
  // the version pinned (-1 when it was no longer kept).
  int64_t PullFrames(const std::string& who, std::optional<int64_t> version, int64_t first, int64_t last) {
    int64_t v = -1;
    for (int64_t f = first; f <= last; ++f) {
      auto pin = store_->Pin(f == 0 ? version : std::optional<int64_t>(v >= 0 ? v : *version), who, f);
      if (!pin.snapshot) return -1;
      v = pin.version;
      auto frame = store_->Frame(pin.snapshot, CodecKind::kFp32, f);
      EXPECT_TRUE(frame.ok()) << frame.status().ToString();
    }
    return v;
  }

  ManualClock clock_{1'000'000};
  std::unique_ptr<SnapshotStore> store_;
};

TEST_F(SnapshotStoreTest, AFinishedPullReleasesItsVersionAfterTheGrace) {
  ASSERT_EQ(PullFrames("alice", std::nullopt, 0, kFrames - 1), 0);
  Apply(1);  // alice's pin (grace) makes version 0 a kept older snapshot
  EXPECT_EQ(store_->pinned_count(), 1);
  clock_.Advance(SnapshotStore::kFinishedPullGraceUs + 1);
  // The next pin expires it: version 0 is gone long before the TTL.
  EXPECT_EQ(store_->Pin(0, "bob", 1).snapshot, nullptr);
  EXPECT_EQ(store_->pinned_count(), 0);
  EXPECT_TRUE(store_->has_spare());
}

TEST_F(SnapshotStoreTest, AnUnfinishedPullKeepsItsVersionForTheTtl) {
  ASSERT_EQ(PullFrames("alice", std::nullopt, 0, 1), 0);  // frames 0 and 1 of 4
  Apply(1);
  Apply(2);
  clock_.Advance((kTtlMs - 1) * 1000);
  EXPECT_EQ(PullFrames("alice", 0, 2, kFrames - 1), 0);  // continues: version 0 still kept
  // Past the TTL of an abandoned pull the version goes.
  ASSERT_EQ(PullFrames("carol", std::nullopt, 0, 0), 2);
  Apply(3);
  clock_.Advance(kTtlMs * 1000 + 1);
  EXPECT_EQ(store_->Pin(2, "carol", 1).snapshot, nullptr);
}

TEST_F(SnapshotStoreTest, FastPullsThatFinishedDoNotEvictASlowOne) {
  ASSERT_EQ(PullFrames("slow", std::nullopt, 0, 0), 0);
  for (int64_t v = 1; v <= 6; ++v) {
    Apply(v);
    clock_.Advance(SnapshotStore::kFinishedPullGraceUs + 1);
    ASSERT_EQ(PullFrames("fast", std::nullopt, 0, kFrames - 1), v);
    // The slow pull asks for one more frame now and then: it stays within the TTL.
    if (v == 3) {
      ASSERT_EQ(PullFrames("slow", 0, 1, 1), 0);
    }
  }
  // max_pinned_snapshots = 2, yet the slow pull's version is still there: the fast pulls'
  // versions were released when they finished, not kept for the TTL.
  EXPECT_EQ(PullFrames("slow", 0, 2, kFrames - 1), 0);
}

TEST_F(SnapshotStoreTest, TheCopyOnWriteUsesTheSpareAndKeepsValues) {
  ASSERT_EQ(PullFrames("alice", std::nullopt, 0, 0), 0);
  Apply(1);  // version 0 pinned: the master continues in a copy
  clock_.Advance(kTtlMs * 1000 + 1);
  ASSERT_EQ(PullFrames("bob", std::nullopt, 0, 0), 1);  // expires version 0: its buffer is the spare
  EXPECT_TRUE(store_->has_spare());
  Apply(2);  // version 1 pinned by bob: copied into the spare
  EXPECT_FALSE(store_->has_spare());
  auto [version, values] = store_->CopyCurrent();
  EXPECT_EQ(version, 2);
  EXPECT_EQ(values, std::vector<float>(kElements, 2.0f));
  auto pin = store_->Pin(1, "bob", 1);
  ASSERT_NE(pin.snapshot, nullptr);
  auto v1 = SnapshotStore::Values(*pin.snapshot);
  EXPECT_EQ(std::vector<float>(v1.begin(), v1.end()), std::vector<float>(kElements, 1.0f));
}

}  // namespace
}  // namespace fedps
