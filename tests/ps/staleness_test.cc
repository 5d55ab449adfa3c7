// Staleness weights against values worked out by hand from FedAsync's definitions:
//   polynomial w(s) = (1 + s)^-a;  hinge w(s) = 1 (s <= b), 1 / (a (s - b) + 1) (s > b).
#include "ps/staleness.h"

#include <gtest/gtest.h>

#include <cmath>

namespace fedps {
namespace {

StalenessPolicy Make(const std::string& function, double a, double b, int64_t max_staleness) {
  StalenessOptions options;
  options.function = function;
  options.a = a;
  options.b = b;
  options.max_staleness = max_staleness;
  auto policy = StalenessPolicy::Create(options);
  EXPECT_TRUE(policy.ok()) << policy.status().ToString();
  return std::move(policy).value();
}

double W(const StalenessPolicy& policy, int64_t s) {
  auto w = policy.Weight(s);
  EXPECT_TRUE(w.ok()) << w.status().ToString();
  return w.ok() ? *w : -1;
}

TEST(Staleness, DefaultsArePolynomialHalf) {
  StalenessOptions options;
  EXPECT_EQ(options.function, "polynomial");
  EXPECT_EQ(options.a, 0.5);
  EXPECT_EQ(options.b, 4);
  EXPECT_EQ(options.max_staleness, 64);
  auto policy = StalenessPolicy::Create(options);
  ASSERT_TRUE(policy.ok());
  EXPECT_EQ(policy->function(), StalenessPolicy::Function::kPolynomial);
}

TEST(Staleness, Constant) {
  StalenessPolicy p = Make("constant", 0.5, 4, -1);
  EXPECT_EQ(W(p, 0), 1.0);
  EXPECT_EQ(W(p, 7), 1.0);
  EXPECT_EQ(W(p, 1000000), 1.0);
}

TEST(Staleness, Polynomial) {
  StalenessPolicy half = Make("polynomial", 0.5, 0, -1);
  EXPECT_EQ(W(half, 0), 1.0);               // 1^-0.5
  EXPECT_DOUBLE_EQ(W(half, 3), 0.5);        // 4^-0.5
  EXPECT_DOUBLE_EQ(W(half, 8), 1.0 / 3.0);  // 9^-0.5
  EXPECT_DOUBLE_EQ(W(half, 15), 0.25);      // 16^-0.5
  StalenessPolicy one = Make("polynomial", 1.0, 0, -1);
  EXPECT_DOUBLE_EQ(W(one, 1), 0.5);  // 2^-1
  EXPECT_DOUBLE_EQ(W(one, 4), 0.2);  // 5^-1
  StalenessPolicy zero = Make("polynomial", 0.0, 0, -1);
  EXPECT_EQ(W(zero, 9), 1.0);  // a = 0: constant
}

TEST(Staleness, Hinge) {
  StalenessPolicy p = Make("hinge", 0.5, 4, -1);
  EXPECT_EQ(W(p, 0), 1.0);
  EXPECT_EQ(W(p, 4), 1.0);               // s <= b
  EXPECT_DOUBLE_EQ(W(p, 5), 1.0 / 1.5);  // 1 / (0.5 * 1 + 1)
  EXPECT_DOUBLE_EQ(W(p, 6), 0.5);        // 1 / (0.5 * 2 + 1)
  EXPECT_DOUBLE_EQ(W(p, 10), 0.25);      // 1 / (0.5 * 6 + 1)
  StalenessPolicy steep = Make("hinge", 10, 0, -1);
  EXPECT_DOUBLE_EQ(W(steep, 1), 1.0 / 11.0);  // 1 / (10 * 1 + 1)
}

TEST(Staleness, MaxStalenessRefusesWithAReason) {
  StalenessPolicy p = Make("polynomial", 0.5, 4, 32);
  EXPECT_TRUE(p.Weight(32).ok());
  EXPECT_TRUE(p.Check(32).ok());
  auto w = p.Weight(37);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(w.status().message(), "staleness 37 > max 32: pull and retrain");
  EXPECT_EQ(p.Check(33).code(), StatusCode::kOutOfRange);

  StalenessPolicy fresh_only = Make("constant", 0, 0, 0);
  EXPECT_TRUE(fresh_only.Weight(0).ok());
  EXPECT_EQ(fresh_only.Weight(1).status().code(), StatusCode::kOutOfRange);

  StalenessPolicy unlimited = Make("polynomial", 0.5, 0, -1);
  EXPECT_DOUBLE_EQ(W(unlimited, 9999), 0.01);  // 10000^-0.5
}

TEST(Staleness, NegativeIsAnError) {
  StalenessPolicy p = Make("constant", 0, 0, -1);
  auto w = p.Weight(-1);
  ASSERT_FALSE(w.ok());
  EXPECT_EQ(w.status().code(), StatusCode::kInvalidArgument);
}

TEST(Staleness, CreateRejectsBadOptions) {
  auto bad = [](auto mutate) {
    StalenessOptions options;
    mutate(options);
    auto p = StalenessPolicy::Create(options);
    return p.ok() ? StatusCode::kOk : p.status().code();
  };
  EXPECT_EQ(bad([](StalenessOptions& o) { o.function = "linear"; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](StalenessOptions& o) { o.a = -0.1; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](StalenessOptions& o) { o.a = std::nan(""); }), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](StalenessOptions& o) { o.b = -1; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](StalenessOptions& o) { o.max_staleness = -2; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(bad([](StalenessOptions& o) { o.function = "hinge"; }), StatusCode::kOk);
}

}  // namespace
}  // namespace fedps
