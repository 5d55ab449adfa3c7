#include "client/update_math.h"

#include <cmath>

namespace fedps {

Status PseudoGradient(std::span<const float> pulled, std::span<const float> trained,
                      std::span<float> delta) {
  if (pulled.size() != trained.size() || pulled.size() != delta.size()) {
    return InvalidArgument("pseudo-gradient: sizes differ (pulled " + std::to_string(pulled.size()) +
                           ", trained " + std::to_string(trained.size()) + ", delta " +
                           std::to_string(delta.size()) + ")");
  }
  const float* p = pulled.data();
  const float* t = trained.data();
  float* d = delta.data();
  const size_t n = delta.size();
  for (size_t i = 0; i < n; ++i) d[i] = p[i] - t[i];
  return Status::Ok();
}

int64_t FirstNonFinite(std::span<const float> values) {
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) return static_cast<int64_t>(i);
  }
  return -1;
}

StatusOr<EncodedSlice> EncodeSlice(Codec& codec, std::span<const float> delta,
                                   std::span<float> residual) {
  if (!residual.empty() && residual.size() != delta.size()) {
    return InvalidArgument("residual has " + std::to_string(residual.size()) + " values, delta " +
                           std::to_string(delta.size()));
  }
  if (int64_t bad = FirstNonFinite(delta); bad >= 0) {
    return InvalidArgument("pseudo-gradient has a non-finite value at element " + std::to_string(bad) +
                           " (did local training diverge?)");
  }
  EncodedSlice out;
  ASSIGN_OR_RETURN(out.frames, codec.Encode(delta, residual));
  out.bytes = Codec::TotalBytes(out.frames);
  out.raw_bytes = 4 * static_cast<uint64_t>(delta.size());
  return out;
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
