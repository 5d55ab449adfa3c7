// NormBound: a shard's bound on the norm of one update (issue 10, item 5; docs/security.md,
// "Update norm bound").
//
// What it decides: whether an update's slice norm (the square root of the sum of squares
// Codec::CheckFrame computes while it checks each pushed frame, so no extra pass over the
// values) exceeds `factor` x the median of the slice norms of the last `window` updates
// this shard applied. Such an update is refused at push time, before it is staged: the
// shard answers BAD_REQUEST and never answers STAGED, so the update is never committed and
// no shard applies it. That keeps the commit log the only thing shards replay: whether an
// update is applied is decided by the log alone, and every shard stays bit-identical. A
// clip at apply time would have to compute the same factor on every shard from the
// committed log; refusing before the commit needs no agreement (one shard refusing its
// slice is enough to keep the update out).
//
// The median is of applied updates only (committed by the federation, so an update that
// is pushed and never committed does not move it), and of their norms on this shard's
// slice; each shard keeps its own. The bound holds once `warmup` norms are known (before:
// nothing is refused), and not while the median is 0 (all-zero updates).
//
// Threads: none of its own, no lock: guarded by the owner's mutex (ShardCore::mu_).
#pragma once

#include <cstdint>
#include <deque>
#include <optional>

namespace fedps {

struct NormBoundOptions {
  bool enabled = true;   // false: nothing is refused for its norm
  double factor = 10;    // refuse above factor x median (> 1)
  int64_t window = 50;   // applied updates the median is over
  int64_t warmup = 5;    // norms needed before the bound holds (1 .. window)
};

class NormBound {
 public:
  explicit NormBound(NormBoundOptions options) : options_(options) {}

  // The largest norm accepted now: factor x median; none while disabled, warming up, or
  // the median is 0.
  std::optional<double> Limit() const;
  // The slice norm of an applied update (not finite: ignored); the oldest leaves the window.
  void Record(double norm);
  // Of the window (the upper median for an even count); 0 when empty.
  double median() const { return median_; }
  int64_t size() const { return static_cast<int64_t>(recent_.size()); }
  const NormBoundOptions& options() const { return options_; }

 private:
  const NormBoundOptions options_;
  std::deque<double> recent_;  // oldest first, at most options_.window
  double median_ = 0;          // of recent_, recomputed by Record
};

}  // namespace fedps
