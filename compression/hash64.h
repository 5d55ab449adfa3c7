// Hash64: a fast non-cryptographic 64-bit hash for frame integrity checks.
//
// It guards codec frames against corruption in transit and on disk (bit flips,
// truncation, spliced buffers); it is not a MAC and does not resist a forger who
// can recompute it (TLS does that job). Design, written for fedps:
//   - four 64-bit lanes consume 32-byte stripes; each lane step is
//       lane = rotl(lane ^ (word * kMulA), 31) * kMulB
//     which is a bijection of the lane for a fixed word and of the word for a fixed
//     lane, so any single changed word changes its lane's final value;
//   - the tail (< 32 bytes) goes word by word into lane 0, the last partial word
//     zero-padded; the total length is mixed into the result so padding is unambiguous;
//   - lanes are folded with a bijective 64-bit finaliser (xorshift-multiply: the
//     SplitMix64 mixing function of Steele, Lea and Flood, OOPSLA 2014).
// Throughput is several GB/s per core, well above zstd's, so checking costs little.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace fedps {

uint64_t Hash64(const void* data, size_t size, uint64_t seed = 0);

inline uint64_t Hash64(std::string_view bytes, uint64_t seed = 0) {
  return Hash64(bytes.data(), bytes.size(), seed);
}

}  // namespace fedps
