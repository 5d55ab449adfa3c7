// The fused, chunked LM head + cross-entropy (model/lm_head_loss.h) against the unfused
// reference (linear, then torch's cross_entropy): loss and both gradients, on the CPU in
// fp32, with chunk sizes that do and do not divide the rows, ignored targets, and through
// Model::Loss for tied and untied heads. The GPU (bf16 autocast) comparison runs in the
// `gpu` label's trainer test.
#include "model/lm_head_loss.h"

#include <gtest/gtest.h>

#include "model/decoder.h"

namespace fedps {
namespace {

struct Case {
  torch::Tensor hidden, weight, targets;
};

Case MakeCase(int64_t n, int64_t d, int64_t v, uint64_t seed, bool some_ignored) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  Case c;
  c.hidden = torch::randn({n, d}, gen, torch::kFloat).requires_grad_(true);
  c.weight = (torch::randn({v, d}, gen, torch::kFloat) * 0.2).requires_grad_(true);
  c.targets = torch::randint(v, {n}, gen, torch::kLong);
  if (some_ignored) c.targets.index_put_({torch::arange(0, n, 3)}, -100);
  return c;
}

// loss, d loss / d hidden, d loss / d weight
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> LossAndGrads(const Case& c, int64_t chunk_rows, double scale) {
  torch::Tensor h = c.hidden.detach().clone().requires_grad_(true);
  torch::Tensor w = c.weight.detach().clone().requires_grad_(true);
  torch::Tensor loss = chunk_rows > 0
                           ? ChunkedLmHeadLoss(h, w, c.targets, chunk_rows)
                           : torch::nn::functional::cross_entropy(torch::nn::functional::linear(h, w), c.targets);
  (loss * scale).backward();
  return {loss.detach(), h.grad(), w.grad()};
}

TEST(ChunkedLmHeadLoss, MatchesLinearThenCrossEntropy) {
  for (bool ignored : {false, true}) {
    Case c = MakeCase(/*n=*/37, /*d=*/24, /*v=*/101, /*seed=*/ignored ? 2 : 1, ignored);
    auto [ref_loss, ref_gh, ref_gw] = LossAndGrads(c, 0, 0.5);
    for (int64_t chunk : {1, 5, 16, 37, 64}) {
      SCOPED_TRACE("chunk " + std::to_string(chunk) + (ignored ? ", some targets ignored" : ""));
      auto [loss, gh, gw] = LossAndGrads(c, chunk, 0.5);
      EXPECT_NEAR(loss.item<double>(), ref_loss.item<double>(), 1e-5);
      EXPECT_TRUE(torch::allclose(gh, ref_gh, 1e-4, 1e-6)) << (gh - ref_gh).abs().max().item<double>();
      EXPECT_TRUE(torch::allclose(gw, ref_gw, 1e-4, 1e-6)) << (gw - ref_gw).abs().max().item<double>();
    }
  }
}

TEST(ChunkedLmHeadLoss, WithoutAutogradGivesTheLossAlone) {
  Case c = MakeCase(19, 8, 33, 3, false);
  torch::Tensor ref = torch::nn::functional::cross_entropy(torch::nn::functional::linear(c.hidden, c.weight), c.targets);
  torch::NoGradGuard no_grad;
  torch::Tensor loss = ChunkedLmHeadLoss(c.hidden, c.weight, c.targets, 4);
  EXPECT_FALSE(loss.requires_grad());
  EXPECT_NEAR(loss.item<double>(), ref.item<double>(), 1e-5);
}

TEST(ChunkedLmHeadLoss, AllTargetsIgnoredGivesZeroNotNaN) {
  Case c = MakeCase(6, 4, 9, 4, false);
  c.targets.fill_(-100);
  auto [loss, gh, gw] = LossAndGrads(c, 4, 1.0);
  EXPECT_EQ(loss.item<double>(), 0.0);
  EXPECT_EQ(gh.abs().sum().item<double>(), 0.0);
  EXPECT_EQ(gw.abs().sum().item<double>(), 0.0);
}

TEST(ChunkedLmHeadLoss, BadShapesAreRefused) {
  Case c = MakeCase(6, 4, 9, 5, false);
  EXPECT_THROW(ChunkedLmHeadLoss(c.hidden, c.weight.narrow(1, 0, 3), c.targets, 2), c10::Error);
  EXPECT_THROW(ChunkedLmHeadLoss(c.hidden, c.weight, c.targets.narrow(0, 0, 5), 2), c10::Error);
  EXPECT_THROW(ChunkedLmHeadLoss(c.hidden, c.weight, c.targets, 0), c10::Error);
}

// Through the model: the same loss and the same flat gradient, tied and untied heads.
TEST(ChunkedLmHeadLoss, ModelLossGivesTheSameGradientsAsTheUnfusedPath) {
  for (int tied : {0, 1}) {
    SCOPED_TRACE(tied ? "tied" : "untied");
    ModelOptions o;
    o.preset = "tiny";
    o.tie_embeddings = tied;
    auto config = ResolveModelConfig(o, 500);
    ASSERT_TRUE(config.ok()) << config.status().ToString();
    auto m = Model::Create(*config, torch::kCPU, 9);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    auto gen = at::make_generator<at::CPUGeneratorImpl>(10);
    torch::Tensor batch = torch::randint(500, {3, 21}, gen, torch::kLong);
    torch::Tensor x = batch.narrow(1, 0, 20), y = batch.narrow(1, 1, 20);
    (*m)->ZeroGrad();
    torch::Tensor ref = (*m)->Loss(x, y);
    ref.backward();
    torch::Tensor ref_grad = (*m)->flat_grads().clone();
    (*m)->ZeroGrad();
    torch::Tensor fused = (*m)->Loss(x, y, /*chunk_rows=*/7);
    fused.backward();
    EXPECT_NEAR(fused.item<double>(), ref.item<double>(), 1e-5);
    const double err = ((*m)->flat_grads() - ref_grad).abs().max().item<double>();
    EXPECT_LT(err, 1e-5 * std::max(1.0, ref_grad.abs().max().item<double>())) << err;
  }
}

}  // namespace
}  // namespace fedps
