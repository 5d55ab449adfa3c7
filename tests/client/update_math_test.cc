#include "client/update_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

namespace fedps {
namespace {

TEST(FirstNonFinite, FindsTheFirstNaNOrInfinity) {
  std::vector<float> v(10, 0.0f);
  EXPECT_EQ(FirstNonFinite(v), -1);
  v[9] = std::numeric_limits<float>::infinity();
  v[7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(FirstNonFinite(v), 7);
}

TEST(CheckSlicesTile, AcceptsAPartitionAndRefusesGapsAndOverlaps) {
  EXPECT_TRUE(CheckSlicesTile({{0, 64}, {64, 200}}, 200).ok());
  EXPECT_EQ(CheckSlicesTile({{0, 64}, {65, 200}}, 200).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(CheckSlicesTile({{0, 64}, {60, 200}}, 200).code(), StatusCode::kFailedPrecondition);
  EXPECT_EQ(CheckSlicesTile({{0, 64}, {64, 190}}, 200).code(), StatusCode::kFailedPrecondition);
  auto layout = ParamLayout::FromEntries({{"w", {40, 50}, 0, 0, true}, {"n", {50}, 0, 0, false}});
  ASSERT_TRUE(layout.ok());
  auto parts = layout->Partition(3);
  ASSERT_TRUE(parts.ok());
  EXPECT_TRUE(CheckSlicesTile(*parts, layout->total_numel()).ok());
}

}  // namespace
}  // namespace fedps
