#include "compression/hash64.h"

#include <bit>
#include <cstring>

namespace fedps {
namespace {

constexpr uint64_t kMulA = 0x9E3779B97F4A7C15ull;  // 2^64 / golden ratio, odd
constexpr uint64_t kMulB = 0xD6E8FEB86659FD93ull;  // odd
constexpr uint64_t kMix1 = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t kMix2 = 0x94D049BB133111EBull;

inline uint64_t Load64(const unsigned char* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof(v));
  if constexpr (std::endian::native == std::endian::big) v = __builtin_bswap64(v);
  return v;
}

inline uint64_t Step(uint64_t lane, uint64_t word) {
  return std::rotl(lane ^ (word * kMulA), 31) * kMulB;
}

// Bijective finaliser: every input bit affects every output bit.
inline uint64_t Finalize(uint64_t x) {
  x ^= x >> 30;
  x *= kMix1;
  x ^= x >> 27;
  x *= kMix2;
  x ^= x >> 31;
  return x;
}

}  // namespace

uint64_t Hash64(const void* data, size_t size, uint64_t seed) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t lane[4] = {seed + kMulA, seed ^ kMulB, seed - kMix1, ~seed + kMix2};
  size_t remaining = size;
  while (remaining >= 32) {
    lane[0] = Step(lane[0], Load64(p));
    lane[1] = Step(lane[1], Load64(p + 8));
    lane[2] = Step(lane[2], Load64(p + 16));
    lane[3] = Step(lane[3], Load64(p + 24));
    p += 32;
    remaining -= 32;
  }
  while (remaining >= 8) {
    lane[0] = Step(lane[0], Load64(p));
    p += 8;
    remaining -= 8;
  }
  if (remaining > 0) {
    unsigned char last[8] = {};
    std::memcpy(last, p, remaining);
    lane[0] = Step(lane[0], Load64(last));
  }
  uint64_t h = Finalize(seed ^ (static_cast<uint64_t>(size) * kMulA));
  for (uint64_t v : lane) h = Finalize(h ^ v) + kMulB;
  return Finalize(h);
}

}  // namespace fedps
