// Staleness weights (FedAsync); the maths is at the top of staleness.h.
#include "ps/staleness.h"

#include <cmath>

namespace fedps {

StatusOr<StalenessPolicy> StalenessPolicy::Create(const StalenessOptions& options) {
  Function function;
  if (options.function == "constant") {
    function = Function::kConstant;
  } else if (options.function == "polynomial") {
    function = Function::kPolynomial;
  } else if (options.function == "hinge") {
    function = Function::kHinge;
  } else {
    return InvalidArgument("staleness function '" + options.function +
                           "' is not one of constant, polynomial, hinge");
  }
  if (!std::isfinite(options.a) || options.a < 0) {
    return InvalidArgument("staleness a = " + std::to_string(options.a) +
                           " must be finite and >= 0");
  }
  if (!std::isfinite(options.b) || options.b < 0) {
    return InvalidArgument("staleness b = " + std::to_string(options.b) +
                           " must be finite and >= 0");
  }
  if (options.max_staleness < -1) {
    return InvalidArgument("max_staleness = " + std::to_string(options.max_staleness) +
                           " must be >= 0, or -1 for no limit");
  }
  return StalenessPolicy(options, function);
}

Status StalenessPolicy::Check(int64_t staleness) const {
  if (staleness < 0) {
    return InvalidArgument("staleness " + std::to_string(staleness) +
                           " < 0: the update's base version is ahead of the shard");
  }
  if (options_.max_staleness >= 0 && staleness > options_.max_staleness) {
    return OutOfRange("staleness " + std::to_string(staleness) + " > max " +
                      std::to_string(options_.max_staleness) + ": pull and retrain");
  }
  return Status::Ok();
}

StatusOr<double> StalenessPolicy::Weight(int64_t staleness) const {
  RETURN_IF_ERROR(Check(staleness));
  const double s = static_cast<double>(staleness);
  switch (function_) {
    case Function::kConstant:
      return 1.0;
    case Function::kPolynomial:
      return std::pow(1.0 + s, -options_.a);
    case Function::kHinge:
      if (s <= options_.b) return 1.0;
      return 1.0 / (options_.a * (s - options_.b) + 1.0);
  }
  return Internal("unknown staleness function");
}

}  // namespace fedps
