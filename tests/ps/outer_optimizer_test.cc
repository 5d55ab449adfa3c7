// Outer optimizers against values worked out by hand (the working is in the comments),
// FedBuff buffering and weights, FedAvg equivalence, input checks, and checkpoint
// restore continuing bit for bit.
#include "ps/outer_optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

namespace fedps {
namespace {

constexpr double kTol = 1e-6;

std::unique_ptr<OuterOptimizer> Make(const OuterOptimizerOptions& options, int64_t n) {
  auto opt = OuterOptimizer::Create(options, n);
  EXPECT_TRUE(opt.ok()) << opt.status().ToString();
  return opt.ok() ? std::move(opt).value() : nullptr;
}

OuterOptimizerOptions Options(const std::string& name, double lr) {
  OuterOptimizerOptions o;
  o.name = name;
  o.lr = lr;
  return o;
}

// Applies and expects success; returns whether a step happened.
bool Apply(OuterOptimizer& opt, std::vector<float>& x, const std::vector<float>& delta,
           double weight = 1.0) {
  auto stepped = opt.Apply(x, delta, weight);
  EXPECT_TRUE(stepped.ok()) << stepped.status().ToString();
  return stepped.ok() && *stepped;
}

void ExpectNear(const std::vector<float>& got, const std::vector<double>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], want[i], kTol) << "element " << i;
}

TEST(OuterOptimizer, AThreadPoolGivesTheSameBitsForEveryRule) {
  // 3 pieces of 1M elements and a ragged end, a buffered and an unbuffered case, NaN refused.
  const int64_t n = 3 * (int64_t{1} << 20) + 17;
  std::mt19937 rng(3);
  std::normal_distribution<float> d(0.0f, 0.01f);
  std::vector<std::vector<float>> deltas(5, std::vector<float>(n));
  for (auto& v : deltas) {
    for (auto& x : v) x = d(rng);
  }
  ThreadPool pool(3);
  for (const char* rule : {"sgd", "nesterov", "delayed_nesterov", "adam"}) {
    for (int64_t buffer : {int64_t{1}, int64_t{2}}) {
      OuterOptimizerOptions o = Options(rule, 0);
      o.dn_period = 2;
      o.buffer_size = buffer;
      auto serial = Make(o, n);
      auto parallel = Make(o, n);
      ASSERT_TRUE(serial && parallel);
      parallel->SetThreadPool(&pool);
      std::vector<float> xs(n, 0.5f), xp(n, 0.5f);
      for (int k = 0; k < 5; ++k) {
        Apply(*serial, xs, deltas[k], 0.75);
        Apply(*parallel, xp, deltas[k], 0.75);
      }
      ASSERT_EQ(std::memcmp(xs.data(), xp.data(), n * sizeof(float)), 0) << rule << " buffer " << buffer;
      const auto ts = serial->StateTensors(), tp = parallel->StateTensors();
      ASSERT_EQ(ts.size(), tp.size());
      for (size_t i = 0; i < ts.size(); ++i) {
        ASSERT_EQ(std::memcmp(ts[i].second.data(), tp[i].second.data(), n * sizeof(float)), 0) << ts[i].first;
      }
      std::vector<float> bad = deltas[0];
      bad[n - 3] = std::numeric_limits<float>::quiet_NaN();
      EXPECT_EQ(parallel->Apply(xp, bad, 1.0).status().code(), StatusCode::kInvalidArgument) << rule;
    }
  }
}

TEST(OuterOptimizer, DefaultLearningRates) {
  EXPECT_EQ(Make(Options("sgd", 0), 1)->lr(), 1.0);
  EXPECT_EQ(Make(Options("nesterov", 0), 1)->lr(), 0.7);
  EXPECT_EQ(Make(Options("delayed_nesterov", 0), 1)->lr(), 0.7);
  EXPECT_EQ(Make(Options("adam", 0), 1)->lr(), 1e-3);
  EXPECT_EQ(Make(Options("nesterov", 0.25), 1)->lr(), 0.25);
  OuterOptimizerOptions defaults;
  EXPECT_EQ(defaults.name, "delayed_nesterov");
  EXPECT_EQ(defaults.momentum, 0.9);
  EXPECT_EQ(defaults.buffer_size, 1);
}

// sgd, lr 0.5, B = 1:
//   x0 = [1, 2, 3]
//   d1 = [0.2, -0.4, 1], w 1:   x1 = x0 - 0.5 d1       = [0.9, 2.2, 2.5]
//   d2 = [1, 1, -2],     w 0.5: g = [0.5, 0.5, -1]; x2 = x1 - 0.5 g = [0.65, 1.95, 3.0]
//   d3 = [4, 0, 0],      w 0:   x3 = x2
TEST(OuterOptimizer, SgdByHand) {
  auto opt = Make(Options("sgd", 0.5), 3);
  std::vector<float> x = {1, 2, 3};
  EXPECT_TRUE(Apply(*opt, x, {0.2f, -0.4f, 1.0f}));
  ExpectNear(x, {0.9, 2.2, 2.5});
  EXPECT_TRUE(Apply(*opt, x, {1, 1, -2}, 0.5));
  ExpectNear(x, {0.65, 1.95, 3.0});
  EXPECT_TRUE(Apply(*opt, x, {4, 0, 0}, 0.0));
  ExpectNear(x, {0.65, 1.95, 3.0});
  EXPECT_EQ(opt->steps(), 3);
  EXPECT_EQ(opt->updates(), 3);
  EXPECT_TRUE(opt->StateTensors().empty());
}

// nesterov, lr 0.7, mu 0.9 (m = mu m + g; x -= lr (g + mu m)):
//   x0 = [1, -1]
//   g1 = [0.1, -0.2]: m1 = [0.1, -0.2];  x1 = x0 - 0.7 * 1.9 * g1 = [0.867, -0.734]
//   g2 = [0.3, 0.1]:  m2 = 0.9 m1 + g2 = [0.39, -0.08]
//                     g2 + 0.9 m2 = [0.651, 0.028];  x2 = x1 - 0.7 [0.651, 0.028]
//                                                       = [0.4113, -0.7536]
//   g3 = [0, 0]:      m3 = 0.9 m2 = [0.351, -0.072];  0.9 m3 = [0.3159, -0.0648]
//                     x3 = x2 - 0.7 [0.3159, -0.0648] = [0.19017, -0.70824]
TEST(OuterOptimizer, NesterovByHand) {
  OuterOptimizerOptions o = Options("nesterov", 0.7);
  o.momentum = 0.9;
  auto opt = Make(o, 2);
  std::vector<float> x = {1, -1};
  Apply(*opt, x, {0.1f, -0.2f});
  ExpectNear(x, {0.867, -0.734});
  Apply(*opt, x, {0.3f, 0.1f});
  ExpectNear(x, {0.4113, -0.7536});
  Apply(*opt, x, {0, 0});
  ExpectNear(x, {0.19017, -0.70824});
  auto tensors = opt->StateTensors();
  ASSERT_EQ(tensors.size(), 1u);
  EXPECT_EQ(tensors[0].first, "momentum");
  EXPECT_NEAR(tensors[0].second[0], 0.351, kTol);
  EXPECT_NEAR(tensors[0].second[1], -0.072, kTol);
}

// delayed_nesterov, lr 1, mu 0.5, N = 2, c = 1/N = 0.5 (every value is a dyadic
// fraction, so the fp32 results are exact):
//   x0 = [0, 10], m = 0, D = 0
//   a1: g = [2, 4]  D = [2, 4];  x1 = x0 - 0.5 g = [-1, 8]
//   a2: g = [4, 0]  plain: x = [-1, 8] - 0.5 g = [-3, 8];  D = [6, 4]
//                   momentum: m = 0.5 * 0 + D / 2 = [3, 2];  x2 = x - 0.5 m = [-4.5, 7]
//   a3: g = [2, 2]  D = [2, 2];  x3 = x2 - 0.5 g = [-5.5, 6]
//   a4: g = [0, -2] plain: x = [-5.5, 7];  D = [2, 0]
//                   momentum: m = 0.5 [3, 2] + [1, 0] = [2.5, 1];  x4 = x - 0.5 m = [-6.75, 6.5]
// Check: a3 + a4 together equal one nesterov step on their mean [1, 0] from x2:
//   m = 0.5 [3, 2] + [1, 0] = [2.5, 1];  x2 - ([1, 0] + 0.5 m) = [-4.5 - 2.25, 7 - 0.5] = x4.
TEST(OuterOptimizer, DelayedNesterovByHand) {
  OuterOptimizerOptions o = Options("delayed_nesterov", 1.0);
  o.momentum = 0.5;
  o.dn_period = 2;
  auto opt = Make(o, 2);
  std::vector<float> x = {0, 10};
  Apply(*opt, x, {2, 4});
  EXPECT_EQ(x, (std::vector<float>{-1, 8}));
  Apply(*opt, x, {4, 0});
  EXPECT_EQ(x, (std::vector<float>{-4.5f, 7}));
  Apply(*opt, x, {2, 2});
  EXPECT_EQ(x, (std::vector<float>{-5.5f, 6}));
  Apply(*opt, x, {0, -2});
  EXPECT_EQ(x, (std::vector<float>{-6.75f, 6.5f}));
  EXPECT_EQ(opt->steps(), 4);
  for (const auto& [name, values] : opt->StateTensors()) {
    const std::vector<float> got(values.begin(), values.end());
    if (name == "momentum") {
      EXPECT_EQ(got, (std::vector<float>{2.5f, 1}));
    } else if (name == "dn_sum") {
      EXPECT_EQ(got, (std::vector<float>{0, 0}));
    }
  }
}

// delayed_nesterov with c = 1 (each pseudo-gradient applied in full on arrival), same
// inputs: a1: x = [0, 10] - [2, 4] = [-2, 6];  a2: plain x = [-6, 6], D = [6, 4],
// m = [3, 2], x = [-6, 6] - 0.5 [3, 2] = [-7.5, 5].
TEST(OuterOptimizer, DelayedNesterovFullGradientByHand) {
  OuterOptimizerOptions o = Options("delayed_nesterov", 1.0);
  o.momentum = 0.5;
  o.dn_period = 2;
  o.dn_gradient_scale = 1.0;
  auto opt = Make(o, 2);
  std::vector<float> x = {0, 10};
  Apply(*opt, x, {2, 4});
  EXPECT_EQ(x, (std::vector<float>{-2, 6}));
  Apply(*opt, x, {4, 0});
  EXPECT_EQ(x, (std::vector<float>{-7.5f, 5}));
}

// Every apply-relevant [ps] key reaches the optimizer.
TEST(OuterOptimizer, OptionsFromConfig) {
  PsOptions ps;
  ps.optimizer = "nesterov";
  ps.outer_lr = 0.35;
  ps.momentum = 0.8;
  ps.dn_period = 5;
  ps.dn_gradient_scale = 0.5;
  ps.outer_warmup_steps = 12;
  ps.buffer_size = 3;
  ps.weight_by_tokens = true;
  const OuterOptimizerOptions o = OuterOptionsFromConfig(ps, 4096);
  EXPECT_EQ(o.name, "nesterov");
  EXPECT_EQ(o.lr, 0.35);
  EXPECT_EQ(o.momentum, 0.8);
  EXPECT_EQ(o.dn_period, 5);
  EXPECT_EQ(o.dn_gradient_scale, 0.5);
  EXPECT_EQ(o.warmup_steps, 12);
  EXPECT_EQ(o.buffer_size, 3);
  EXPECT_TRUE(o.weight_by_tokens);
  EXPECT_EQ(o.reference_tokens, 4096);
  EXPECT_TRUE(OuterOptimizer::Create(o, 8).ok());
}

// Outer warm-up, sgd, lr 1, W = 4: step t uses lr t/4 until t = 4 (dyadic, exact):
//   x0 = 0, g = 1 every step: x1 = -0.25, x2 = -0.75, x3 = -1.5, x4 = -2.5, x5 = -3.5.
TEST(OuterOptimizer, WarmupRampsTheLrLinearly) {
  OuterOptimizerOptions o = Options("sgd", 1.0);
  o.warmup_steps = 4;
  auto opt = Make(o, 1);
  EXPECT_EQ(opt->LrAtStep(1), 0.25);
  EXPECT_EQ(opt->LrAtStep(3), 0.75);
  EXPECT_EQ(opt->LrAtStep(4), 1.0);
  EXPECT_EQ(opt->LrAtStep(100), 1.0);
  std::vector<float> x = {0};
  for (float want : {-0.25f, -0.75f, -1.5f, -2.5f, -3.5f}) {
    Apply(*opt, x, {1});
    EXPECT_EQ(x[0], want);
  }
}

// Warm-up with nesterov, lr 1, mu 0.5, W = 2; momentum sees g at full size, only the
// step is scaled: x0 = 0, g = 2: m = 2, x1 = -0.5 (2 + 0.5 * 2) = -1.5;
//   g = 2: m = 0.5 * 2 + 2 = 3, x2 = -1.5 - 1 (2 + 0.5 * 3) = -5.
// delayed_nesterov, lr 1, mu 0.5, N = 2, c = 1/2, W = 2 on [2] then [4]:
//   a1: lr 1/2: x = -0.5 * 0.5 * 2 = -0.5, D = 2;  a2: lr 1: x = -0.5 - 0.5 * 4 = -2.5,
//   m = (2 + 4) / 2 = 3, x = -2.5 - 0.5 * 3 = -4.
TEST(OuterOptimizer, WarmupScalesEveryRulesStep) {
  OuterOptimizerOptions n = Options("nesterov", 1.0);
  n.momentum = 0.5;
  n.warmup_steps = 2;
  auto nesterov = Make(n, 1);
  std::vector<float> x = {0};
  Apply(*nesterov, x, {2});
  EXPECT_EQ(x[0], -1.5f);
  Apply(*nesterov, x, {2});
  EXPECT_EQ(x[0], -5.0f);

  OuterOptimizerOptions d = Options("delayed_nesterov", 1.0);
  d.momentum = 0.5;
  d.dn_period = 2;
  d.warmup_steps = 2;
  auto dn = Make(d, 1);
  x = {0};
  Apply(*dn, x, {2});
  EXPECT_EQ(x[0], -0.5f);
  Apply(*dn, x, {4});
  EXPECT_EQ(x[0], -4.0f);
}

// The warm-up position is the step count, so a restored optimizer continues the ramp.
TEST(OuterOptimizer, WarmupContinuesAfterRestore) {
  OuterOptimizerOptions o = Options("sgd", 1.0);
  o.warmup_steps = 4;
  auto a = Make(o, 1);
  std::vector<float> x = {0};
  Apply(*a, x, {1});
  Apply(*a, x, {1});
  auto b = Make(o, 1);
  ASSERT_TRUE(b->LoadState(a->StateJson(), a->StateTensors()).ok());
  Apply(*b, x, {1});
  EXPECT_EQ(x[0], -1.5f);  // step 3 at lr 0.75
}

// N = 1, c = 1 is nesterov (up to rounding: the two parts are subtracted separately).
TEST(OuterOptimizer, DelayedNesterovPeriodOneIsNesterov) {
  OuterOptimizerOptions dn = Options("delayed_nesterov", 0.7);
  dn.dn_period = 1;
  dn.dn_gradient_scale = 1.0;
  auto a = Make(dn, 2);
  auto b = Make(Options("nesterov", 0.7), 2);
  std::vector<float> xa = {1, -1}, xb = {1, -1};
  for (const std::vector<float>& g :
       {std::vector<float>{0.1f, -0.2f}, {0.3f, 0.1f}, {-0.5f, 0.25f}}) {
    Apply(*a, xa, g);
    Apply(*b, xb, g);
  }
  for (int i = 0; i < 2; ++i) EXPECT_NEAR(xa[i], xb[i], kTol);
}

// adam, lr 0.1, b1 0.5, b2 0.75, eps 1e-12 (negligible here):
//   x0 = [1, 1]
//   t1: g = [0.2, -0.4]  m = [0.1, -0.2]  v = [0.01, 0.04]  bc1 = 0.5  bc2 = 0.25
//       m^ = [0.2, -0.4]  sqrt(v^) = [0.2, 0.4]  step = 0.1 [1, -1]   x1 = [0.9, 1.1]
//   t2: g = [0.2, 0.4]   m = [0.15, 0.1]  v = [0.0175, 0.07]  bc1 = 0.75  bc2 = 0.4375
//       m^ = [0.2, 2/15]  v^ = [0.04, 0.16]  step = 0.1 [1, 1/3]     x2 = [0.8, 1.0666667]
//   t3: g = [0, 0]       m = [0.075, 0.05]  v = [0.013125, 0.0525]  bc1 = 0.875
//       bc2 = 0.578125 = 37/64;  m^ = [3/35, 2/35];  v^ = [21/925, 84/925]
//       step0 = 0.1 (3/35) sqrt(925/21) = 0.0568872;  step1 = step0 / 3 = 0.0189624
//       x3 = [0.7431128, 1.0477043]
TEST(OuterOptimizer, AdamByHand) {
  OuterOptimizerOptions o = Options("adam", 0.1);
  o.beta1 = 0.5;
  o.beta2 = 0.75;
  o.eps = 1e-12;
  auto opt = Make(o, 2);
  std::vector<float> x = {1, 1};
  Apply(*opt, x, {0.2f, -0.4f});
  ExpectNear(x, {0.9, 1.1});
  Apply(*opt, x, {0.2f, 0.4f});
  ExpectNear(x, {0.8, 1.0666667});
  Apply(*opt, x, {0, 0});
  ExpectNear(x, {0.7431128, 1.0477043});
  for (const auto& [name, values] : opt->StateTensors()) {
    if (name == "adam_m") {
      EXPECT_NEAR(values[0], 0.075, kTol);
      EXPECT_NEAR(values[1], 0.05, kTol);
    }
    if (name == "adam_v") {
      EXPECT_NEAR(values[0], 0.013125, kTol);
      EXPECT_NEAR(values[1], 0.0525, kTol);
    }
  }
}

// FedBuff, B = 2, sgd lr 1: the first update only fills the buffer; the second steps on
// (1 * [2, 0] + 0.5 * [0, 4]) / 2 = [1, 1], so x = [1, 1] - [1, 1] = [0, 0].
TEST(OuterOptimizer, BufferStepsEveryBUpdates) {
  OuterOptimizerOptions o = Options("sgd", 1.0);
  o.buffer_size = 2;
  auto opt = Make(o, 2);
  std::vector<float> x = {1, 1};
  EXPECT_FALSE(Apply(*opt, x, {2, 0}, 1.0));
  EXPECT_EQ(x, (std::vector<float>{1, 1}));
  EXPECT_EQ(opt->pending(), 1);
  EXPECT_EQ(opt->steps(), 0);
  EXPECT_TRUE(Apply(*opt, x, {0, 4}, 0.5));
  EXPECT_EQ(x, (std::vector<float>{0, 0}));
  EXPECT_EQ(opt->pending(), 0);
  EXPECT_EQ(opt->steps(), 1);
  EXPECT_EQ(opt->updates(), 2);
  // The buffer was cleared: the next pair starts from zero.
  EXPECT_FALSE(Apply(*opt, x, {2, 2}));
  EXPECT_TRUE(Apply(*opt, x, {2, 2}));
  EXPECT_EQ(x, (std::vector<float>{-2, -2}));
}

// Dividing by B keeps the staleness down-weighting: weights [1, 0.5, 0.5] on equal
// pseudo-gradients [3] give g = (3 + 1.5 + 1.5) / 3 = 2 (a weighted mean would give 3).
TEST(OuterOptimizer, BufferDividesByBufferSize) {
  OuterOptimizerOptions o = Options("sgd", 1.0);
  o.buffer_size = 3;
  auto opt = Make(o, 1);
  std::vector<float> x = {10};
  EXPECT_FALSE(Apply(*opt, x, {3}, 1.0));
  EXPECT_FALSE(Apply(*opt, x, {3}, 0.5));
  EXPECT_TRUE(Apply(*opt, x, {3}, 0.5));
  EXPECT_EQ(x, (std::vector<float>{8}));
}

// B = 1 steps on weight * delta: nesterov lr 1, mu 0.5, weight 0.25 on [4]:
// g = 1, m = 1, x = 0 - (1 + 0.5) = -1.5.
TEST(OuterOptimizer, SingleUpdateIsScaledByItsWeight) {
  OuterOptimizerOptions o = Options("nesterov", 1.0);
  o.momentum = 0.5;
  auto opt = Make(o, 1);
  std::vector<float> x = {0};
  EXPECT_TRUE(Apply(*opt, x, {4}, 0.25));
  EXPECT_EQ(x, (std::vector<float>{-1.5f}));
}

// Photon's FedAvg: sgd with server lr 1 and a buffer of K equal-weight updates moves the
// slice to the average of the K trained models. With K = 4 and values on a 1/8 grid every
// sum and the division by 4 are exact in fp32, so the result must be bit-exact.
TEST(OuterOptimizer, SgdLrOneBufferKIsTheAverageOfKModels) {
  constexpr int kK = 4;
  constexpr int kN = 64;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> eighths(-80, 80);
  std::vector<float> pulled(kN);
  for (float& v : pulled) v = eighths(rng) / 8.0f;
  std::vector<std::vector<float>> trained(kK, std::vector<float>(kN));
  for (auto& model : trained) {
    for (float& v : model) v = eighths(rng) / 8.0f;
  }

  OuterOptimizerOptions o = Options("sgd", 1.0);
  o.buffer_size = kK;
  auto opt = Make(o, kN);
  std::vector<float> x = pulled;
  for (int k = 0; k < kK; ++k) {
    std::vector<float> delta(kN);
    for (int i = 0; i < kN; ++i) delta[i] = pulled[i] - trained[k][i];
    EXPECT_EQ(Apply(*opt, x, delta), k == kK - 1);
  }
  for (int i = 0; i < kN; ++i) {
    float sum = 0;
    for (int k = 0; k < kK; ++k) sum += trained[k][i];
    EXPECT_EQ(x[i], sum / kK) << "element " << i;
  }

  // K = 3 on arbitrary values: the average up to fp32 rounding.
  o.buffer_size = 3;
  auto opt3 = Make(o, 3);
  std::vector<float> x3 = {0.3f, -1.7f, 2.9f};
  const std::vector<std::vector<float>> models = {
      {0.1f, 0.2f, 0.3f}, {1.0f, -2.0f, 3.5f}, {-0.4f, 0.9f, 2.0f}};
  const std::vector<float> start = x3;
  for (const auto& model : models) {
    std::vector<float> delta(3);
    for (int i = 0; i < 3; ++i) delta[i] = start[i] - model[i];
    Apply(*opt3, x3, delta);
  }
  ExpectNear(x3, {(0.1 + 1.0 - 0.4) / 3, (0.2 - 2.0 + 0.9) / 3, (0.3 + 3.5 + 2.0) / 3});
}

TEST(OuterOptimizer, WeightCombinesStalenessAndTokens) {
  auto plain = Make(Options("sgd", 1.0), 1);
  EXPECT_EQ(*plain->Weight(0.5, 123), 0.5);
  EXPECT_EQ(*plain->Weight(0.5, 0), 0.5);  // tokens unused
  EXPECT_EQ(plain->Weight(-0.5, 1).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(plain->Weight(std::numeric_limits<double>::infinity(), 1).status().code(),
            StatusCode::kInvalidArgument);

  OuterOptimizerOptions o = Options("sgd", 1.0);
  o.weight_by_tokens = true;
  o.reference_tokens = 1000;
  o.max_token_ratio = 4;
  auto by_tokens = Make(o, 1);
  EXPECT_EQ(*by_tokens->Weight(0.5, 500), 0.25);  // 0.5 * 500 / 1000
  EXPECT_EQ(*by_tokens->Weight(1.0, 1000), 1.0);
  EXPECT_EQ(*by_tokens->Weight(0.5, 10000), 2.0);  // ratio 10 capped at 4
  EXPECT_EQ(by_tokens->Weight(1.0, 0).status().code(), StatusCode::kInvalidArgument);

  o.reference_tokens = 0;
  EXPECT_EQ(OuterOptimizer::Create(o, 1).status().code(), StatusCode::kInvalidArgument);
}

TEST(OuterOptimizer, RejectsBadInputWithoutChangingAnything) {
  OuterOptimizerOptions o = Options("nesterov", 0.7);
  o.buffer_size = 2;
  auto opt = Make(o, 3);
  std::vector<float> x = {1, 2, 3};
  EXPECT_FALSE(Apply(*opt, x, {1, 1, 1}));  // one pending
  const auto before = opt->StateJson();
  std::vector<float> buffer_before(opt->StateTensors()[0].second.begin(),
                                   opt->StateTensors()[0].second.end());

  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  for (const std::vector<float>& bad : {std::vector<float>{0, nan, 0}, {-inf, 0, 0}, {0, 0, inf}}) {
    auto r = opt->Apply(x, bad, 1.0);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
  }
  std::vector<float> small = {1, 1};
  EXPECT_EQ(opt->Apply(x, small, 1.0).status().code(), StatusCode::kInvalidArgument);
  std::vector<float> short_params = {1, 2};
  std::vector<float> ok = {1, 1, 1};
  EXPECT_EQ(opt->Apply(short_params, ok, 1.0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(opt->Apply(x, ok, -1.0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(opt->Apply(x, ok, std::nan("")).status().code(), StatusCode::kInvalidArgument);

  EXPECT_EQ(x, (std::vector<float>{1, 2, 3}));
  EXPECT_EQ(opt->StateJson(), before);
  EXPECT_EQ(opt->StateTensors()[0].first, "buffer");
  EXPECT_EQ(std::vector<float>(opt->StateTensors()[0].second.begin(),
                               opt->StateTensors()[0].second.end()),
            buffer_before);
}

TEST(OuterOptimizer, CreateRejectsBadOptions) {
  auto code = [](auto mutate, int64_t n = 4) {
    OuterOptimizerOptions o;
    mutate(o);
    auto opt = OuterOptimizer::Create(o, n);
    return opt.ok() ? StatusCode::kOk : opt.status().code();
  };
  EXPECT_EQ(code([](OuterOptimizerOptions&) {}), StatusCode::kOk);
  EXPECT_EQ(code([](OuterOptimizerOptions&) {}, 0), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](OuterOptimizerOptions& o) { o.name = "lion"; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](OuterOptimizerOptions& o) { o.lr = -0.1; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](OuterOptimizerOptions& o) { o.momentum = 1.0; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](OuterOptimizerOptions& o) { o.dn_period = 0; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](OuterOptimizerOptions& o) { o.dn_gradient_scale = 2; }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](OuterOptimizerOptions& o) { o.beta2 = 1.0; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](OuterOptimizerOptions& o) { o.eps = 0; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](OuterOptimizerOptions& o) { o.buffer_size = 0; }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](OuterOptimizerOptions& o) { o.warmup_steps = -1; }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](OuterOptimizerOptions& o) { o.max_token_ratio = 0; }),
            StatusCode::kInvalidArgument);
}

// ---- checkpoint and restore -------------------------------------------------------------

struct Saved {
  std::string json;  // as written to meta.json
  std::vector<std::pair<std::string, std::vector<float>>> tensors;
  OuterOptimizer::NamedTensors Views() const {
    OuterOptimizer::NamedTensors views;
    for (const auto& [name, values] : tensors)
      views.emplace_back(name, std::span<const float>(values));
    return views;
  }
};

Saved Save(const OuterOptimizer& opt) {
  Saved saved;
  saved.json = opt.StateJson().dump();
  for (const auto& [name, values] : opt.StateTensors()) {
    saved.tensors.emplace_back(name, std::vector<float>(values.begin(), values.end()));
  }
  return saved;
}

std::vector<float> RandomDelta(std::mt19937& rng, int n) {
  std::normal_distribution<float> normal(0.0f, 0.01f);
  std::vector<float> d(n);
  for (float& v : d) v = normal(rng);
  return d;
}

bool SameBits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Runs 4 updates, checkpoints (mid-buffer and mid-period where configured), runs 5 more;
// a fresh optimizer restored from the checkpoint must produce the same bits.
void ExpectRestoreContinuesIdentically(OuterOptimizerOptions o) {
  SCOPED_TRACE(o.name + " buffer_size " + std::to_string(o.buffer_size));
  constexpr int kN = 257;
  std::mt19937 rng(42);
  std::vector<std::vector<float>> deltas;
  std::vector<double> weights;
  for (int i = 0; i < 9; ++i) {
    deltas.push_back(RandomDelta(rng, kN));
    weights.push_back(0.25 + 0.125 * (i % 5));
  }
  std::vector<float> x(kN);
  for (int i = 0; i < kN; ++i) x[i] = std::sin(0.1f * i);

  auto a = Make(o, kN);
  for (int i = 0; i < 4; ++i) Apply(*a, x, deltas[i], weights[i]);
  const Saved saved = Save(*a);
  const std::vector<float> x_saved = x;
  for (int i = 4; i < 9; ++i) Apply(*a, x, deltas[i], weights[i]);

  auto b = Make(o, kN);
  ASSERT_TRUE(b->LoadState(nlohmann::json::parse(saved.json), saved.Views()).ok());
  EXPECT_EQ(Save(*b).json, saved.json);
  std::vector<float> y = x_saved;
  for (int i = 4; i < 9; ++i) Apply(*b, y, deltas[i], weights[i]);

  EXPECT_TRUE(SameBits(x, y));
  EXPECT_EQ(a->StateJson(), b->StateJson());
  auto ta = a->StateTensors(), tb = b->StateTensors();
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    EXPECT_EQ(ta[i].first, tb[i].first);
    EXPECT_TRUE(SameBits(ta[i].second, tb[i].second)) << ta[i].first;
  }
  EXPECT_GT(a->steps(), 0);
}

TEST(OuterOptimizer, RestoreContinuesBitForBit) {
  for (const char* name : {"sgd", "nesterov", "delayed_nesterov", "adam"}) {
    for (int64_t buffer_size : {1, 3}) {
      OuterOptimizerOptions o = Options(name, 0);
      o.buffer_size = buffer_size;
      o.dn_period = 3;  // 4 arrivals (B = 1): the checkpoint is one arrival into a period
      ExpectRestoreContinuesIdentically(o);
    }
  }
}

TEST(OuterOptimizer, LoadStateRefusesMismatchesAndLeavesStateAlone) {
  OuterOptimizerOptions o = Options("nesterov", 0.7);
  o.buffer_size = 2;
  auto src = Make(o, 4);
  std::vector<float> x(4, 1.0f);
  Apply(*src, x, {1, 2, 3, 4});
  Apply(*src, x, {1, 2, 3, 4});
  Apply(*src, x, {1, 2, 3, 4});  // one pending
  const Saved saved = Save(*src);
  const nlohmann::json state = nlohmann::json::parse(saved.json);
  EXPECT_EQ(state["pending"], 1);
  EXPECT_EQ(state["steps"], 1);

  auto code = [&](const OuterOptimizerOptions& opts, int64_t n, const nlohmann::json& j,
                  const OuterOptimizer::NamedTensors& t) {
    auto dst = Make(opts, n);
    const std::string before = dst->StateJson().dump();
    Status s = dst->LoadState(j, t);
    if (!s.ok()) {
      EXPECT_EQ(dst->StateJson().dump(), before) << "changed on error: " << s.ToString();
    }
    return s.code();
  };
  EXPECT_EQ(code(o, 4, state, saved.Views()), StatusCode::kOk);
  EXPECT_EQ(code(Options("adam", 0), 4, state, saved.Views()), StatusCode::kFailedPrecondition);
  EXPECT_EQ(code(o, 5, state, saved.Views()), StatusCode::kFailedPrecondition);
  OuterOptimizerOptions other_b = o;
  other_b.buffer_size = 3;
  EXPECT_EQ(code(other_b, 4, state, saved.Views()), StatusCode::kFailedPrecondition);

  auto views = saved.Views();
  OuterOptimizer::NamedTensors missing = {views[1]};  // momentum only: the pending buffer is lost
  ASSERT_EQ(views[0].first, "buffer");
  EXPECT_EQ(code(o, 4, state, missing), StatusCode::kDataLoss);
  std::vector<float> short_values(3, 0.0f);
  OuterOptimizer::NamedTensors wrong_size = {views[0], {"momentum", short_values}};
  EXPECT_EQ(code(o, 4, state, wrong_size), StatusCode::kDataLoss);
  OuterOptimizer::NamedTensors extra = views;
  extra.emplace_back("adam_v", views[1].second);
  EXPECT_EQ(code(o, 4, state, extra), StatusCode::kDataLoss);

  nlohmann::json broken = state;
  broken.erase("steps");
  EXPECT_EQ(code(o, 4, broken, saved.Views()), StatusCode::kDataLoss);
  broken = state;
  broken["pending"] = 5;
  EXPECT_EQ(code(o, 4, broken, saved.Views()), StatusCode::kDataLoss);
  EXPECT_EQ(code(o, 4, nlohmann::json::array(), saved.Views()), StatusCode::kDataLoss);

  // With nothing pending, buffer_size may change between runs.
  Apply(*src, x, {1, 2, 3, 4});
  const Saved drained = Save(*src);
  OuterOptimizerOptions unbuffered = o;
  unbuffered.buffer_size = 1;
  EXPECT_EQ(code(unbuffered, 4, nlohmann::json::parse(drained.json), drained.Views()),
            StatusCode::kOk);
  EXPECT_EQ(code(other_b, 4, nlohmann::json::parse(drained.json), drained.Views()),
            StatusCode::kOk);
}

}  // namespace
}  // namespace fedps
