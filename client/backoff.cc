#include "client/backoff.h"

#include <algorithm>
#include <cmath>

namespace fedps {

Backoff::Backoff(int64_t initial_ms, int64_t max_ms, double multiplier, uint64_t jitter_seed)
    : initial_ms_(std::max<int64_t>(1, initial_ms)),
      max_ms_(std::max(std::max<int64_t>(1, initial_ms), max_ms)),
      multiplier_(std::isfinite(multiplier) && multiplier >= 1.0 ? multiplier : 2.0),
      jitter_(jitter_seed != 0),
      rng_(jitter_seed) {}

int64_t Backoff::NextDelayMs(std::optional<int64_t> retry_after_ms) {
  // initial * multiplier^attempts, computed in double and capped before converting.
  double d = static_cast<double>(initial_ms_) * std::pow(multiplier_, attempts_);
  int64_t delay = d >= static_cast<double>(max_ms_) ? max_ms_ : static_cast<int64_t>(d);
  ++attempts_;
  if (jitter_) {
    std::uniform_int_distribution<int64_t> pick(delay / 2, delay);
    delay = pick(rng_);
  }
  if (retry_after_ms && *retry_after_ms > delay) delay = *retry_after_ms;
  return std::max<int64_t>(1, delay);
}

}  // namespace fedps
