// Hash64: XXH3-64 of xxHash (https://xxhash.com, XXH3_64bits, seed 0), the 64-bit hash of
// the frame checksum (compression/codec.h, docs/compression.md).
//
// It guards codec frames against corruption in transit and on disk (bit flips,
// truncation, spliced buffers); it is not a MAC and does not resist a forger who can
// recompute it (TLS does that job). XXH3 is frozen since xxHash 0.8.0, so every
// implementation gives the same value: Python's `xxhash.xxh3_64_intdigest(data)`, the
// `xxhsum -H3` command, Go's and Rust's ports. Throughput is several GB/s per core,
// well above zstd's, so checking costs little. Pure functions; any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string_view>

namespace fedps {

// XXH3-64 of `bytes`.
uint64_t Hash64(std::string_view bytes);

// XXH3-64 of the concatenation of `parts` (the same value as Hash64 of the joined bytes,
// without joining them).
uint64_t Hash64(std::initializer_list<std::string_view> parts);

}  // namespace fedps
