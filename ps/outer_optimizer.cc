// Outer optimizers over one shard's slice; the maths is at the top of outer_optimizer.h.
//
// The loops are plain element-wise loops over float spans (no LibTorch here): the shard
// is memory-bound, and each rule touches every element once per step; with a thread pool
// (SetThreadPool) they run in 1M-element pieces on all of its threads, same bits.
#include "ps/outer_optimizer.h"

#include <algorithm>
#include <atomic>
#include <bit>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

namespace fedps {
namespace {

constexpr int kStateFormat = 1;
constexpr char kBuffer[] = "buffer";
constexpr char kMomentum[] = "momentum";
constexpr char kDnSum[] = "dn_sum";
constexpr char kAdamM[] = "adam_m";
constexpr char kAdamV[] = "adam_v";

bool AllFinite(std::span<const float> values) {
  // A float is NaN or infinite exactly when its exponent bits are all ones. An integer
  // OR-reduction (no early exit) keeps the loop simple enough to vectorise.
  uint32_t bad = 0;
  for (float v : values) {
    bad |= static_cast<uint32_t>((std::bit_cast<uint32_t>(v) & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

std::string Num(double v) {
  nlohmann::json j = v;  // shortest round-trip form ("0.7", not "0.700000")
  return j.dump();
}

}  // namespace

OuterOptimizerOptions OuterOptionsFromConfig(const PsOptions& ps, int64_t reference_tokens) {
  OuterOptimizerOptions o;
  o.name = ps.optimizer;
  o.lr = ps.outer_lr;
  o.momentum = ps.momentum;
  o.dn_period = ps.dn_period;
  o.dn_gradient_scale = ps.dn_gradient_scale;
  o.warmup_steps = ps.outer_warmup_steps;
  o.buffer_size = ps.buffer_size;
  o.weight_by_tokens = ps.weight_by_tokens;
  o.reference_tokens = reference_tokens;
  return o;
}

StatusOr<std::unique_ptr<OuterOptimizer>> OuterOptimizer::Create(
    const OuterOptimizerOptions& options, int64_t n) {
  Rule rule;
  double default_lr;
  if (options.name == "sgd") {
    rule = Rule::kSgd;
    default_lr = 1.0;
  } else if (options.name == "nesterov") {
    rule = Rule::kNesterov;
    default_lr = 0.7;
  } else if (options.name == "delayed_nesterov") {
    rule = Rule::kDelayedNesterov;
    default_lr = 0.7;
  } else if (options.name == "adam") {
    rule = Rule::kAdam;
    default_lr = 1e-3;
  } else {
    return InvalidArgument("outer optimizer '" + options.name +
                           "' is not one of sgd, nesterov, delayed_nesterov, adam");
  }
  if (n <= 0)
    return InvalidArgument("outer optimizer: slice length " + std::to_string(n) + " <= 0");
  if (!std::isfinite(options.lr) || options.lr < 0) {
    return InvalidArgument("outer lr " + Num(options.lr) + " must be > 0 (or 0 for the default)");
  }
  if (!(options.momentum >= 0 && options.momentum < 1)) {
    return InvalidArgument("outer momentum " + Num(options.momentum) + " must be in [0, 1)");
  }
  if (options.dn_period < 1) {
    return InvalidArgument("dn_period " + std::to_string(options.dn_period) + " must be >= 1");
  }
  if (!(options.dn_gradient_scale == -1 ||
        (options.dn_gradient_scale >= 0 && options.dn_gradient_scale <= 1))) {
    return InvalidArgument("dn_gradient_scale " + Num(options.dn_gradient_scale) +
                           " must be in [0, 1], or -1 for 1/dn_period");
  }
  if (!(options.beta1 >= 0 && options.beta1 < 1) || !(options.beta2 >= 0 && options.beta2 < 1)) {
    return InvalidArgument("adam betas (" + Num(options.beta1) + ", " + Num(options.beta2) +
                           ") must be in [0, 1)");
  }
  if (!(options.eps > 0) || !std::isfinite(options.eps)) {
    return InvalidArgument("adam eps " + Num(options.eps) + " must be > 0");
  }
  if (options.warmup_steps < 0) {
    return InvalidArgument("outer warmup_steps " + std::to_string(options.warmup_steps) + " must be >= 0");
  }
  if (options.buffer_size < 1) {
    return InvalidArgument("buffer_size " + std::to_string(options.buffer_size) + " must be >= 1");
  }
  if (options.weight_by_tokens && options.reference_tokens <= 0) {
    return InvalidArgument("weight_by_tokens needs reference_tokens > 0");
  }
  if (!(options.max_token_ratio > 0) || !std::isfinite(options.max_token_ratio)) {
    return InvalidArgument("max_token_ratio " + Num(options.max_token_ratio) + " must be > 0");
  }
  const double lr = options.lr == 0 ? default_lr : options.lr;
  return std::unique_ptr<OuterOptimizer>(new OuterOptimizer(options, rule, lr, n));
}

OuterOptimizer::OuterOptimizer(const OuterOptimizerOptions& options, Rule rule, double lr,
                               int64_t n)
    : options_(options), rule_(rule), lr_(lr), n_(n) {
  for (const std::string& name : TensorNames()) {
    tensors_[name].assign(static_cast<size_t>(n), 0.0f);
  }
}

std::vector<std::string> OuterOptimizer::TensorNames() const {
  std::vector<std::string> names;
  if (options_.buffer_size > 1) names.push_back(kBuffer);
  switch (rule_) {
    case Rule::kSgd:
      break;
    case Rule::kNesterov:
      names.push_back(kMomentum);
      break;
    case Rule::kDelayedNesterov:
      names.push_back(kMomentum);
      names.push_back(kDnSum);
      break;
    case Rule::kAdam:
      names.push_back(kAdamM);
      names.push_back(kAdamV);
      break;
  }
  return names;
}

StatusOr<double> OuterOptimizer::Weight(double staleness_weight, int64_t tokens) const {
  if (!std::isfinite(staleness_weight) || staleness_weight < 0) {
    return InvalidArgument("staleness weight " + Num(staleness_weight) +
                           " must be finite and >= 0");
  }
  if (!options_.weight_by_tokens) return staleness_weight;
  if (tokens <= 0) {
    return InvalidArgument("update has " + std::to_string(tokens) +
                           " tokens; weight_by_tokens needs > 0");
  }
  const double ratio =
      std::min(static_cast<double>(tokens) / static_cast<double>(options_.reference_tokens),
               options_.max_token_ratio);
  return staleness_weight * ratio;
}

StatusOr<bool> OuterOptimizer::Apply(std::span<float> params, std::span<const float> delta,
                                     double weight) {
  if (static_cast<int64_t>(params.size()) != n_ || static_cast<int64_t>(delta.size()) != n_) {
    return InvalidArgument("outer optimizer over " + std::to_string(n_) +
                           " elements got params of " + std::to_string(params.size()) +
                           " and delta of " + std::to_string(delta.size()));
  }
  if (!std::isfinite(weight) || weight < 0) {
    return InvalidArgument("update weight " + Num(weight) + " must be finite and >= 0");
  }
  std::atomic<bool> finite{true};
  ForRanges([&](int64_t b, int64_t e) {
    if (!AllFinite(delta.subspan(b, e - b))) finite = false;
  });
  if (!finite) return InvalidArgument("pseudo-gradient holds NaN or infinite values");

  ++updates_;
  if (options_.buffer_size == 1) {
    Step(params, delta, static_cast<float>(weight));
    return true;
  }
  float* s = tensors_[kBuffer].data();
  const float w = static_cast<float>(weight);
  ForRanges([&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) s[i] += w * delta[i];
  });
  if (++pending_ < options_.buffer_size) return false;
  Step(params, tensors_[kBuffer], 1.0f / static_cast<float>(options_.buffer_size));
  ForRanges([&](int64_t b, int64_t e) { std::fill(s + b, s + e, 0.0f); });
  pending_ = 0;
  return true;
}

void OuterOptimizer::ForRanges(const std::function<void(int64_t, int64_t)>& body) const {
  // Pieces of 1M elements: every element is computed exactly as in one serial loop, so
  // the result does not depend on the thread count.
  constexpr int64_t kPiece = int64_t{1} << 20;
  if (pool_ == nullptr || pool_->parallelism() == 1 || n_ <= kPiece) {
    body(0, n_);
    return;
  }
  pool_->ParallelFor(static_cast<size_t>((n_ + kPiece - 1) / kPiece), [&](size_t p) {
    const int64_t b = static_cast<int64_t>(p) * kPiece;
    body(b, std::min(n_, b + kPiece));
  });
}

double OuterOptimizer::LrAtStep(int64_t t) const {
  if (options_.warmup_steps <= 0 || t >= options_.warmup_steps) return lr_;
  return lr_ * static_cast<double>(t) / static_cast<double>(options_.warmup_steps);
}

void OuterOptimizer::Step(std::span<float> x, std::span<const float> g, float scale) {
  ++steps_;
  const double lr_t = LrAtStep(steps_);
  const float lr = static_cast<float>(lr_t);
  const float mu = static_cast<float>(options_.momentum);
  switch (rule_) {
    case Rule::kSgd: {
      ForRanges([&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) x[i] -= lr * (scale * g[i]);
      });
      break;
    }
    case Rule::kNesterov: {
      float* m = tensors_[kMomentum].data();
      ForRanges([&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const float d = scale * g[i];
          m[i] = mu * m[i] + d;
          x[i] -= lr * (d + mu * m[i]);
        }
      });
      break;
    }
    case Rule::kDelayedNesterov: {
      const int64_t period = options_.dn_period;
      const float c = options_.dn_gradient_scale < 0
                          ? 1.0f / static_cast<float>(period)
                          : static_cast<float>(options_.dn_gradient_scale);
      float* m = tensors_[kMomentum].data();
      float* sum = tensors_[kDnSum].data();
      if (++dn_arrivals_ < period) {
        ForRanges([&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) {
            const float d = scale * g[i];
            sum[i] += d;
            x[i] -= lr * (c * d);
          }
        });
      } else {
        const float inv_period = 1.0f / static_cast<float>(period);
        ForRanges([&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) {
            const float d = scale * g[i];
            x[i] -= lr * (c * d);
            m[i] = mu * m[i] + (sum[i] + d) * inv_period;
            x[i] -= lr * (mu * m[i]);
            sum[i] = 0.0f;
          }
        });
        dn_arrivals_ = 0;
      }
      break;
    }
    case Rule::kAdam: {
      const double t = static_cast<double>(steps_);
      const double bc1 = 1.0 - std::pow(options_.beta1, t);
      const double bc2 = 1.0 - std::pow(options_.beta2, t);
      const float b1 = static_cast<float>(options_.beta1);
      const float b2 = static_cast<float>(options_.beta2);
      const float step_size = static_cast<float>(lr_t / bc1);
      const float inv_sqrt_bc2 = static_cast<float>(1.0 / std::sqrt(bc2));
      const float eps = static_cast<float>(options_.eps);
      float* m = tensors_[kAdamM].data();
      float* v = tensors_[kAdamV].data();
      ForRanges([&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const float d = scale * g[i];
          m[i] = b1 * m[i] + (1.0f - b1) * d;
          v[i] = b2 * v[i] + (1.0f - b2) * (d * d);
          x[i] -= step_size * m[i] / (std::sqrt(v[i]) * inv_sqrt_bc2 + eps);
        }
      });
      break;
    }
  }
}

OuterOptimizer::NamedTensors OuterOptimizer::StateTensors() const {
  NamedTensors out;
  for (const auto& [name, values] : tensors_)
    out.emplace_back(name, std::span<const float>(values));
  return out;
}

nlohmann::json OuterOptimizer::StateJson() const {
  return nlohmann::json{
      {"format", kStateFormat},
      {"optimizer", options_.name},
      {"n", n_},
      {"buffer_size", options_.buffer_size},
      {"dn_period", options_.dn_period},
      {"steps", steps_},
      {"updates", updates_},
      {"pending", pending_},
      {"dn_arrivals", dn_arrivals_},
  };
}

Status OuterOptimizer::LoadState(const nlohmann::json& state, const NamedTensors& tensors) {
  auto get_int = [&state](const char* key) -> StatusOr<int64_t> {
    auto it = state.find(key);
    if (it == state.end() || !it->is_number_integer()) {
      return DataLoss(std::string("outer optimizer state: '") + key +
                      "' missing or not an integer");
    }
    return it->get<int64_t>();
  };
  if (!state.is_object()) return DataLoss("outer optimizer state is not a JSON object");
  ASSIGN_OR_RETURN(int64_t format, get_int("format"));
  if (format != kStateFormat) {
    return DataLoss("outer optimizer state format " + std::to_string(format) + " (expected " +
                    std::to_string(kStateFormat) + ")");
  }
  auto name_it = state.find("optimizer");
  if (name_it == state.end() || !name_it->is_string()) {
    return DataLoss("outer optimizer state: 'optimizer' missing");
  }
  const std::string saved_name = name_it->get<std::string>();
  if (saved_name != options_.name) {
    return FailedPrecondition("checkpoint holds '" + saved_name +
                              "' outer optimizer state; the config asks for '" + options_.name +
                              "'");
  }
  ASSIGN_OR_RETURN(int64_t n, get_int("n"));
  if (n != n_) {
    return FailedPrecondition("checkpoint's outer optimizer covers " + std::to_string(n) +
                              " elements; this slice has " + std::to_string(n_));
  }
  ASSIGN_OR_RETURN(int64_t buffer_size, get_int("buffer_size"));
  ASSIGN_OR_RETURN(int64_t dn_period, get_int("dn_period"));
  ASSIGN_OR_RETURN(int64_t steps, get_int("steps"));
  ASSIGN_OR_RETURN(int64_t updates, get_int("updates"));
  ASSIGN_OR_RETURN(int64_t pending, get_int("pending"));
  ASSIGN_OR_RETURN(int64_t dn_arrivals, get_int("dn_arrivals"));
  if (buffer_size < 1 || dn_period < 1 || steps < 0 || updates < steps || pending < 0 ||
      pending >= buffer_size || dn_arrivals < 0 || dn_arrivals >= dn_period) {
    return DataLoss("outer optimizer state has impossible counters: " + state.dump());
  }
  if (pending > 0 && buffer_size != options_.buffer_size) {
    return FailedPrecondition("checkpoint has " + std::to_string(pending) +
                              " buffered updates for buffer_size " + std::to_string(buffer_size) +
                              "; the config asks for " + std::to_string(options_.buffer_size));
  }
  if (rule_ == Rule::kDelayedNesterov && dn_arrivals > 0 && dn_period != options_.dn_period) {
    return FailedPrecondition("checkpoint is " + std::to_string(dn_arrivals) +
                              " arrivals into a dn_period of " + std::to_string(dn_period) +
                              "; the config asks for " + std::to_string(options_.dn_period));
  }
  if (rule_ != Rule::kDelayedNesterov) dn_arrivals = 0;

  // Match the tensors before touching anything. The buffer may be absent (or extra, when
  // buffer_size changed) only while it is empty.
  std::map<std::string, std::span<const float>> given;
  for (const auto& [name, values] : tensors) {
    if (!given.emplace(name, values).second)
      return DataLoss("outer optimizer state: tensor '" + name + "' twice");
  }
  const std::vector<std::string> names = TensorNames();
  for (const auto& [name, values] : given) {
    const bool expected = std::find(names.begin(), names.end(), name) != names.end();
    if (!expected && !(name == kBuffer && pending == 0)) {
      return DataLoss("outer optimizer state: unexpected tensor '" + name + "'");
    }
    if (expected && static_cast<int64_t>(values.size()) != n_) {
      return DataLoss("outer optimizer state: tensor '" + name + "' has " +
                      std::to_string(values.size()) + " elements, expected " + std::to_string(n_));
    }
  }
  for (const std::string& name : names) {
    if (!given.count(name) && !(name == kBuffer && pending == 0)) {
      return DataLoss("outer optimizer state: tensor '" + name + "' missing");
    }
  }

  for (const std::string& name : names) {
    std::vector<float>& dst = tensors_[name];
    auto it = given.find(name);
    if (it == given.end()) {
      std::fill(dst.begin(), dst.end(), 0.0f);
    } else {
      std::memcpy(dst.data(), it->second.data(), dst.size() * sizeof(float));
    }
  }
  steps_ = steps;
  updates_ = updates;
  pending_ = pending;
  dn_arrivals_ = dn_arrivals;
  return Status::Ok();
}

}  // namespace fedps
