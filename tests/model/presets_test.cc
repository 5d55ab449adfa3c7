// Presets and ModelConfig: parameter counts (printed for docs/models.md), the FLOPs formula,
// override resolution and its errors, JSON round trip.
#include "model/presets.h"

#include <cmath>
#include <cstdio>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "model/layout.h"

namespace fedps {
namespace {

ModelConfig Resolve(const std::string& preset, int64_t tokenizer_vocab) {
  ModelOptions o;
  o.preset = preset;
  auto c = ResolveModelConfig(o, tokenizer_vocab);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  return c.ok() ? *c : ModelConfig{};
}

TEST(PresetsTest, NamesAndShapes) {
  EXPECT_EQ(PresetNames(), (std::vector<std::string>{"tiny", "20m", "125m", "350m", "1.3b", "3b", "7b"}));
  const struct {
    const char* name;
    int64_t d, layers, heads;
  } photon[] = {{"125m", 768, 12, 12}, {"350m", 1024, 24, 16}, {"1.3b", 2048, 24, 16}, {"3b", 2560, 32, 20},
                {"7b", 4096, 32, 32}};
  for (const auto& p : photon) {
    ModelConfig c = Resolve(p.name, 32000);
    EXPECT_EQ(c.d_model, p.d) << p.name;
    EXPECT_EQ(c.n_layers, p.layers) << p.name;
    EXPECT_EQ(c.n_heads, p.heads) << p.name;
    EXPECT_EQ(c.ffn_hidden % 64, 0) << p.name;
    EXPECT_GE(c.ffn_hidden * 3, 8 * c.d_model) << p.name;  // >= 8/3 d
    EXPECT_LT(c.ffn_hidden * 3, 8 * c.d_model + 3 * 64) << p.name;
    EXPECT_EQ(c.max_seq_len, 2048);
    EXPECT_EQ(c.head_dim() % 2, 0);
  }
  ModelConfig tiny = Resolve("tiny", 1000);
  EXPECT_EQ(tiny.vocab_size, 1024);  // rounded up to a multiple of 64
  EXPECT_EQ(tiny.max_seq_len, 256);
  EXPECT_EQ(tiny.ffn_hidden % 16, 0);
  EXPECT_LT(tiny.n_kv_heads, tiny.n_heads);  // GQA exercised by every tiny test
}

TEST(PresetsTest, ParameterCountsMatchLayoutAndArePrinted) {
  // The table in docs/models.md is this output.
  std::printf("| preset | d_model | layers | heads | kv heads | ffn | tied | params (vocab 4096) | params (vocab 32000) "
              "| FLOPs/token (vocab 32000, seq 2048) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& name : PresetNames()) {
    ModelConfig a = Resolve(name, 4096), b = Resolve(name, 32000);
    EXPECT_EQ(ParameterCount(a), ParamLayout::ForModel(a).total_numel()) << name;
    EXPECT_EQ(ParameterCount(b), ParamLayout::ForModel(b).total_numel()) << name;
    std::printf("| %s | %lld | %lld | %lld | %lld | %lld | %s | %lld | %lld | %.4g |\n", name.c_str(),
                static_cast<long long>(a.d_model), static_cast<long long>(a.n_layers),
                static_cast<long long>(a.n_heads), static_cast<long long>(a.n_kv_heads),
                static_cast<long long>(a.ffn_hidden), a.tie_embeddings ? "yes" : "no",
                static_cast<long long>(ParameterCount(a)), static_cast<long long>(ParameterCount(b)),
                FlopsPerToken(b, 2048));
  }
  // Hand-computed: 125m, vocab 32000, untied.
  //   embeddings 2 * 32000 * 768; per layer 4 * 768^2 + 3 * 768 * 2048 + 2 * 768; final norm 768.
  const int64_t per_layer = 4 * 768 * 768 + 3 * 768 * 2048 + 2 * 768;
  EXPECT_EQ(ParameterCount(Resolve("125m", 32000)), 2 * 32000 * 768 + 12 * per_layer + 768);
  // tiny (tied, GQA 4/2 heads of 16), vocab 1024.
  const int64_t tiny_layer = 64 * 64 * 2 + 2 * 64 * 32 + 3 * 64 * 176 + 2 * 64;
  EXPECT_EQ(ParameterCount(Resolve("tiny", 1024)), 1024 * 64 + 2 * tiny_layer + 64);
}

TEST(PresetsTest, FlopsPerTokenFormula) {
  ModelConfig c = Resolve("125m", 32000);
  const double n_matmul = static_cast<double>(ParameterCount(c) - 32000 * 768);  // input embedding excluded
  EXPECT_DOUBLE_EQ(FlopsPerToken(c, 1024), 6 * n_matmul + 12.0 * 12 * 768 * 1024);
  ModelConfig t = Resolve("tiny", 1024);  // tied: the shared matrix is the LM head, counted
  EXPECT_DOUBLE_EQ(FlopsPerToken(t, 64), 6.0 * static_cast<double>(ParameterCount(t)) + 12.0 * 2 * 64 * 64);
}

TEST(PresetsTest, OverridesApply) {
  ModelOptions o;
  o.preset = "20m";
  o.vocab_size = 5000;
  o.n_layers = 3;
  o.n_kv_heads = 2;
  o.tie_embeddings = 1;
  o.rope_theta = 500000;
  o.max_seq_len = 512;
  auto c = ResolveModelConfig(o, 4000);
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->vocab_size, 5000);  // explicit sizes are not rounded
  EXPECT_EQ(c->n_layers, 3);
  EXPECT_EQ(c->n_kv_heads, 2);
  EXPECT_TRUE(c->tie_embeddings);
  EXPECT_EQ(c->rope_theta, 500000);
  EXPECT_EQ(c->max_seq_len, 512);
  EXPECT_EQ(c->d_model, 384);
  // Width override: the SwiGLU width follows unless given.
  ModelOptions w;
  w.preset = "tiny";
  w.d_model = 128;
  w.n_heads = 8;
  auto cw = ResolveModelConfig(w, 256);
  ASSERT_TRUE(cw.ok()) << cw.status().ToString();
  EXPECT_EQ(cw->ffn_hidden, 352);
  EXPECT_EQ(cw->n_kv_heads, 2);  // the preset's kv heads still divide 8
}

TEST(PresetsTest, ResolveErrors) {
  ModelOptions o;
  o.preset = "nope";
  EXPECT_EQ(ResolveModelConfig(o, 1000).status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(ResolveModelConfig(o, 1000).status().message().find("tiny"), std::string::npos);

  o.preset = "tiny";
  EXPECT_EQ(ResolveModelConfig(o, 0).status().code(), StatusCode::kInvalidArgument);  // no vocab anywhere
  o.vocab_size = 500;
  EXPECT_EQ(ResolveModelConfig(o, 1000).status().code(), StatusCode::kInvalidArgument);  // smaller than tokenizer
  EXPECT_TRUE(ResolveModelConfig(o, 0).ok());  // explicit vocab, no tokenizer
  o.vocab_size = 0;

  ModelOptions bad = o;
  bad.n_heads = 5;  // 64 % 5 != 0
  EXPECT_EQ(ResolveModelConfig(bad, 1000).status().code(), StatusCode::kInvalidArgument);
  bad = o;
  bad.n_heads = 4;
  bad.n_kv_heads = 3;  // 4 % 3 != 0
  EXPECT_EQ(ResolveModelConfig(bad, 1000).status().code(), StatusCode::kInvalidArgument);
  bad = o;
  bad.d_model = 72;
  bad.n_heads = 8;  // head_dim 9 is odd
  bad.n_kv_heads = 8;
  auto odd = ResolveModelConfig(bad, 1000);
  EXPECT_EQ(odd.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(odd.status().message().find("even"), std::string::npos);
}

TEST(PresetsTest, JsonRoundTripAndValidation) {
  ModelConfig c = Resolve("350m", 32000);
  c.rope_theta = 123456.5;
  c.norm_eps = 1e-6;
  auto back = ModelConfig::FromJson(c.ToJson());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, c);
  // Through text too.
  auto text = ModelConfig::FromJson(nlohmann::json::parse(c.ToJson().dump()));
  ASSERT_TRUE(text.ok());
  EXPECT_EQ(*text, c);

  nlohmann::json j = c.ToJson();
  j.erase("n_heads");
  EXPECT_EQ(ModelConfig::FromJson(j).status().code(), StatusCode::kInvalidArgument);
  j = c.ToJson();
  j["d_model"] = "big";
  EXPECT_EQ(ModelConfig::FromJson(j).status().code(), StatusCode::kInvalidArgument);
  j = c.ToJson();
  j["n_kv_heads"] = 3;
  EXPECT_EQ(ModelConfig::FromJson(j).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(ModelConfig::FromJson(nlohmann::json::array()).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace fedps
