// Staleness weights: how much a shard trusts an update computed on old parameters.
//
// Every shard passes through the same global versions (one per committed update, see
// docs/protocol.md). An update was trained from base version tau; when the shard applies
// it at version t (its version just before applying), its staleness is
//
//   s = t - tau >= 0           (negative: the client claims a version the shard never
//                               reached; that is an error, never clamped)
//
// and its weight w(s) scales the pseudo-gradient before the outer optimizer sees it.
// The functions are FedAsync's (Xie et al., 2019), with a >= 0 and b >= 0:
//
//   constant:    w(s) = 1
//   polynomial:  w(s) = (1 + s)^(-a)                          w(0) = 1, w(3) = 4^-a
//   hinge:       w(s) = 1                     for s <= b
//                w(s) = 1 / (a * (s - b) + 1) for s >  b      continuous at s = b
//
// Above `max_staleness` an update is refused outright (OutOfRange, "staleness 37 > max
// 32: pull and retrain"): the client's base is too old to be worth applying, and the
// cheapest fix is on its side (pull the current model, train again).
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace fedps {

struct StalenessOptions {
  // constant | polynomial | hinge (FedAsync's names).
  std::string function = "polynomial";
  // Exponent of polynomial; slope of hinge beyond b. Must be >= 0 (0: constant weight).
  double a = 0.5;
  // Hinge: staleness up to b is weighted 1. Must be >= 0. Unused by the other functions.
  double b = 4;
  // Updates with staleness above this are refused (OutOfRange); -1: no limit.
  int64_t max_staleness = 64;
};

class StalenessPolicy {
 public:
  enum class Function { kConstant, kPolynomial, kHinge };

  // Validates the options: a known function, finite a >= 0 and b >= 0,
  // max_staleness >= -1.
  static StatusOr<StalenessPolicy> Create(const StalenessOptions& options);

  // w(s) in (0, 1]. InvalidArgument for s < 0; OutOfRange (with a reason the client
  // can act on) for s > max_staleness.
  StatusOr<double> Weight(int64_t staleness) const;

  // OK when an update of this staleness would be accepted (same errors as Weight).
  Status Check(int64_t staleness) const;

  Function function() const { return function_; }
  int64_t max_staleness() const { return options_.max_staleness; }
  const StalenessOptions& options() const { return options_; }

 private:
  StalenessPolicy(const StalenessOptions& options, Function function)
      : options_(options), function_(function) {}

  StalenessOptions options_;
  Function function_;
};

}  // namespace fedps
