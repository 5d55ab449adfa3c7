// Element kernels of the codecs: byte-plane split/join, bf16 rounding, blockwise
// int8 quantisation, each fused with error feedback. Plain loops over raw
// pointers that the compiler vectorises; no allocation, no zstd. The frame
// format they feed is described in compression/codec.h.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace fedps::codec_internal {

// Round to nearest even; NaN -> quiet NaN with the same sign; overflow -> +-Inf.
inline uint16_t FloatToBf16(float x) {
  const uint32_t bits = std::bit_cast<uint32_t>(x);
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (bits >> 16) | 0x0040u;
  return static_cast<uint16_t>((bits & 0x7FFFFFFFu) > 0x7F800000u ? quiet_nan : rounded);
}

inline float Bf16ToFloat(uint16_t b) { return std::bit_cast<float>(uint32_t{b} << 16); }

// int8 blocks whose absmax is below this decode as zeros (and feed back whole).
inline constexpr float kInt8MinAbsmax = 1e-30f;

// Scale blocks in a frame of `count` values. for `count` values.
inline uint64_t Int8Blocks(uint64_t count, uint64_t block) { return (count + block - 1) / block; }

// fp32: x = v (+ r, then r = 0) into 4 planes of n bytes at `planes`.
void EncodeFp32(const float* v, float* r, size_t n, uint8_t* planes);
void DecodeFp32(const uint8_t* planes, size_t n, float* out);

// bf16: 2 planes of n bytes. r may be null (no error feedback).
void EncodeBf16(const float* v, float* r, size_t n, uint8_t* planes);
void DecodeBf16(const uint8_t* planes, size_t n, float* out);
// bf16 bit patterns (already rounded) into the same 2 planes.
void SplitBf16Planes(const uint16_t* bits, size_t n, uint8_t* planes);

// int8: raw = Int8Blocks(n, block) fp32 scales, then n int8 values. Returns the
// index of the first non-finite input (after adding r) or n when all are finite;
// on a non-finite input the output is unspecified and r is updated for the blocks
// before the one that holds it (checking first would cost a second pass).
size_t EncodeInt8(const float* v, float* r, size_t n, size_t block, uint8_t* raw);
// Returns the index of the first bad scale (negative, not finite, or so large that
// 127 * scale overflows), or
// Int8Blocks(n, block) when all scales are sound; `out` is written only if sound.
size_t DecodeInt8(const uint8_t* raw, size_t n, size_t block, float* out);

// top-k: raw = fp32 scale, ceil(n/8) bitmap bytes (bit j % 8 of byte j / 8 set: value j is
// kept), then the k kept values as int8 in index order; a kept value decodes to q * scale,
// the others to 0, scale = absmax of the kept values / 127 (0 below kInt8MinAbsmax).
inline uint64_t TopKRawBytes(uint64_t n, uint64_t k) { return 4 + (n + 7) / 8 + k; }
// Codes the k largest |v + r| of n values (ties: any), with `order` scratch of n entries.
// With r (error feedback): r = (v + r) - decoded, so what was not sent stays in r. Returns
// the index of the first non-finite input or n (then nothing is coded).
size_t EncodeTopK(const float* v, float* r, size_t n, size_t k, uint8_t* raw, uint32_t* order);
// Whether a top-k payload is sound: exactly k bits set within n, a sound scale (as int8's),
// no -128 value. DecodeTopK writes `out` (all n values) only when it is.
bool CheckTopK(const uint8_t* raw, size_t n, size_t k);
bool DecodeTopK(const uint8_t* raw, size_t n, size_t k, float* out);

// The first value among n whose two most significant byte planes (`hi`: bits 31..24 of
// fp32 or 15..8 of bf16, sign and 7 exponent bits; `lo`: the next 8 bits, whose top one
// is the last exponent bit) make it NaN or infinite (exponent all ones); n when all are
// finite. In the same pass, *sum_squares = the sum of the squares of the bfloat16 values
// those two planes hold (for fp32: each value truncated to its top 16 bits, so within
// 2^-7 of it, and never above it in magnitude); not finite when a value is not.
size_t FirstNonFinite(const uint8_t* hi, const uint8_t* lo, size_t n, double* sum_squares);
// The first of `blocks` int8 scales at `raw` that DecodeInt8 would refuse, or `blocks`.
size_t FirstBadInt8Scale(const uint8_t* raw, size_t blocks);
// The sum of the squares of what an int8 payload (sound scales: FirstBadInt8Scale) and a
// top-k payload (sound: CheckTopK) decode to, computed from the codes and scales without
// decoding: per block scale^2 x the sum of q^2.
double Int8SumSquares(const uint8_t* raw, size_t n, size_t block);
double TopKSumSquares(const uint8_t* raw, size_t n, size_t k);

}  // namespace fedps::codec_internal
