#include "client/update_math.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>

namespace fedps {
namespace {

std::vector<float> Noise(size_t n, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

TEST(PseudoGradient, IsPulledMinusTrained) {
  std::vector<float> pulled = {1.0f, -2.0f, 0.5f, 3.0f};
  std::vector<float> trained = {0.75f, -2.5f, 0.5f, 4.0f};
  std::vector<float> delta(4);
  ASSERT_TRUE(PseudoGradient(pulled, trained, delta).ok());
  EXPECT_EQ(delta, (std::vector<float>{0.25f, 0.5f, 0.0f, -1.0f}));
  // Applying it with an outer lr of 1 (x -= delta) gives the trained model back.
  for (size_t i = 0; i < 4; ++i) EXPECT_FLOAT_EQ(pulled[i] - delta[i], trained[i]);
}

TEST(PseudoGradient, RefusesMismatchedSizes) {
  std::vector<float> a(3), b(4), d(3);
  EXPECT_EQ(PseudoGradient(a, b, d).code(), StatusCode::kInvalidArgument);
}

TEST(EncodeSlice, FramesFollowTheShardsFrameSize) {
  CodecOptions o;
  o.kind = CodecKind::kBf16;
  o.chunk_elements = 1000;
  auto codec = Codec::Create(o);
  ASSERT_TRUE(codec.ok());
  auto delta = Noise(2500, 1, 1e-3f);
  std::vector<float> residual(delta.size(), 0.0f);
  auto enc = EncodeSlice(**codec, delta, residual);
  ASSERT_TRUE(enc.ok()) << enc.status().ToString();
  ASSERT_EQ(enc->frames.size(), 3u);
  for (size_t k = 0; k < 3; ++k) {
    auto h = Codec::PeekHeader(enc->frames[k]);
    ASSERT_TRUE(h.ok());
    EXPECT_EQ(h->offset, k * 1000);
    EXPECT_EQ(h->count, std::min<uint64_t>(1000, 2500 - k * 1000));
  }
  EXPECT_EQ(enc->raw_bytes, 2500u * 4);
  EXPECT_LT(enc->bytes, enc->raw_bytes) << "bf16 must be smaller than fp32";
}

// Error feedback: over many updates, the sum of what the shard decodes tracks the sum of
// the true pseudo-gradients up to the last residual, even with int8's coarse steps.
TEST(EncodeSlice, ErrorFeedbackKeepsTheSumOfDecodedUpdates) {
  CodecOptions o;
  o.kind = CodecKind::kInt8;
  o.int8_block = 64;
  o.chunk_elements = 512;
  auto codec = Codec::Create(o);
  ASSERT_TRUE(codec.ok());
  const size_t n = 1500;
  std::vector<float> residual(n, 0.0f), no_feedback_sum(n, 0.0f);
  std::vector<double> sent(n, 0.0), received(n, 0.0), received_plain(n, 0.0);
  std::vector<float> decoded(n);
  for (int round = 0; round < 30; ++round) {
    auto delta = Noise(n, 100 + round, 1e-3f);
    delta[round] = 0.5f;  // one outlier per round makes the block's scale coarse
    for (size_t i = 0; i < n; ++i) sent[i] += delta[i];
    auto enc = EncodeSlice(**codec, delta, residual);
    ASSERT_TRUE(enc.ok());
    ASSERT_TRUE((*codec)->DecodeAll(enc->frames, decoded).ok());
    for (size_t i = 0; i < n; ++i) received[i] += decoded[i];
    auto plain = EncodeSlice(**codec, delta, {});
    ASSERT_TRUE(plain.ok());
    ASSERT_TRUE((*codec)->DecodeAll(plain->frames, decoded).ok());
    for (size_t i = 0; i < n; ++i) received_plain[i] += decoded[i];
  }
  double err_fb = 0, err_plain = 0;
  for (size_t i = 0; i < n; ++i) {
    // Invariant: received + residual == sent (up to float rounding).
    EXPECT_NEAR(received[i] + residual[i], sent[i], 1e-5) << i;
    err_fb += std::fabs(received[i] - sent[i]);
    err_plain += std::fabs(received_plain[i] - sent[i]);
  }
  EXPECT_LT(err_fb, err_plain / 3) << "error feedback must beat plain quantisation";
}

TEST(EncodeSlice, RefusesNonFiniteDeltasAndBadResiduals) {
  auto codec = Codec::Create(CodecOptions{});
  ASSERT_TRUE(codec.ok());
  std::vector<float> delta(10, 0.0f);
  delta[7] = std::numeric_limits<float>::quiet_NaN();
  auto r = EncodeSlice(**codec, delta, {});
  EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("element 7"), std::string::npos);
  std::vector<float> ok(10, 0.0f), residual(3);
  EXPECT_EQ(EncodeSlice(**codec, ok, residual).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(FirstNonFinite(ok), -1);
  EXPECT_EQ(FirstNonFinite(delta), 7);
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
