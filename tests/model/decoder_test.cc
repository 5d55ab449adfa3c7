// Decoder / Model: deterministic init, shapes, causality, flat parameter and gradient
// views, a few AdamW steps, and the tiny preset's step time.
#include "model/decoder.h"

#include <chrono>
#include <cmath>
#include <cstdio>

#include <gtest/gtest.h>

namespace fedps {
namespace {

ModelConfig Config(const std::string& preset = "tiny", int64_t vocab = 1000, int tied = -1) {
  ModelOptions o;
  o.preset = preset;
  o.tie_embeddings = tied;
  auto c = ResolveModelConfig(o, vocab);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return *c;
}

std::unique_ptr<Model> Make(const ModelConfig& c, uint64_t seed = 1) {
  auto m = Model::Create(c, torch::kCPU, seed);
  EXPECT_TRUE(m.ok()) << m.status().ToString();
  return m.ok() ? std::move(m).value() : nullptr;
}

torch::Tensor Tokens(int64_t b, int64_t t, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return torch::randint(vocab, {b, t}, gen, torch::kLong);
}

TEST(ModelTest, DeterministicInit) {
  ModelConfig c = Config();
  torch::manual_seed(1);
  auto a = Make(c, 7);
  torch::manual_seed(2);  // the global seed does not matter
  auto b = Make(c, 7);
  auto d = Make(c, 8);
  ASSERT_TRUE(a && b && d);
  EXPECT_TRUE(torch::equal(a->flat_params(), b->flat_params()));
  EXPECT_FALSE(torch::equal(a->flat_params(), d->flat_params()));
  EXPECT_EQ(a->flat_params().numel(), ParameterCount(c));
  EXPECT_EQ(a->flat_params().scalar_type(), torch::kFloat);

  // Norms are 1, matrices ~ N(0, std), output projections scaled by 1/sqrt(2L).
  const ParamLayout& l = a->layout();
  torch::Tensor flat = a->flat_params();
  EXPECT_TRUE(torch::all(flat.narrow(0, l.decay_numel(), l.total_numel() - l.decay_numel()) == 1).item<bool>());
  auto std_of = [&](const std::string& name) {
    const ParamEntry* e = l.Find(name);
    return flat.narrow(0, e->offset, e->numel).std().item<double>();
  };
  EXPECT_NEAR(std_of("model.embed_tokens.weight"), 0.02, 0.002);
  EXPECT_NEAR(std_of("model.layers.0.mlp.up_proj.weight"), 0.02, 0.002);
  EXPECT_NEAR(std_of("model.layers.1.mlp.down_proj.weight"), 0.02 / std::sqrt(2.0 * c.n_layers), 0.002);
}

TEST(ModelTest, ParametersAreViewsOfTheFlatBuffer) {
  ModelConfig c = Config("tiny", 1000, /*tied=*/0);
  auto m = Make(c);
  ASSERT_TRUE(m);
  auto named = m->NamedParameters();
  ASSERT_EQ(named.size(), m->layout().entries().size());
  const float* base = m->flat_params().data_ptr<float>();
  for (size_t i = 0; i < named.size(); ++i) {
    const ParamEntry& e = m->layout().entries()[i];
    EXPECT_EQ(named[i].first, e.name);
    EXPECT_EQ(named[i].second.sizes().vec(), e.shape);
    EXPECT_EQ(named[i].second.data_ptr<float>(), base + e.offset) << e.name;
    EXPECT_TRUE(named[i].second.requires_grad());
  }
  // The decoder's own parameters are the same tensors.
  EXPECT_EQ(m->decoder()->parameters().size(), named.size());
  // Writing the flat buffer changes the model.
  torch::Tensor tokens = Tokens(2, 8, c.vocab_size, 3);
  torch::Tensor before = m->Forward(tokens).detach().clone();
  {
    torch::NoGradGuard g;
    m->flat_params().narrow(0, 0, m->layout().decay_numel()).mul_(2.0);
  }
  EXPECT_FALSE(torch::allclose(m->Forward(tokens), before));
}

TEST(ModelTest, ForwardShapesAndInitialLoss) {
  for (int tied : {0, 1}) {
    ModelConfig c = Config("tiny", 1000, tied);
    auto m = Make(c);
    ASSERT_TRUE(m);
    torch::Tensor tokens = Tokens(3, 17, c.vocab_size, 5);
    torch::Tensor logits = m->Forward(tokens);
    EXPECT_EQ(logits.sizes().vec(), (std::vector<int64_t>{3, 17, c.vocab_size}));
    EXPECT_EQ(logits.scalar_type(), torch::kFloat);
    torch::Tensor loss = m->Loss(tokens, Tokens(3, 17, c.vocab_size, 6));
    EXPECT_EQ(loss.dim(), 0);
    // Small init => near-uniform predictions.
    EXPECT_NEAR(loss.item<double>(), std::log(static_cast<double>(c.vocab_size)), 0.05);
  }
}

TEST(ModelTest, BadInputsThrowNotAbort) {
  ModelConfig c = Config();
  auto m = Make(c);
  ASSERT_TRUE(m);
  EXPECT_THROW(m->Forward(Tokens(1, c.max_seq_len + 1, c.vocab_size, 1)), c10::Error);
  EXPECT_THROW(m->Forward(torch::zeros({4}, torch::kLong)), c10::Error);
  EXPECT_THROW(m->Forward(torch::zeros({1, 4}, torch::kInt)), c10::Error);
  EXPECT_THROW(m->Loss(Tokens(2, 4, c.vocab_size, 1), Tokens(2, 5, c.vocab_size, 1)), c10::Error);
  ModelConfig bad = c;
  bad.n_kv_heads = 3;
  EXPECT_EQ(Model::Create(bad, torch::kCPU, 1).status().code(), StatusCode::kInvalidArgument);
}

TEST(ModelTest, Causal) {
  ModelConfig c = Config();
  auto m = Make(c);
  ASSERT_TRUE(m);
  torch::Tensor a = Tokens(2, 12, c.vocab_size, 9);
  torch::Tensor b = a.clone();
  b.index_put_({torch::indexing::Slice(), 8}, (a.index({torch::indexing::Slice(), 8}) + 1) % c.vocab_size);
  torch::NoGradGuard g;
  torch::Tensor la = m->Forward(a), lb = m->Forward(b);
  using torch::indexing::Slice;
  EXPECT_TRUE(torch::allclose(la.index({Slice(), Slice(0, 8)}), lb.index({Slice(), Slice(0, 8)}), 1e-6, 1e-6));
  EXPECT_FALSE(torch::allclose(la.index({Slice(), Slice(8)}), lb.index({Slice(), Slice(8)}), 1e-6, 1e-6));
}

TEST(ModelTest, GradientsAccumulateIntoTheFlatGradBuffer) {
  for (int tied : {0, 1}) {
    ModelConfig c = Config("tiny", 1000, tied);
    auto m = Make(c);
    ASSERT_TRUE(m);
    auto named = m->NamedParameters();
    std::vector<void*> grad_ptrs;
    const float* gbase = m->flat_grads().data_ptr<float>();
    for (size_t i = 0; i < named.size(); ++i) {
      ASSERT_TRUE(named[i].second.grad().defined());
      EXPECT_EQ(named[i].second.grad().data_ptr<float>(), gbase + m->layout().entries()[i].offset);
      grad_ptrs.push_back(named[i].second.grad().data_ptr());
    }
    torch::Tensor tokens = Tokens(2, 16, c.vocab_size, 1), targets = Tokens(2, 16, c.vocab_size, 2);
    m->Loss(tokens, targets).backward();
    torch::Tensor g1 = m->flat_grads().clone();
    EXPECT_GT(g1.abs().sum().item<double>(), 0.0);
    for (size_t i = 0; i < named.size(); ++i) {
      const ParamEntry& e = m->layout().entries()[i];
      // Not replaced by a fresh tensor, and the flat buffer holds exactly these grads.
      EXPECT_EQ(named[i].second.grad().data_ptr(), grad_ptrs[i]) << e.name;
      EXPECT_TRUE(torch::equal(named[i].second.grad().reshape({-1}), g1.narrow(0, e.offset, e.numel))) << e.name;
      EXPECT_GT(named[i].second.grad().abs().sum().item<double>(), 0.0) << e.name;
    }
    // A second backward accumulates; ZeroGrad zeroes in place.
    m->Loss(tokens, targets).backward();
    EXPECT_TRUE(torch::allclose(m->flat_grads(), 2 * g1, 1e-5, 1e-6));
    m->ZeroGrad();
    EXPECT_EQ(m->flat_grads().abs().sum().item<double>(), 0.0);
    for (size_t i = 0; i < named.size(); ++i) EXPECT_EQ(named[i].second.grad().data_ptr(), grad_ptrs[i]);
  }
}

TEST(ModelTest, AdamWStepsReduceLoss) {
  ModelConfig c = Config();
  auto m = Make(c);
  ASSERT_TRUE(m);
  torch::Tensor batch = Tokens(4, 33, 64, 11);  // a small alphabet so it can be memorised
  torch::Tensor x = batch.narrow(1, 0, 32), y = batch.narrow(1, 1, 32);
  torch::optim::AdamW opt(m->decoder()->parameters(), torch::optim::AdamWOptions(1e-2).weight_decay(0.1));
  const float* pbase = m->flat_params().data_ptr<float>();
  double first = 0, last = 0;
  for (int step = 0; step < 30; ++step) {
    m->ZeroGrad();
    torch::Tensor loss = m->Loss(x, y);
    loss.backward();
    opt.step();
    if (step == 0) first = loss.item<double>();
    last = loss.item<double>();
  }
  std::printf("AdamW on a fixed batch: loss %.3f -> %.3f\n", first, last);
  EXPECT_LT(last, first - 1.0);
  // The optimizer updated the flat buffer in place.
  EXPECT_EQ(m->NamedParameters()[0].second.data_ptr<float>(), pbase);
  EXPECT_EQ(m->NamedParameters()[0].second.grad().data_ptr<float>(), m->flat_grads().data_ptr<float>());
}

TEST(ModelTest, TinyStepTimeOnOneThread) {
  ModelConfig c = Config("tiny", 1024);
  auto m = Make(c);
  ASSERT_TRUE(m);
  const int threads = at::get_num_threads();
  at::set_num_threads(1);
  torch::Tensor x = Tokens(8, 64, c.vocab_size, 1), y = Tokens(8, 64, c.vocab_size, 2);
  torch::optim::AdamW opt(m->decoder()->parameters(), torch::optim::AdamWOptions(1e-3));
  auto step = [&] {
    m->ZeroGrad();
    m->Loss(x, y).backward();
    opt.step();
  };
  step();  // warm-up
  const int n = 10;
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) step();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / n;
  at::set_num_threads(threads);
  std::printf("tiny (%lld params) train step, batch 8 x 64, 1 thread: %.1f ms\n",
              static_cast<long long>(ParameterCount(c)), s * 1e3);
  EXPECT_LT(s, 0.5);  // target well under 0.1 s; loose bound for a shared, noisy machine
}

}  // namespace
}  // namespace fedps
