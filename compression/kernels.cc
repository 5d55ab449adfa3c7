#include "compression/kernels.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>

namespace fedps::codec_internal {
namespace {

static_assert(std::endian::native == std::endian::little, "fedps codecs assume little-endian");

// Adds 1.5 * 2^23 and takes it away again: rounds to nearest even for |x| < 2^22
// in the default rounding mode, vectorisable where nearbyint is a libm call.
inline float RoundSmall(float x) {
  constexpr float kMagic = 12582912.0f;
  return (x + kMagic) - kMagic;
}

// A residual that cannot be fed back (the decoded value is not finite) is dropped.
// (A bit test rather than std::isfinite, which GCC keeps as a branch.)
inline float Residual(float x, float decoded) {
  const uint32_t r = std::bit_cast<uint32_t>(x - decoded);
  const uint32_t finite = (std::bit_cast<uint32_t>(decoded) & 0x7F800000u) != 0x7F800000u;
  return std::bit_cast<float>(r & (0u - finite));
}

// The largest scale whose 127 multiple is finite: the encoder never exceeds it and
// the decoder refuses more, so decoded int8 values are always finite.
const uint32_t kMaxInt8ScaleBits = [] {
  float s = std::numeric_limits<float>::max() / 127.0f;
  while (!(127.0f * s <= std::numeric_limits<float>::max())) s = std::nextafter(s, 0.0f);
  return std::bit_cast<uint32_t>(s);
}();

}  // namespace

void EncodeFp32(const float* v, float* r, size_t n, uint8_t* planes) {
  uint8_t* p0 = planes;
  uint8_t* p1 = planes + n;
  uint8_t* p2 = planes + 2 * n;
  uint8_t* p3 = planes + 3 * n;
  for (size_t i = 0; i < n; ++i) {
    float x = v[i];
    if (r != nullptr) {
      x += r[i];
      r[i] = 0.0f;
    }
    const uint32_t b = std::bit_cast<uint32_t>(x);
    p0[i] = static_cast<uint8_t>(b >> 24);
    p1[i] = static_cast<uint8_t>(b >> 16);
    p2[i] = static_cast<uint8_t>(b >> 8);
    p3[i] = static_cast<uint8_t>(b);
  }
}

void DecodeFp32(const uint8_t* planes, size_t n, float* out) {
  const uint8_t* p0 = planes;
  const uint8_t* p1 = planes + n;
  const uint8_t* p2 = planes + 2 * n;
  const uint8_t* p3 = planes + 3 * n;
  for (size_t i = 0; i < n; ++i) {
    const uint32_t b = (uint32_t{p0[i]} << 24) | (uint32_t{p1[i]} << 16) | (uint32_t{p2[i]} << 8) |
                       uint32_t{p3[i]};
    out[i] = std::bit_cast<float>(b);
  }
}

void EncodeBf16(const float* v, float* r, size_t n, uint8_t* planes) {
  uint8_t* hi = planes;
  uint8_t* lo = planes + n;
  if (r == nullptr) {
    for (size_t i = 0; i < n; ++i) {
      const uint16_t b = FloatToBf16(v[i]);
      hi[i] = static_cast<uint8_t>(b >> 8);
      lo[i] = static_cast<uint8_t>(b);
    }
    return;
  }
  for (size_t i = 0; i < n; ++i) {
    const float x = v[i] + r[i];
    const uint16_t b = FloatToBf16(x);
    hi[i] = static_cast<uint8_t>(b >> 8);
    lo[i] = static_cast<uint8_t>(b);
    r[i] = Residual(x, Bf16ToFloat(b));
  }
}

void SplitBf16Planes(const uint16_t* bits, size_t n, uint8_t* planes) {
  uint8_t* hi = planes;
  uint8_t* lo = planes + n;
  for (size_t i = 0; i < n; ++i) {
    hi[i] = static_cast<uint8_t>(bits[i] >> 8);
    lo[i] = static_cast<uint8_t>(bits[i]);
  }
}

void DecodeBf16(const uint8_t* planes, size_t n, float* out) {
  const uint8_t* hi = planes;
  const uint8_t* lo = planes + n;
  for (size_t i = 0; i < n; ++i) {
    out[i] = std::bit_cast<float>((uint32_t{hi[i]} << 24) | (uint32_t{lo[i]} << 16));
  }
}

size_t EncodeInt8(const float* v, float* r, size_t n, size_t block, uint8_t* raw) {
  const size_t blocks = static_cast<size_t>(Int8Blocks(n, block));
  uint8_t* scales = raw;
  auto* q = reinterpret_cast<int8_t*>(raw + 4 * blocks);
  for (size_t b = 0; b < blocks; ++b) {
    const size_t begin = b * block;
    const size_t len = std::min(block, n - begin);
    const float* vb = v + begin;
    float* rb = r == nullptr ? nullptr : r + begin;
    // absmax on the magnitude bits: for finite floats their order is the order of
    // |x|, and any value >= 0x7F800000 means Inf or NaN. An integer max vectorises.
    uint32_t max_bits = 0;
    if (rb == nullptr) {
      for (size_t i = 0; i < len; ++i) {
        max_bits = std::max(max_bits, std::bit_cast<uint32_t>(vb[i]) & 0x7FFFFFFFu);
      }
    } else {
      for (size_t i = 0; i < len; ++i) {
        max_bits = std::max(max_bits, std::bit_cast<uint32_t>(vb[i] + rb[i]) & 0x7FFFFFFFu);
      }
    }
    if (max_bits >= 0x7F800000u) {
      for (size_t i = 0; i < len; ++i) {
        if (!std::isfinite(rb == nullptr ? vb[i] : vb[i] + rb[i])) return begin + i;
      }
    }
    const float absmax = std::bit_cast<float>(max_bits);
    // Blocks of (near-)denormal magnitude code as zeros: 127 / absmax would overflow.
    const bool zero = absmax < kInt8MinAbsmax;
    const float scale =
        zero ? 0.0f : std::min(absmax / 127.0f, std::bit_cast<float>(kMaxInt8ScaleBits));
    const float inv = zero ? 0.0f : 127.0f / absmax;
    std::memcpy(scales + 4 * b, &scale, sizeof(scale));
    int8_t* qb = q + begin;
    for (size_t i = 0; i < len; ++i) {
      const float x = rb == nullptr ? vb[i] : vb[i] + rb[i];
      const float rounded = std::clamp(RoundSmall(x * inv), -127.0f, 127.0f);
      const auto code = static_cast<int8_t>(rounded);
      qb[i] = code;
      if (rb != nullptr) rb[i] = Residual(x, static_cast<float>(code) * scale);
    }
  }
  return n;
}

size_t FirstBadInt8Scale(const uint8_t* raw, size_t blocks) {
  for (size_t b = 0; b < blocks; ++b) {
    uint32_t bits;
    std::memcpy(&bits, raw + 4 * b, sizeof(bits));
    if (bits > kMaxInt8ScaleBits) return b;  // too large, Inf, NaN or negative (sign bit)
  }
  return blocks;
}

size_t FirstNonFinite(const uint8_t* hi, const uint8_t* lo, size_t n, double* sum_squares) {
  // Counted without an early exit so that the loop vectorises; searched only when found.
  // The squares go to kLanes independent sums (no reassociation needed to vectorise them).
  constexpr size_t kLanes = 8;
  double lane[kLanes] = {};
  size_t bad = 0;
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (size_t j = 0; j < kLanes; ++j) {
      const uint32_t bits = (uint32_t{hi[i + j]} << 24) | (uint32_t{lo[i + j]} << 16);
      const double x = std::bit_cast<float>(bits);
      lane[j] += x * x;
      bad += static_cast<size_t>(((hi[i + j] & 0x7F) == 0x7F) & (lo[i + j] >> 7));
    }
  }
  for (; i < n; ++i) {
    const double x = std::bit_cast<float>((uint32_t{hi[i]} << 24) | (uint32_t{lo[i]} << 16));
    lane[0] += x * x;
    bad += static_cast<size_t>(((hi[i] & 0x7F) == 0x7F) & (lo[i] >> 7));
  }
  double total = 0;
  for (double l : lane) total += l;
  *sum_squares = total;
  if (bad == 0) return n;
  for (i = 0; i < n; ++i) {
    if ((hi[i] & 0x7F) == 0x7F && (lo[i] & 0x80)) return i;
  }
  return n;
}

double Int8SumSquares(const uint8_t* raw, size_t n, size_t block) {
  const size_t blocks = static_cast<size_t>(Int8Blocks(n, block));
  const auto* q = reinterpret_cast<const int8_t*>(raw + 4 * blocks);
  double total = 0;
  for (size_t b = 0; b < blocks; ++b) {
    float scale;
    std::memcpy(&scale, raw + 4 * b, sizeof(scale));
    const size_t begin = b * block;
    const size_t len = std::min(block, n - begin);
    int64_t codes = 0;  // at most 65536 x 127^2 per block
    for (size_t i = 0; i < len; ++i) codes += int32_t{q[begin + i]} * int32_t{q[begin + i]};
    total += static_cast<double>(scale) * static_cast<double>(scale) * static_cast<double>(codes);
  }
  return total;
}

double TopKSumSquares(const uint8_t* raw, size_t n, size_t k) {
  float scale;
  std::memcpy(&scale, raw, sizeof(scale));
  const auto* q = reinterpret_cast<const int8_t*>(raw + 4 + (n + 7) / 8);
  int64_t codes = 0;
  for (size_t j = 0; j < k; ++j) codes += int32_t{q[j]} * int32_t{q[j]};
  return static_cast<double>(scale) * static_cast<double>(scale) * static_cast<double>(codes);
}

size_t DecodeInt8(const uint8_t* raw, size_t n, size_t block, float* out) {
  const size_t blocks = static_cast<size_t>(Int8Blocks(n, block));
  const size_t bad = FirstBadInt8Scale(raw, blocks);
  if (bad != blocks) return bad;
  const auto* q = reinterpret_cast<const int8_t*>(raw + 4 * blocks);
  for (size_t b = 0; b < blocks; ++b) {
    float scale;
    std::memcpy(&scale, raw + 4 * b, sizeof(scale));
    const size_t begin = b * block;
    const size_t len = std::min(block, n - begin);
    for (size_t i = 0; i < len; ++i) out[begin + i] = static_cast<float>(q[begin + i]) * scale;
  }
  return blocks;
}

size_t EncodeTopK(const float* v, float* r, size_t n, size_t k, uint8_t* raw, uint32_t* order) {
  // x = v + r is formed in place in r when there is one (r then ends as x - decoded).
  float* x = r;
  for (size_t i = 0; i < n; ++i) {
    const float xi = r ? v[i] + r[i] : v[i];
    if (!std::isfinite(xi)) return i;
    if (r) r[i] = xi;
  }
  const float* xs = r ? r : v;
  for (size_t i = 0; i < n; ++i) order[i] = static_cast<uint32_t>(i);
  k = std::min(k, n);
  if (k < n) {
    std::nth_element(order, order + k, order + n,
                     [xs](uint32_t a, uint32_t b) { return std::fabs(xs[a]) > std::fabs(xs[b]); });
  }
  std::sort(order, order + k);  // the kept values in index order
  float absmax = 0;
  for (size_t j = 0; j < k; ++j) absmax = std::max(absmax, std::fabs(xs[order[j]]));
  const float scale = absmax < kInt8MinAbsmax ? 0.0f : absmax / 127.0f;
  std::memcpy(raw, &scale, 4);
  uint8_t* bitmap = raw + 4;
  std::memset(bitmap, 0, (n + 7) / 8);
  auto* q = reinterpret_cast<int8_t*>(bitmap + (n + 7) / 8);
  for (size_t j = 0; j < k; ++j) {
    const uint32_t i = order[j];
    bitmap[i / 8] = static_cast<uint8_t>(bitmap[i / 8] | (1u << (i % 8)));
    const float qf = scale > 0 ? std::nearbyint(xs[i] / scale) : 0.0f;
    q[j] = static_cast<int8_t>(std::clamp(qf, -127.0f, 127.0f));
  }
  if (x) {  // error feedback: what was sent leaves the residual
    for (size_t j = 0; j < k; ++j) x[order[j]] -= static_cast<float>(q[j]) * scale;
  }
  return n;
}

bool CheckTopK(const uint8_t* raw, size_t n, size_t k) {
  if (k > n || FirstBadInt8Scale(raw, 1) != 1) return false;
  const uint8_t* bitmap = raw + 4;
  const size_t bytes = (n + 7) / 8;
  size_t set = 0;
  for (size_t b = 0; b < bytes; ++b) set += static_cast<size_t>(std::popcount(bitmap[b]));
  if (n % 8 != 0 && (bitmap[bytes - 1] >> (n % 8)) != 0) return false;  // bits past the end
  if (set != k) return false;
  const auto* q = reinterpret_cast<const int8_t*>(bitmap + bytes);
  for (size_t j = 0; j < k; ++j) {
    if (q[j] == -128) return false;
  }
  return true;
}

bool DecodeTopK(const uint8_t* raw, size_t n, size_t k, float* out) {
  if (!CheckTopK(raw, n, k)) return false;
  float scale;
  std::memcpy(&scale, raw, 4);
  const uint8_t* bitmap = raw + 4;
  const auto* q = reinterpret_cast<const int8_t*>(bitmap + (n + 7) / 8);
  size_t j = 0;
  for (size_t i = 0; i < n; ++i) {
    const bool kept = (bitmap[i / 8] >> (i % 8)) & 1u;
    out[i] = kept ? static_cast<float>(q[j]) * scale : 0.0f;
    j += kept;
  }
  return true;
}

}  // namespace fedps::codec_internal
