// Codec round trips, framing, error feedback and compression ratios.
#include "compression/codec.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <random>

#include "compression/kernels.h"

namespace fedps {
namespace {

using ::testing::HasSubstr;

std::unique_ptr<Codec> MakeCodec(CodecKind kind, int64_t chunk = int64_t{1} << 20, int threads = 2,
                                 int block = 256) {
  CodecOptions o;
  o.kind = kind;
  o.chunk_elements = chunk;
  o.threads = threads;
  o.int8_block = block;
  StatusOr<std::unique_ptr<Codec>> c = Codec::Create(o);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return std::move(c).value();
}

std::vector<float> Gaussian(size_t n, float sigma, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

uint32_t Bits(float x) { return std::bit_cast<uint32_t>(x); }
float FromBits(uint32_t b) { return std::bit_cast<float>(b); }

std::vector<float> RoundTrip(Codec& codec, const std::vector<float>& v) {
  StatusOr<std::vector<std::string>> frames = codec.Encode(v);
  EXPECT_TRUE(frames.ok()) << frames.status().ToString();
  std::vector<float> out(v.size(), -12345.0f);
  Status s = codec.DecodeAll(*frames, out);
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

// Values every codec must survive: zeros of both signs, denormals, extremes, and for
// lossless coding NaN payloads and infinities.
std::vector<float> SpecialValues() {
  return {0.0f,
          -0.0f,
          1.0f,
          -1.0f,
          FromBits(0x00000001),  // smallest denormal
          FromBits(0x807FFFFF),  // largest negative denormal
          std::numeric_limits<float>::min(),
          std::numeric_limits<float>::max(),
          std::numeric_limits<float>::lowest(),
          std::numeric_limits<float>::infinity(),
          -std::numeric_limits<float>::infinity(),
          std::numeric_limits<float>::quiet_NaN(),
          FromBits(0x7F800001),  // signalling NaN
          FromBits(0xFFC12345),  // negative NaN with payload
          3.14159265f,
          -2.5e-20f};
}

TEST(CodecKindTest, ParseAndName) {
  for (CodecKind k : {CodecKind::kFp32, CodecKind::kBf16, CodecKind::kInt8, CodecKind::kTopK}) {
    StatusOr<CodecKind> parsed = ParseCodecKind(CodecKindName(k));
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(*parsed, k);
  }
  StatusOr<CodecKind> bad = ParseCodecKind("fp16");
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("fp16"));
}

TEST(CodecTest, CreateRejectsBadOptions) {
  auto rejects = [](CodecOptions o, const char* what) {
    StatusOr<std::unique_ptr<Codec>> c = Codec::Create(o);
    ASSERT_FALSE(c.ok()) << what;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_THAT(c.status().message(), HasSubstr(what));
  };
  CodecOptions o;
  o.zstd_level = 1000;
  rejects(o, "zstd_level");
  o = {};
  o.zstd_hash_log = 3;
  rejects(o, "zstd_hash_log");
  o = {};
  o.threads = -1;
  rejects(o, "threads");
  o = {};
  o.chunk_elements = 0;
  rejects(o, "chunk_elements");
  o = {};
  o.chunk_elements = int64_t{1} << 40;
  rejects(o, "chunk_elements");
  o = {};
  o.int8_block = 0;
  rejects(o, "int8_block");
  o = {};
  o.kind = static_cast<CodecKind>(9);
  rejects(o, "codec kind");
  for (double d : {0.0, -0.1, 1.5}) {
    o = {};
    o.topk_density = d;
    rejects(o, "topk_density");
  }

  o = {};
  o.threads = 0;
  StatusOr<std::unique_ptr<Codec>> c = Codec::Create(o);
  ASSERT_TRUE(c.ok());
  EXPECT_GE((*c)->parallelism(), 1);
  EXPECT_LE((*c)->parallelism(), 4);
}

TEST(CodecTest, Fp32IsBitExactOnSpecialValues) {
  auto codec = MakeCodec(CodecKind::kFp32, /*chunk=*/5);
  std::vector<float> v = SpecialValues();
  std::vector<float> g = Gaussian(1000, 1e-3f, 1);
  v.insert(v.end(), g.begin(), g.end());
  std::vector<float> out = RoundTrip(*codec, v);
  ASSERT_EQ(out.size(), v.size());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(Bits(out[i]), Bits(v[i])) << "element " << i;
}

TEST(Bf16Test, RoundsToNearestEven) {
  using codec_internal::FloatToBf16;
  struct Case {
    uint32_t in;
    uint16_t want;
  };
  const Case cases[] = {
      {0x3F800000, 0x3F80},  // 1.0
      {0x3F807FFF, 0x3F80},  // just below half an ulp: down
      {0x3F808000, 0x3F80},  // exactly half, even neighbour below
      {0x3F808001, 0x3F81},  // just above half: up
      {0x3F818000, 0x3F82},  // exactly half, even neighbour above
      {0xBF818000, 0xBF82},  // same with the sign set
      {0x3F80FFFF, 0x3F81}, {0x00000000, 0x0000}, {0x80000000, 0x8000},  // -0 stays -0
      {0x00000001, 0x0000},                        // tiny denormal rounds to 0
      {0x00008000, 0x0000},                        // half, even (0) below
      {0x00018000, 0x0002},                        // half, even (2) above
      {0x7F7F7FFF, 0x7F7F}, {0x7F7FFFFF, 0x7F80},  // FLT_MAX overflows to +Inf
      {0xFF7FFFFF, 0xFF80},                        // and -FLT_MAX to -Inf
      {0x7F800000, 0x7F80},                        // +Inf
      {0xFF800000, 0xFF80},                        // -Inf
      {0x7FC00000, 0x7FC0},                        // quiet NaN
      {0x7F800001, 0x7FC0},  // signalling NaN with a low payload: stays NaN (not Inf)
      {0xFF80FFFF, 0xFFC0},  // negative NaN; rounding must not carry into the sign
      {0x7FFFFFFF, 0x7FFF},  // NaN with every bit set does not wrap to 0
  };
  for (const Case& c : cases) {
    EXPECT_EQ(FloatToBf16(FromBits(c.in)), c.want) << std::hex << "input 0x" << c.in;
  }

  // The same through the whole codec.
  auto codec = MakeCodec(CodecKind::kBf16, /*chunk=*/7);
  std::vector<float> v;
  for (const Case& c : cases) v.push_back(FromBits(c.in));
  std::vector<float> out = RoundTrip(*codec, v);
  for (size_t i = 0; i < v.size(); ++i) {
    EXPECT_EQ(Bits(out[i]), uint32_t{cases[i].want} << 16) << "element " << i;
  }
}

TEST(Bf16Test, RandomValuesWithinHalfAnUlp) {
  auto codec = MakeCodec(CodecKind::kBf16, /*chunk=*/4096);
  std::mt19937_64 rng(7);
  std::vector<float> v(50000);
  std::uniform_real_distribution<float> exponent(-30.0f, 30.0f);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (float& x : v) x = normal(rng) * std::exp2(exponent(rng));
  std::vector<float> out = RoundTrip(*codec, v);
  for (size_t i = 0; i < v.size(); ++i) {
    // Round to nearest with 8 significant bits: error <= 2^-8 * |x|.
    ASSERT_LE(std::fabs(out[i] - v[i]), std::ldexp(std::fabs(v[i]), -8)) << "element " << i;
  }
}

// The int8 bound: per block, |x - x'| <= scale / 2 with scale = absmax / 127, plus float
// rounding slack.
void ExpectInt8Bound(const std::vector<float>& v, const std::vector<float>& out, size_t block,
                     int64_t chunk) {
  for (size_t frame = 0; frame < v.size(); frame += chunk) {
    const size_t frame_end = std::min(v.size(), frame + static_cast<size_t>(chunk));
    for (size_t b = frame; b < frame_end; b += block) {
      const size_t e = std::min(frame_end, b + block);
      float absmax = 0.0f;
      for (size_t i = b; i < e; ++i) absmax = std::max(absmax, std::fabs(v[i]));
      const float bound =
          absmax < codec_internal::kInt8MinAbsmax ? absmax : absmax / 254.0f + absmax * 1e-6f;
      for (size_t i = b; i < e; ++i) {
        ASSERT_LE(std::fabs(out[i] - v[i]), bound) << "element " << i << " absmax " << absmax;
      }
    }
  }
}

TEST(Bf16Test, PreRoundedBitsGiveTheSameFrames) {
  // A GPU rounds to bf16 and hands over the bit patterns: the frames must be the ones
  // Encode makes from the fp32 values, for odd sizes and several frames.
  for (size_t n : {size_t{0}, size_t{1}, size_t{1000}, size_t{2500}}) {
    std::vector<float> v = Gaussian(n, 0.01f, 7 + n);
    std::vector<uint16_t> bits(n);
    for (size_t i = 0; i < n; ++i) bits[i] = codec_internal::FloatToBf16(v[i]);
    auto codec = MakeCodec(CodecKind::kBf16, /*chunk=*/1024);
    auto want = codec->Encode(v);
    auto got = codec->EncodeBf16Bits(bits);
    ASSERT_TRUE(want.ok() && got.ok()) << got.status().ToString();
    EXPECT_EQ(*got, *want) << n;
  }
  auto fp32 = MakeCodec(CodecKind::kFp32);
  std::vector<uint16_t> one(1, 0);
  EXPECT_EQ(fp32->EncodeBf16Bits(one).status().code(), StatusCode::kFailedPrecondition);
}

TEST(Int8Test, RoundTripWithinBlockwiseBound) {
  for (int block : {256, 100, 1}) {
    const int64_t chunk = 1000;  // not a multiple of 256: frames end with a partial block
    auto codec = MakeCodec(CodecKind::kInt8, chunk, 2, block);
    std::mt19937_64 rng(block);
    std::vector<float> v(10007);
    std::uniform_real_distribution<float> exponent(-20.0f, 5.0f);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    // Per-region scales differ, as they do across a model's tensors.
    for (size_t i = 0; i < v.size(); i += 300) {
      const float s = std::exp2(exponent(rng));
      for (size_t j = i; j < std::min(v.size(), i + 300); ++j) v[j] = normal(rng) * s;
    }
    std::fill(v.begin() + 2000, v.begin() + 2600, 0.0f);    // all-zero blocks
    std::fill(v.begin() + 3000, v.begin() + 3600, 1e-35f);  // below kInt8MinAbsmax: zeros
    v[5000] = std::numeric_limits<float>::max();
    v[5001] = std::numeric_limits<float>::lowest();
    std::vector<float> out = RoundTrip(*codec, v);
    ExpectInt8Bound(v, out, block, chunk);
    EXPECT_EQ(out[2100], 0.0f);
    EXPECT_EQ(out[3100], 0.0f);
    EXPECT_TRUE(std::isfinite(out[5000]) && std::isfinite(out[5001]));
  }
}

TEST(Int8Test, RefusesNonFiniteInput) {
  auto codec = MakeCodec(CodecKind::kInt8, 64);
  std::vector<float> v(300, 1.0f);
  v[171] = std::numeric_limits<float>::quiet_NaN();
  StatusOr<std::vector<std::string>> frames = codec->Encode(v);
  ASSERT_FALSE(frames.ok());
  EXPECT_EQ(frames.status().code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(frames.status().message(), HasSubstr("element 171"));
  v[171] = 1.0f;
  v[7] = -std::numeric_limits<float>::infinity();
  frames = codec->Encode(v);
  ASSERT_FALSE(frames.ok());
  EXPECT_THAT(frames.status().message(), HasSubstr("element 7"));
}

// The receiver's check: every bit pattern of the two top planes classified as std::isfinite
// does, for fp32 and bf16 frames; int8 frames (finite by construction) pass.
TEST(CheckFrameTest, FindsEveryNonFinitePatternAndNothingElse) {
  using codec_internal::FirstNonFinite;
  std::vector<uint8_t> hi(65536), lo(65536);
  for (uint32_t b = 0; b < 65536; ++b) {
    hi[b] = static_cast<uint8_t>(b >> 8);
    lo[b] = static_cast<uint8_t>(b);
  }
  for (uint32_t b = 0; b < 65536; ++b) {
    const bool finite = std::isfinite(FromBits(b << 16));
    double squares = 0;
    EXPECT_EQ(FirstNonFinite(&hi[b], &lo[b], 1, &squares), finite ? 1u : 0u) << std::hex << b;
    if (finite) {
      EXPECT_EQ(squares, double{FromBits(b << 16)} * double{FromBits(b << 16)}) << std::hex << b;
    }
  }
  for (CodecKind kind : {CodecKind::kFp32, CodecKind::kBf16}) {
    auto codec = MakeCodec(kind, 300);
    std::vector<float> v = Gaussian(1000, 1.0f, 5);
    v[0] = 3.0e38f;  // near the top of both ranges (FLT_MAX itself rounds to bf16 Inf)
    v[1] = -std::numeric_limits<float>::denorm_min();
    auto frames = codec->Encode(v);
    ASSERT_TRUE(frames.ok());
    for (const std::string& f : *frames) EXPECT_TRUE(codec->CheckFrame(f, v.size()).ok());
    v[0] = -std::numeric_limits<float>::infinity();
    v[777] = std::nanf("");
    frames = codec->Encode(v);
    ASSERT_TRUE(frames.ok());
    Status first = codec->CheckFrame((*frames)[0], v.size());
    EXPECT_EQ(first.code(), StatusCode::kInvalidArgument) << CodecKindName(kind);
    EXPECT_THAT(first.message(), HasSubstr("value 0 of the slice is NaN or infinite"));
    EXPECT_TRUE(codec->CheckFrame((*frames)[1], v.size()).ok());
    Status third = codec->CheckFrame((*frames)[2], v.size());
    EXPECT_THAT(third.message(), HasSubstr("value 777 "));
    // The other checks of DecodeFrame: another slice, damaged bytes.
    EXPECT_EQ(codec->CheckFrame((*frames)[1], v.size() + 1).code(), StatusCode::kInvalidArgument);
    std::string damaged = (*frames)[1];
    damaged[kFrameHeaderBytes + 3] ^= 0x01;
    EXPECT_EQ(codec->CheckFrame(damaged, v.size()).code(), StatusCode::kDataLoss);
  }
  auto int8 = MakeCodec(CodecKind::kInt8, 300);
  std::vector<float> v = Gaussian(1000, 1.0f, 6);
  auto frames = int8->Encode(v);
  ASSERT_TRUE(frames.ok());
  for (const std::string& f : *frames) EXPECT_TRUE(int8->CheckFrame(f, v.size()).ok());
}

// The sum of squares CheckFrame reports (the receiver's update norm) is that of the values
// the frame decodes to: for bf16 up to summation order, for int8 and topk up to the float
// rounding of q x scale in the decoder, and within 2^-6 below it for fp32 (values truncated
// to bfloat16).
TEST(CheckFrameTest, ReportsTheSumOfSquaresOfTheDecodedValues) {
  for (CodecKind kind : {CodecKind::kFp32, CodecKind::kBf16, CodecKind::kInt8, CodecKind::kTopK}) {
    auto codec = MakeCodec(kind, 300);
    std::vector<float> v = Gaussian(1003, 2.5f, 11);
    v[5] = 1.0e30f;  // a huge value: its square overflows float, not the double sum
    auto frames = codec->Encode(v);
    ASSERT_TRUE(frames.ok()) << CodecKindName(kind);
    std::vector<float> decoded(v.size());
    for (const std::string& f : *frames) {
      std::fill(decoded.begin(), decoded.end(), 0.0f);
      ASSERT_TRUE(codec->DecodeFrame(f, decoded).ok());
      double want = 0;
      for (float x : decoded) want += double{x} * double{x};
      double got = -1;
      ASSERT_TRUE(codec->CheckFrame(f, v.size(), &got).ok());
      if (kind == CodecKind::kFp32) {
        EXPECT_LE(got, want * (1 + 1e-12)) << CodecKindName(kind);
        EXPECT_GE(got, want * (1 - 1.0 / 64)) << CodecKindName(kind);
      } else {
        const double tolerance = kind == CodecKind::kBf16 ? 1e-12 : 1e-6;
        EXPECT_NEAR(got, want, want * tolerance) << CodecKindName(kind);
      }
      EXPECT_GT(got, 0) << CodecKindName(kind);
    }
  }
}

// topk keeps exactly ceil(density x count) values per frame, the largest in magnitude, each
// within half a scale step; the rest decode as zeros.
TEST(TopKTest, KeepsTheLargestValuesOfEachFrameAndZerosTheRest) {
  CodecOptions o;
  o.kind = CodecKind::kTopK;
  o.chunk_elements = 1000;
  o.topk_density = 0.05;
  auto codec = Codec::Create(o);
  ASSERT_TRUE(codec.ok()) << codec.status().ToString();
  std::vector<float> v = Gaussian(2500, 1.0f, 21);  // frames of 1000, 1000, 500
  auto frames = (*codec)->Encode(v);
  ASSERT_TRUE(frames.ok());
  ASSERT_EQ(frames->size(), 3u);
  std::vector<float> out(v.size(), -7.0f);
  ASSERT_TRUE((*codec)->DecodeAll(*frames, out).ok());
  for (size_t f = 0; f < 3; ++f) {
    const size_t begin = f * 1000, n = f < 2 ? 1000 : 500, k = f < 2 ? 50 : 25;
    EXPECT_EQ(Codec::PeekHeader((*frames)[f])->block, k);
    std::vector<float> mags;
    for (size_t i = begin; i < begin + n; ++i) mags.push_back(std::fabs(v[i]));
    std::nth_element(mags.begin(), mags.begin() + static_cast<long>(k) - 1, mags.end(), std::greater<float>());
    const float threshold = mags[k - 1];  // the k-th largest magnitude
    float absmax = 0;
    for (size_t i = begin; i < begin + n; ++i) absmax = std::max(absmax, std::fabs(v[i]));
    size_t kept = 0;
    for (size_t i = begin; i < begin + n; ++i) {
      if (out[i] == 0.0f) {
        EXPECT_LE(std::fabs(v[i]), threshold) << i;
        continue;
      }
      ++kept;
      EXPECT_GE(std::fabs(v[i]), threshold) << i;
      EXPECT_LE(std::fabs(out[i] - v[i]), absmax / 254.0f * 1.001f) << i;
    }
    EXPECT_EQ(kept, k) << "frame " << f;
    EXPECT_TRUE((*codec)->CheckFrame((*frames)[f], v.size()).ok());
  }
  // About 1 + 1/8 + density bytes per value before zstd: far below fp32's 4.
  EXPECT_LT(Codec::TotalBytes(*frames), v.size() * 4 / 10);
}

// With error feedback what is not sent stays in the residual: over rounds the decoded sum
// tracks the input sum up to what the residual holds, and every value is sent eventually.
TEST(TopKTest, ErrorFeedbackKeepsWhatWasNotSent) {
  CodecOptions o;
  o.kind = CodecKind::kTopK;
  o.chunk_elements = 512;
  o.topk_density = 0.1;
  auto codec = Codec::Create(o);
  ASSERT_TRUE(codec.ok());
  const size_t n = 1024;
  std::vector<float> residual(n, 0.0f);
  std::vector<double> sum_in(n, 0.0), sum_out(n, 0.0);
  for (int round = 0; round < 30; ++round) {
    std::vector<float> v = Gaussian(n, 1e-3f, 100 + static_cast<uint64_t>(round));
    auto frames = (*codec)->Encode(v, residual);
    ASSERT_TRUE(frames.ok());
    std::vector<float> out(n);
    ASSERT_TRUE((*codec)->DecodeAll(*frames, out).ok());
    for (size_t i = 0; i < n; ++i) {
      sum_in[i] += v[i];
      sum_out[i] += out[i];
      // Exactly: what went in = what was sent + what is left, up to float rounding.
      ASSERT_NEAR(sum_in[i], sum_out[i] + residual[i], 1e-6) << "round " << round << " value " << i;
    }
  }
  size_t never_sent = 0;
  for (size_t i = 0; i < n; ++i) never_sent += sum_out[i] == 0.0;
  EXPECT_LT(never_sent, n / 20);
  std::vector<float> bad(n, 0.0f);
  bad[3] = std::numeric_limits<float>::infinity();
  EXPECT_EQ((*codec)->Encode(bad).status().code(), StatusCode::kInvalidArgument);
}

// Payloads a forger could seal with a valid checksum are still refused: a kept-value count
// that disagrees with the bitmap, bits past the frame's end, a -128 value.
TEST(TopKTest, UnsoundPayloadsAreRefused) {
  using codec_internal::CheckTopK;
  const size_t n = 20, k = 2;
  std::vector<uint8_t> raw(codec_internal::TopKRawBytes(n, k), 0);
  const float scale = 0.5f;
  std::memcpy(raw.data(), &scale, 4);
  raw[4] = 0b00000101;  // values 0 and 2 kept
  raw[4 + 3] = 7;
  raw[4 + 3 + 1] = static_cast<uint8_t>(-7);
  EXPECT_TRUE(CheckTopK(raw.data(), n, k));
  std::vector<float> out(n, 1.0f);
  ASSERT_TRUE(codec_internal::DecodeTopK(raw.data(), n, k, out.data()));
  EXPECT_EQ(out[0], 3.5f);
  EXPECT_EQ(out[1], 0.0f);
  EXPECT_EQ(out[2], -3.5f);
  EXPECT_FALSE(CheckTopK(raw.data(), n, 3));  // the bitmap keeps 2, not 3
  auto stray = raw;
  stray[4 + 2] = 0b00010000;  // value 20: past the end of 20 values
  EXPECT_FALSE(CheckTopK(stray.data(), n, k));
  auto minus128 = raw;
  minus128[4 + 3] = 0x80;
  EXPECT_FALSE(CheckTopK(minus128.data(), n, k));
  auto nan_scale = raw;
  const float nan = std::nanf("");
  std::memcpy(nan_scale.data(), &nan, 4);
  EXPECT_FALSE(CheckTopK(nan_scale.data(), n, k));
}

TEST(CodecTest, OddSizesRoundTrip) {
  const int64_t chunk = 1024;
  for (CodecKind kind : {CodecKind::kFp32, CodecKind::kBf16, CodecKind::kInt8}) {
    auto codec = MakeCodec(kind, chunk, 3, 256);
    for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{255}, size_t{257}, size_t{chunk - 1},
                     size_t{chunk}, size_t{chunk + 1}, size_t{2 * chunk + 1}, size_t{5 * chunk}}) {
      SCOPED_TRACE(std::string(CodecKindName(kind)) + " n=" + std::to_string(n));
      std::vector<float> v = Gaussian(n, 0.01f, n);
      StatusOr<std::vector<std::string>> frames = codec->Encode(v);
      ASSERT_TRUE(frames.ok()) << frames.status().ToString();
      const size_t want_frames = std::max<size_t>(1, (n + chunk - 1) / chunk);
      ASSERT_EQ(frames->size(), want_frames);
      std::vector<float> out(n, 99.0f);
      ASSERT_TRUE(codec->DecodeAll(*frames, out).ok());
      for (size_t i = 0; i < n; ++i) {
        if (kind == CodecKind::kFp32) {
          ASSERT_EQ(Bits(out[i]), Bits(v[i]));
        } else if (kind == CodecKind::kBf16) {
          ASSERT_LE(std::fabs(out[i] - v[i]), std::ldexp(std::fabs(v[i]), -8));
        }
      }
      if (kind == CodecKind::kInt8) ExpectInt8Bound(v, out, 256, chunk);
    }
  }
}

TEST(CodecTest, FramesCoverTheSliceAndDecodeAlone) {
  auto codec = MakeCodec(CodecKind::kBf16, /*chunk=*/1000);
  std::vector<float> v = Gaussian(3500, 1.0f, 3);
  StatusOr<std::vector<std::string>> frames = codec->Encode(v);
  ASSERT_TRUE(frames.ok());
  ASSERT_EQ(frames->size(), 4u);
  uint64_t next = 0;
  for (const std::string& f : *frames) {
    StatusOr<FrameHeader> h = Codec::PeekHeader(f);
    ASSERT_TRUE(h.ok()) << h.status().ToString();
    EXPECT_EQ(h->kind, CodecKind::kBf16);
    EXPECT_EQ(h->offset, next);
    EXPECT_EQ(h->count, std::min<uint64_t>(1000, 3500 - next));
    EXPECT_EQ(h->slice_length, 3500u);
    EXPECT_EQ(h->raw_bytes, 2 * h->count);
    EXPECT_EQ(h->payload_bytes + kFrameHeaderBytes, f.size());
    next += h->count;
  }
  EXPECT_EQ(next, 3500u);
  // Each frame alone, in reverse order, by a codec configured for another kind.
  auto other = MakeCodec(CodecKind::kInt8);
  std::vector<float> out(3500, 0.0f);
  for (size_t i = frames->size(); i-- > 0;) {
    ASSERT_TRUE(other->DecodeFrame((*frames)[i], out).ok());
  }
  EXPECT_EQ(out, RoundTrip(*codec, v));
}

TEST(CodecTest, DecodeAllChecksCoverage) {
  auto codec = MakeCodec(CodecKind::kFp32, /*chunk=*/100);
  std::vector<float> v = Gaussian(350, 1.0f, 4);
  std::vector<std::string> frames = *codec->Encode(v);
  ASSERT_EQ(frames.size(), 4u);
  std::vector<float> out(350);

  std::vector<std::string> shuffled = {frames[2], frames[0], frames[3], frames[1]};
  ASSERT_TRUE(codec->DecodeAll(shuffled, out).ok());
  EXPECT_EQ(out, v);

  std::vector<std::string> missing = {frames[0], frames[1], frames[3]};
  Status s = codec->DecodeAll(missing, out);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("no frame covers elements [200, 300)"));

  std::vector<std::string> tail_missing = {frames[0], frames[1], frames[2]};
  s = codec->DecodeAll(tail_missing, out);
  EXPECT_THAT(s.message(), HasSubstr("no frame covers elements [300, 350)"));

  std::vector<std::string> duplicate = {frames[0], frames[1], frames[1], frames[2], frames[3]};
  s = codec->DecodeAll(duplicate, out);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("overlaps"));

  std::vector<float> wrong_size(351);
  s = codec->DecodeAll(frames, wrong_size);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("slice of 350 values"));
  s = codec->DecodeFrame(frames[0], wrong_size);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);

  // Frames of another slice.
  std::vector<std::string> other = *codec->Encode(Gaussian(360, 1.0f, 5));
  std::vector<std::string> mixed = {frames[0], frames[1], frames[2], other[3]};
  s = codec->DecodeAll(mixed, out);
  EXPECT_FALSE(s.ok());

  // A frame whose slice-length field was damaged in transit: the checksum says so.
  std::vector<std::string> damaged = frames;
  damaged[2][32] ^= 0x04;
  s = codec->DecodeAll(damaged, out);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("frame 2: frame checksum mismatch"));

  std::vector<float> empty;
  EXPECT_TRUE(codec->DecodeAll({}, empty).ok());
  EXPECT_EQ(codec->DecodeAll({}, out).code(), StatusCode::kDataLoss);
}

TEST(CodecTest, OutputDoesNotDependOnThreads) {
  std::vector<float> v = Gaussian(100000, 1e-3f, 9);
  for (CodecKind kind : {CodecKind::kFp32, CodecKind::kBf16, CodecKind::kInt8}) {
    auto one = MakeCodec(kind, 7000, 1);
    auto four = MakeCodec(kind, 7000, 4);
    std::vector<float> r1(v.size(), 0.001f), r4(v.size(), 0.001f);
    StatusOr<std::vector<std::string>> a = one->Encode(v, r1);
    StatusOr<std::vector<std::string>> b = four->Encode(v, r4);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b) << CodecKindName(kind);
    EXPECT_EQ(r1, r4);
  }
}

TEST(CodecTest, ResidualMustMatchValues) {
  auto codec = MakeCodec(CodecKind::kBf16);
  std::vector<float> v(10), r(9);
  StatusOr<std::vector<std::string>> frames = codec->Encode(v, r);
  ASSERT_FALSE(frames.ok());
  EXPECT_EQ(frames.status().code(), StatusCode::kInvalidArgument);
}

TEST(ErrorFeedbackTest, Fp32FoldsAndClearsTheResidual) {
  auto codec = MakeCodec(CodecKind::kFp32);
  std::vector<float> v = {1.0f, 2.0f, 3.0f};
  std::vector<float> r = {0.5f, -0.25f, 0.0f};
  StatusOr<std::vector<std::string>> frames = codec->Encode(v, r);
  ASSERT_TRUE(frames.ok());
  std::vector<float> out(3);
  ASSERT_TRUE(codec->DecodeAll(*frames, out).ok());
  EXPECT_EQ(out, (std::vector<float>{1.5f, 1.75f, 3.0f}));
  EXPECT_EQ(r, (std::vector<float>{0.0f, 0.0f, 0.0f}));
}

// Over many rounds, sum(decoded) + residual == sum(inputs) (up to float rounding),
// and the residual stays within one round's quantisation error.
TEST(ErrorFeedbackTest, DecodedSumTracksInputSum) {
  constexpr int kRounds = 40;
  constexpr size_t kN = 5000;
  for (CodecKind kind : {CodecKind::kBf16, CodecKind::kInt8}) {
    SCOPED_TRACE(CodecKindName(kind));
    auto codec = MakeCodec(kind, 1500, 2, 64);
    std::vector<float> residual(kN, 0.0f);
    std::vector<double> sum_in(kN, 0.0), sum_out(kN, 0.0), sum_plain(kN, 0.0);
    double max_abs_input = 0.0;
    // A slowly varying signal (as pseudo-gradients of consecutive rounds are): plain
    // coding repeats nearly the same rounding error every round, so it accumulates.
    const std::vector<float> base = Gaussian(kN, 1e-3f, 99);
    for (int round = 0; round < kRounds; ++round) {
      std::vector<float> v = Gaussian(kN, 1e-3f, 100 + round);
      for (size_t i = 0; i < kN; ++i) v[i] = base[i] * (1.0f + v[i]);
      for (float x : v) max_abs_input = std::max(max_abs_input, double{std::fabs(x)});
      StatusOr<std::vector<std::string>> frames = codec->Encode(v, residual);
      ASSERT_TRUE(frames.ok());
      std::vector<float> out(kN);
      ASSERT_TRUE(codec->DecodeAll(*frames, out).ok());
      std::vector<float> plain = RoundTrip(*codec, v);  // no feedback
      for (size_t i = 0; i < kN; ++i) {
        sum_in[i] += v[i];
        sum_out[i] += out[i];
        sum_plain[i] += plain[i];
      }
    }
    double max_drift = 0.0, max_residual = 0.0, err_fb = 0.0, err_plain = 0.0;
    for (size_t i = 0; i < kN; ++i) {
      max_drift = std::max(max_drift, std::fabs(sum_in[i] - sum_out[i] - residual[i]));
      max_residual = std::max(max_residual, double{std::fabs(residual[i])});
      err_fb += std::fabs(sum_in[i] - sum_out[i]);
      err_plain += std::fabs(sum_in[i] - sum_plain[i]);
    }
    // Float rounding of x = v + r each round: a few ulps of the running values.
    EXPECT_LT(max_drift, kRounds * max_abs_input * 1e-6);
    // One round's error: bf16 half-ulp of |x| (<= 2^-8 |x|); int8 absmax / 254.
    EXPECT_LT(max_residual, 2 * max_abs_input / 200);
    // Feedback beats plain coding on the accumulated error by a wide margin.
    EXPECT_LT(err_fb * 5, err_plain);
  }
}

TEST(CompressionRatioTest, GaussianNoise) {
  const std::vector<float> v = Gaussian(1 << 20, 1e-3f, 11);
  const double fp32_bytes = 4.0 * v.size();
  double ratio[3];
  for (CodecKind kind : {CodecKind::kFp32, CodecKind::kBf16, CodecKind::kInt8}) {
    auto codec = MakeCodec(kind, 1 << 18);
    StatusOr<std::vector<std::string>> frames = codec->Encode(v);
    ASSERT_TRUE(frames.ok());
    ratio[static_cast<int>(kind)] = fp32_bytes / Codec::TotalBytes(*frames);
  }
  RecordProperty("ratio_fp32", std::to_string(ratio[0]));
  RecordProperty("ratio_bf16", std::to_string(ratio[1]));
  RecordProperty("ratio_int8", std::to_string(ratio[2]));
  EXPECT_GT(ratio[0], 1.05);
  EXPECT_GE(ratio[1], 2.2);
  EXPECT_GE(ratio[2], 3.5);
}

}  // namespace
}  // namespace fedps
