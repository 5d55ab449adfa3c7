#include "client/update_math.h"

#include <cmath>

namespace fedps {

int64_t FirstNonFinite(std::span<const float> values) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

Status CheckSlicesTile(const std::vector<SliceRange>& slices, int64_t total) {
  int64_t at = 0;
  for (size_t i = 0; i < slices.size(); ++i) {
    if (slices[i].begin != at || slices[i].end <= slices[i].begin) {
      return FailedPrecondition("shard " + std::to_string(i) + " holds [" + std::to_string(slices[i].begin) +
                                ", " + std::to_string(slices[i].end) + ") but the next slice must start at " +
                                std::to_string(at));
    }
    at = slices[i].end;
  }
  if (at != total) {
    return FailedPrecondition("the shards' slices cover [0, " + std::to_string(at) + ") but the model has " +
                              std::to_string(total) + " parameters");
  }
  return Status::Ok();
}

}  // namespace fedps
