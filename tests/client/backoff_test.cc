#include "client/backoff.h"

#include <gtest/gtest.h>

#include <vector>

namespace fedps {
namespace {

TEST(Backoff, DoublesFromInitialUpToTheCap) {
  Backoff b(200, 5000);
  std::vector<int64_t> got;
  for (int i = 0; i < 8; ++i) got.push_back(b.NextDelayMs());
  EXPECT_EQ(got, (std::vector<int64_t>{200, 400, 800, 1600, 3200, 5000, 5000, 5000}));
  EXPECT_EQ(b.attempts(), 8);
  b.Reset();
  EXPECT_EQ(b.NextDelayMs(), 200);
}

TEST(Backoff, ShardHintRaisesButNeverLowersTheDelay) {
  Backoff b(100, 1000);
  EXPECT_EQ(b.NextDelayMs(50), 100);     // hint below the schedule
  EXPECT_EQ(b.NextDelayMs(700), 700);    // hint above it
  EXPECT_EQ(b.NextDelayMs(9000), 9000);  // the shard knows best, even above the cap
  EXPECT_EQ(b.NextDelayMs(), 800);       // the schedule went on meanwhile
}

TEST(Backoff, BadBoundsAreClamped) {
  Backoff b(0, -5, 0.5);
  EXPECT_EQ(b.NextDelayMs(), 1);
  EXPECT_EQ(b.NextDelayMs(), 1);
  Backoff c(300, 100);  // max below initial: the initial delay is the cap
  EXPECT_EQ(c.NextDelayMs(), 300);
  EXPECT_EQ(c.NextDelayMs(), 300);
}

TEST(Backoff, JitterStaysInTheUpperHalfAndIsReproducible) {
  Backoff a(200, 5000, 2.0, 42), b(200, 5000, 2.0, 42);
  Backoff plain(200, 5000);
  for (int i = 0; i < 20; ++i) {
    int64_t d = plain.NextDelayMs();
    int64_t x = a.NextDelayMs();
    EXPECT_EQ(x, b.NextDelayMs()) << "same seed, same schedule";
    EXPECT_GE(x, d / 2);
    EXPECT_LE(x, d);
  }
}

TEST(Backoff, LongSchedulesDoNotOverflow) {
  Backoff b(1, int64_t{1} << 40, 10.0);
  int64_t last = 0;
  for (int i = 0; i < 400; ++i) last = b.NextDelayMs();
  EXPECT_EQ(last, int64_t{1} << 40);
}

}  // namespace
}  // namespace fedps
