// The arithmetic of one update, on plain fp32 spans (no LibTorch): the pseudo-gradient
// Delta = pulled - trained, its per-shard encoding with an error-feedback residual, and
// the checks a client makes on what it pulled.
//
// Error feedback (compression/codec.h): per shard slice the client keeps a residual r;
// encoding codes x = Delta + r and leaves r = x - decode(x), so what the shards receive
// over many updates sums to what the client meant to send, up to the last residual.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "compression/codec.h"
#include "model/layout.h"

namespace fedps {

// delta[i] = pulled[i] - trained[i] in fp32. InvalidArgument when the sizes differ.
Status PseudoGradient(std::span<const float> pulled, std::span<const float> trained,
                      std::span<float> delta);

// Index of the first non-finite value, or -1 when all are finite.
int64_t FirstNonFinite(std::span<const float> values);

struct EncodedSlice {
  std::vector<std::string> frames;  // frame i covers [i * E, min((i + 1) * E, n))
  uint64_t bytes = 0;               // encoded bytes, headers included
  uint64_t raw_bytes = 0;           // 4 * n: what fp32 would have cost
};

// Encodes one shard's Delta slice in frames of `codec.options().chunk_elements` values.
// `residual` is empty (no error feedback) or delta.size() long; it is updated in place.
// Non-finite values in Delta are InvalidArgument (a diverged client must not push).
StatusOr<EncodedSlice> EncodeSlice(Codec& codec, std::span<const float> delta,
                                   std::span<float> residual);

// Checks that `slices` tile [0, total) in order without gaps or overlaps.
Status CheckSlicesTile(const std::vector<SliceRange>& slices, int64_t total);

}  // namespace fedps
