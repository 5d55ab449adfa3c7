// NormBound (ps/norm_bound.h): the limit is factor x the median of the last `window`
// recorded norms, once `warmup` are known; none while disabled or the median is 0.
#include "ps/norm_bound.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace fedps {
namespace {

TEST(NormBoundTest, HoldsAfterTheWarmupAtFactorTimesTheMedian) {
  NormBound b(NormBoundOptions{.enabled = true, .factor = 10, .window = 5, .warmup = 3});
  EXPECT_FALSE(b.Limit());
  b.Record(1.0);
  b.Record(3.0);
  EXPECT_FALSE(b.Limit());  // 2 < warmup
  b.Record(2.0);
  ASSERT_TRUE(b.Limit());
  EXPECT_DOUBLE_EQ(b.median(), 2.0);
  EXPECT_DOUBLE_EQ(*b.Limit(), 20.0);
  b.Record(100.0);  // one outlier moves the median one place only
  EXPECT_DOUBLE_EQ(b.median(), 3.0);  // upper median of {1, 2, 3, 100}
}

TEST(NormBoundTest, TheWindowKeepsTheNewestNorms) {
  NormBound b(NormBoundOptions{.enabled = true, .factor = 4, .window = 3, .warmup = 1});
  for (double v : {9.0, 9.0, 9.0, 1.0, 1.0}) b.Record(v);
  EXPECT_EQ(b.size(), 3);
  EXPECT_DOUBLE_EQ(b.median(), 1.0);  // {9, 1, 1}
  EXPECT_DOUBLE_EQ(*b.Limit(), 4.0);
}

TEST(NormBoundTest, NoLimitWhenDisabledOrTheMedianIsZeroAndNonFiniteNormsAreIgnored) {
  NormBound off(NormBoundOptions{.enabled = false, .factor = 10, .window = 5, .warmup = 1});
  off.Record(1.0);
  EXPECT_FALSE(off.Limit());
  NormBound zeros(NormBoundOptions{.enabled = true, .factor = 10, .window = 5, .warmup = 1});
  zeros.Record(0.0);
  zeros.Record(0.0);
  EXPECT_FALSE(zeros.Limit());
  zeros.Record(std::numeric_limits<double>::infinity());
  zeros.Record(std::nan(""));
  EXPECT_EQ(zeros.size(), 2);
}

}  // namespace
}  // namespace fedps
