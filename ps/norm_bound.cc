// NormBound: see the header.
#include "ps/norm_bound.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace fedps {

std::optional<double> NormBound::Limit() const {
  if (!options_.enabled || size() < options_.warmup || !(median_ > 0)) return std::nullopt;
  return options_.factor * median_;
}

void NormBound::Record(double norm) {
  if (!std::isfinite(norm)) return;
  recent_.push_back(norm);
  while (size() > options_.window) recent_.pop_front();
  std::vector<double> sorted(recent_.begin(), recent_.end());  // at most `window` values
  auto mid = sorted.begin() + static_cast<std::ptrdiff_t>(sorted.size() / 2);
  std::nth_element(sorted.begin(), mid, sorted.end());
  median_ = *mid;
}

}  // namespace fedps
