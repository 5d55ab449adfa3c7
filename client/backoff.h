// Backoff: the retry schedule of fedps-client when a shard or Redis is unavailable.
//
// Delays grow exponentially from `initial_ms` (x `multiplier` per attempt) and are capped at
// `max_ms`. With a jitter seed the delay of attempt k is drawn uniformly from
// [d_k / 2, d_k] ("equal jitter"), so that clients that failed together do not retry in
// lock step; the generator is seeded, so a schedule is reproducible. A shard's
// retry_after_ms hint raises a delay (never lowers it) and is still capped at max_ms
// unless the hint is larger: the shard knows best how long it will be busy.
//
// Threads: a Backoff belongs to one retry loop (one thread).
#pragma once

#include <cstdint>
#include <optional>
#include <random>

namespace fedps {

class Backoff {
 public:
  // initial_ms >= 1 and max_ms >= initial_ms are enforced by clamping. jitter_seed 0: no
  // jitter (the deterministic schedule initial, 2 initial, 4 initial, ..., max).
  Backoff(int64_t initial_ms, int64_t max_ms, double multiplier = 2.0, uint64_t jitter_seed = 0);

  // The delay before the next retry; advances the schedule.
  int64_t NextDelayMs(std::optional<int64_t> retry_after_ms = std::nullopt);
  // Back to the first delay (after a success).
  void Reset() { attempts_ = 0; }
  // Delays handed out since the last Reset().
  int attempts() const { return attempts_; }

 private:
  int64_t initial_ms_;
  int64_t max_ms_;
  double multiplier_;
  bool jitter_;
  std::mt19937_64 rng_;
  int attempts_ = 0;
};

}  // namespace fedps
