// Outer optimizers: how a shard turns clients' pseudo-gradients into steps on its slice.
//
// Per element of one shard's slice x (n floats). Update i carries the pseudo-gradient
// Delta_i = pulled - trained (it points uphill, like a gradient, so steps subtract it)
// and a weight w_i (Weight() below: staleness weight, times a token ratio if asked).
//
// Aggregation (FedBuff, Nguyen et al. 2022), buffer_size B:
//   B = 1:  every update is one step, on g = w_i * Delta_i.
//   B > 1:  S += w_i * Delta_i for B updates; then one step on g = S / B; S = 0.
//   Dividing by B, not by sum(w_i), is FedBuff's rule: a stale update (w < 1) shrinks the
//   step instead of being renormalised away. With every w_i = 1 and sgd at lr 1, the new
//   slice is x - mean(x - x_i) = mean(x_i), the average of the B trained models (Photon's
//   FedAvg with server lr 1).
//
// Update weight (Weight()):
//   w_i = w(s_i)                                          weight_by_tokens = false
//   w_i = w(s_i) * min(tokens_i / reference_tokens, max_token_ratio)    otherwise
//
// Rules: step t = 1, 2, ... on the aggregated g, lr = eta:
//   sgd:       x -= eta * g
//   nesterov:  m = mu * m + g;  x -= eta * (g + mu * m)
//              (PyTorch SGD with nesterov=True, dampening 0; DiLoCo: eta 0.7, mu 0.9)
//   delayed_nesterov (Liu et al. 2024, asynchronous Local-SGD), period N, gradient
//   scale c (default 1/N). Every step ("arrival"):
//              D += g;  x -= eta * c * g                     (plain part, seen at once)
//     and on every N-th arrival, after the plain part:
//              m = mu * m + D / N;  x -= eta * mu * m;  D = 0 (delayed momentum)
//     Momentum moves only once per N arrivals, on their mean, so one stale update cannot
//     swing it. With c = 1/N the N arrivals together move x by -eta * (mean(g) + mu * m):
//     exactly one nesterov step on the mean of the N pseudo-gradients. c = 1 applies each
//     pseudo-gradient in full on arrival. N = 1, c = 1 is nesterov.
//   adam:      m = b1 * m + (1 - b1) * g;  v = b2 * v + (1 - b2) * g^2;
//              x -= eta * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//              (computed as PyTorch does: x -= (eta / bc1) * m / (sqrt(v) / sqrt(bc2) + eps))
//
// Outer warm-up, warmup_steps W >= 0: step t uses eta_t = eta * min(1, t / W) in place of
// eta in every rule above (W = 0: eta throughout). In the demo-size study of
// docs/quality.md it made delayed Nesterov worse; it is there for longer runs to try.
//
// State (checkpointed by the shard, restored bit for bit): tensors "buffer" (S, B > 1),
// "momentum" (nesterov, delayed_nesterov), "dn_sum" (D), "adam_m", "adam_v"; scalars in
// StateJson(): steps, updates, pending (updates in S), dn_arrivals.
//
// Arithmetic is fp32, element by element, in a fixed order, so the same inputs give the
// same bits (also when the loops run in pieces on a thread pool). Not thread-safe: the
// shard's apply thread owns the optimizer.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "common/config.h"
#include "common/status.h"
#include "compression/thread_pool.h"

namespace fedps {

struct OuterOptimizerOptions {
  // sgd | nesterov | delayed_nesterov | adam.
  std::string name = "delayed_nesterov";
  // Outer learning rate eta; 0: the optimizer's default (sgd 1.0, nesterov 0.7,
  // delayed_nesterov 0.7, adam 1e-3).
  double lr = 0;
  // Momentum mu of nesterov and delayed_nesterov, in [0, 1).
  double momentum = 0.9;
  // delayed_nesterov: momentum moves every N arrivals (steps), N >= 1.
  int64_t dn_period = 4;
  // delayed_nesterov: plain part eta * c * g on every arrival; -1: c = 1 / dn_period.
  double dn_gradient_scale = -1;
  // adam: moment decays and epsilon.
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  // Outer lr warm-up: step t (1, 2, ...) uses lr * min(1, t / warmup_steps); 0: off.
  int64_t warmup_steps = 0;
  // FedBuff buffer: updates per step, B >= 1 (1: step on every update).
  int64_t buffer_size = 1;
  // Multiply each update's staleness weight by tokens / reference_tokens.
  bool weight_by_tokens = false;
  // Tokens of a "full" update (e.g. local steps x batch x sequence); > 0 when
  // weight_by_tokens.
  int64_t reference_tokens = 0;
  // Caps tokens / reference_tokens, so one client claiming many tokens cannot dominate.
  double max_token_ratio = 4;
};

// The options a shard's [ps] section asks for (optimizer, outer_lr, momentum, dn_period,
// dn_gradient_scale, outer_warmup_steps, buffer_size, weight_by_tokens), with the reference
// tokens the shard settled on.
OuterOptimizerOptions OuterOptionsFromConfig(const PsOptions& ps, int64_t reference_tokens);

class OuterOptimizer {
 public:
  enum class Rule { kSgd, kNesterov, kDelayedNesterov, kAdam };
  using NamedTensors = std::vector<std::pair<std::string, std::span<const float>>>;

  // Validates the options; n (> 0) is the slice length. All state starts at zero.
  static StatusOr<std::unique_ptr<OuterOptimizer>> Create(const OuterOptimizerOptions& options,
                                                          int64_t n);

  OuterOptimizer(const OuterOptimizer&) = delete;
  OuterOptimizer& operator=(const OuterOptimizer&) = delete;

  // The weight of one update: staleness_weight (from StalenessPolicy::Weight), times
  // min(tokens / reference_tokens, max_token_ratio) when weight_by_tokens.
  // InvalidArgument for a non-finite or negative staleness weight, or tokens <= 0 when
  // weight_by_tokens.
  StatusOr<double> Weight(double staleness_weight, int64_t tokens) const;

  // Folds one update (pseudo-gradient delta, weight >= 0) into the optimizer and steps
  // when the buffer is full. Returns true when params changed (a step happened).
  // InvalidArgument, with nothing changed, when a size is not n, the weight is negative
  // or not finite, or delta holds a NaN or infinity.
  StatusOr<bool> Apply(std::span<float> params, std::span<const float> delta, double weight);

  Rule rule() const { return rule_; }
  const std::string& name() const { return options_.name; }
  const OuterOptimizerOptions& options() const { return options_; }
  double lr() const { return lr_; }  // resolved (never 0)
  // The lr of optimizer step t (1-based): lr() * min(1, t / warmup_steps).
  double LrAtStep(int64_t t) const;
  int64_t n() const { return n_; }
  int64_t steps() const { return steps_; }      // optimizer steps taken
  int64_t updates() const { return updates_; }  // updates folded in (Apply calls that succeeded)
  int64_t pending() const { return pending_; }  // updates in the buffer, not yet stepped

  // Runs the element loops on `pool` (not owned; null: the calling thread alone). The
  // result is bit for bit the same for any pool.
  void SetThreadPool(ThreadPool* pool) { pool_ = pool; }

  // Checkpointing: the tensors (views into the optimizer; valid until the next Apply or
  // LoadState) and the scalar state. A fresh optimizer made with the same options and n
  // that loads both continues bit for bit.
  NamedTensors StateTensors() const;
  nlohmann::json StateJson() const;
  // All or nothing: on error the optimizer is unchanged. FailedPrecondition when the
  // state belongs to another optimizer, slice length, or an incompatible buffer_size /
  // dn_period (only refused while updates are pending); DataLoss when it is malformed.
  Status LoadState(const nlohmann::json& state, const NamedTensors& tensors);

 private:
  OuterOptimizer(const OuterOptimizerOptions& options, Rule rule, double lr, int64_t n);
  // One optimizer step on direction scale * g.
  void Step(std::span<float> x, std::span<const float> g, float scale);
  // Names of the tensors this configuration checkpoints.
  std::vector<std::string> TensorNames() const;
  // body(begin, end) over [0, n) in pieces, on pool_ when there is one.
  void ForRanges(const std::function<void(int64_t, int64_t)>& body) const;

  OuterOptimizerOptions options_;
  Rule rule_;
  double lr_;
  int64_t n_;
  int64_t steps_ = 0;
  int64_t updates_ = 0;
  int64_t pending_ = 0;
  int64_t dn_arrivals_ = 0;  // delayed_nesterov: arrivals summed into dn_sum
  std::map<std::string, std::vector<float>> tensors_;  // by checkpoint name, each n floats
  ThreadPool* pool_ = nullptr;
};

}  // namespace fedps
