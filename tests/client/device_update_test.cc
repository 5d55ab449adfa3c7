// DeviceUpdate on the CPU (the same LibTorch ops run on CUDA; tests/gpu covers the device,
// label gpu):
// pseudo-gradient sign, bf16 rounding with error feedback, fp32 and int8 paths, refusals.
#include "client/device_update.h"

#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "client/host_buffer.h"
#include "compression/kernels.h"

namespace fedps {
namespace {

torch::Tensor Noise(int64_t n, uint64_t seed, double scale) {
  torch::manual_seed(seed);
  return torch::randn({n}) * scale;
}

// Pulls `model` into the path (through its host buffer) and into `params`.
void Pull(DeviceUpdate& path, const torch::Tensor& model, torch::Tensor& params) {
  std::span<float> buf = path.PullBuffer();
  std::memcpy(buf.data(), model.data_ptr<float>(), buf.size() * sizeof(float));
  ASSERT_TRUE(path.LoadPulled(params).ok());
  EXPECT_TRUE(torch::equal(params, model));
}

std::unique_ptr<Codec> MakeCodec(CodecKind kind, int64_t chunk) {
  CodecOptions o;
  o.kind = kind;
  o.chunk_elements = chunk;
  o.threads = 2;
  auto c = Codec::Create(o);
  EXPECT_TRUE(c.ok());
  return std::move(c).value();
}

TEST(HostTensorTest, OnTheCpuIsOrdinaryZeroedMemoryOfTheExactSize) {
  torch::Tensor t = HostTensor(1001, torch::kInt16, torch::kCPU);
  ASSERT_EQ(t.numel(), 1001);
  EXPECT_EQ(t.scalar_type(), torch::kInt16);
  EXPECT_TRUE(t.is_contiguous());
  EXPECT_EQ(t.abs().max().item<int>(), 0);
}

TEST(DeviceUpdate, Bf16ErrorFeedbackTracksTheSumOfPseudoGradients) {
  const int64_t n = 3000;
  DeviceUpdate path(n, torch::kCPU, CodecKind::kBf16, /*error_feedback=*/true);
  auto codec = MakeCodec(CodecKind::kBf16, 1024);
  torch::Tensor params = torch::zeros({n});
  torch::Tensor sum_delta = torch::zeros({n}, torch::kFloat64);
  torch::Tensor sum_sent = torch::zeros({n}, torch::kFloat64);
  torch::Tensor model = Noise(n, 1, 1.0);
  for (int round = 0; round < 6; ++round) {
    Pull(path, model, params);
    torch::Tensor trained = model - Noise(n, 10 + round, 1e-3);  // a step "downhill"
    params.copy_(trained);
    ASSERT_TRUE(path.Quantize(params).ok());
    // What the shards decode from the frames the pipeline makes.
    auto frames = codec->EncodeBf16Bits(path.Bf16Bits(0, n));
    ASSERT_TRUE(frames.ok());
    std::vector<float> decoded(n);
    ASSERT_TRUE(codec->DecodeAll(*frames, decoded).ok());
    torch::Tensor sent = torch::from_blob(decoded.data(), {n}).clone();
    torch::Tensor delta = model - trained;  // pulled - trained: points uphill
    EXPECT_GT((sent * delta).sum().item<double>(), 0) << "sign";
    sum_delta += delta.to(torch::kFloat64);
    sum_sent += sent.to(torch::kFloat64);
    // After every round the sums differ by less than one bf16 rounding of the values.
    const double gap = (sum_delta - sum_sent).abs().max().item<double>();
    const double bound = std::ldexp(delta.abs().max().item<double>() + 1e-3, -8);
    EXPECT_LT(gap, bound) << "round " << round;
    model = model - sent;  // a shard applying it with lr 1
  }
}

TEST(DeviceUpdate, Bf16BitsAreTheRoundedSum) {
  const int64_t n = 100;
  DeviceUpdate path(n, torch::kCPU, CodecKind::kBf16, /*error_feedback=*/false);
  torch::Tensor params = torch::zeros({n});
  torch::Tensor model = Noise(n, 2, 1.0);
  Pull(path, model, params);
  torch::Tensor trained = model - Noise(n, 3, 0.01);
  params.copy_(trained);
  ASSERT_TRUE(path.Quantize(params).ok());
  torch::Tensor delta = (model - trained).contiguous();
  auto bits = path.Bf16Bits(0, n);
  for (int64_t i = 0; i < n; ++i) {
    ASSERT_EQ(bits[i], codec_internal::FloatToBf16(delta[i].item<float>())) << i;
  }
}

TEST(DeviceUpdate, Fp32SendsTheExactPseudoGradient) {
  const int64_t n = 257;
  DeviceUpdate path(n, torch::kCPU, CodecKind::kFp32, /*error_feedback=*/true);
  torch::Tensor params = torch::zeros({n});
  torch::Tensor model = Noise(n, 4, 1.0);
  Pull(path, model, params);
  torch::Tensor trained = model * 0.5;
  params.copy_(trained);
  ASSERT_TRUE(path.Quantize(params).ok());
  torch::Tensor want = (model - trained).contiguous();
  auto got = path.Values(0, n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(got[i], want[i].item<float>()) << i;
  EXPECT_TRUE(path.HostResidual(0, n).empty());
}

TEST(DeviceUpdate, Int8KeepsItsResidualOnTheHost) {
  const int64_t n = 600;
  DeviceUpdate path(n, torch::kCPU, CodecKind::kInt8, /*error_feedback=*/true);
  auto codec = MakeCodec(CodecKind::kInt8, 256);
  torch::Tensor params = torch::zeros({n});
  torch::Tensor model = Noise(n, 5, 1.0);
  Pull(path, model, params);
  params.copy_(model - Noise(n, 6, 0.01));
  ASSERT_TRUE(path.Quantize(params).ok());
  std::span<float> r = path.HostResidual(0, n);
  ASSERT_EQ(r.size(), static_cast<size_t>(n));
  auto frames = codec->Encode(path.Values(0, n), r);
  ASSERT_TRUE(frames.ok());
  double rsum = 0;
  for (float v : r) rsum += std::abs(v);
  EXPECT_GT(rsum, 0) << "int8 rounding leaves a residual";
}

TEST(DeviceUpdate, RefusesADivergedModel) {
  const int64_t n = 50;
  DeviceUpdate path(n, torch::kCPU, CodecKind::kBf16, true);
  torch::Tensor params = torch::zeros({n});
  EXPECT_EQ(path.Quantize(params).code(), StatusCode::kFailedPrecondition) << "before any pull";
  Pull(path, torch::zeros({n}), params);
  params[7] = std::numeric_limits<float>::quiet_NaN();
  Status s = path.Quantize(params);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("diverged"), std::string::npos);
  params.fill_(0);
  params[3] = -std::numeric_limits<float>::max();  // delta = +FLT_MAX rounds up to +inf in bf16
  EXPECT_EQ(path.Quantize(params).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(path.LoadPulled(torch::zeros({n + 1})).code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedps
