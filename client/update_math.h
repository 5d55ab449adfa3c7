// Checks a client makes on what it pulls and how the shards' slices tile the model
// (plain fp32 spans, no LibTorch). The pseudo-gradient and its coding are in
// client/device_update.h.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "model/layout.h"

namespace fedps {

// Index of the first non-finite value, or -1 when all are finite.
int64_t FirstNonFinite(std::span<const float> values);

// Checks that `slices` tile [0, total) in order without gaps or overlaps.
Status CheckSlicesTile(const std::vector<SliceRange>& slices, int64_t total);

}  // namespace fedps
