// ParamLayout: names, contiguity, the decay region, the hash, and Partition.
#include "model/layout.h"

#include <set>

#include <gtest/gtest.h>

namespace fedps {
namespace {

ModelConfig Tiny(bool tied = true) {
  ModelOptions o;
  o.preset = "tiny";
  o.tie_embeddings = tied ? 1 : 0;
  auto c = ResolveModelConfig(o, 1000);
  EXPECT_TRUE(c.ok());
  return *c;
}

TEST(LayoutTest, NamesUniqueOffsetsContiguousDecayFirst) {
  for (bool tied : {true, false}) {
    ModelConfig c = Tiny(tied);
    ParamLayout l = ParamLayout::ForModel(c);
    std::set<std::string> names;
    int64_t pos = 0;
    bool in_decay = true;
    for (const auto& e : l.entries()) {
      EXPECT_TRUE(names.insert(e.name).second) << e.name;
      EXPECT_EQ(e.offset, pos) << e.name;
      int64_t n = 1;
      for (int64_t s : e.shape) n *= s;
      EXPECT_EQ(e.numel, n);
      pos += e.numel;
      EXPECT_EQ(e.decay, e.shape.size() >= 2) << e.name;
      if (!e.decay) in_decay = false;
      EXPECT_FALSE(e.decay && !in_decay) << "decayed entry after the norms: " << e.name;
      if (e.decay) {
        EXPECT_LE(e.offset + e.numel, l.decay_numel());
      } else {
        EXPECT_GE(e.offset, l.decay_numel());
      }
      EXPECT_EQ(l.Find(e.name), &e);
    }
    EXPECT_EQ(pos, l.total_numel());
    EXPECT_EQ(l.total_numel(), ParameterCount(c));
    EXPECT_EQ(l.total_numel() - l.decay_numel(), (2 * c.n_layers + 1) * c.d_model);
    EXPECT_EQ(l.Find("lm_head.weight") != nullptr, !tied);
    EXPECT_EQ(l.Find("nope"), nullptr);
    ASSERT_NE(l.Find("model.layers.1.self_attn.k_proj.weight"), nullptr);
    EXPECT_EQ(l.Find("model.layers.1.self_attn.k_proj.weight")->shape,
              (std::vector<int64_t>{c.n_kv_heads * c.head_dim(), c.d_model}));
    EXPECT_EQ(l.Find("model.layers.0.mlp.down_proj.weight")->shape, (std::vector<int64_t>{c.d_model, c.ffn_hidden}));
    EXPECT_EQ(l.entries().front().name, "model.embed_tokens.weight");
    EXPECT_EQ(l.entries().back().name, "model.norm.weight");
  }
}

TEST(LayoutTest, HashStableAndSensitive) {
  ModelConfig c = Tiny();
  const std::string h = ParamLayout::ForModel(c).hash();
  EXPECT_EQ(h.size(), 64u);
  EXPECT_EQ(ParamLayout::ForModel(c).hash(), h);
  ModelConfig wider = c;
  wider.ffn_hidden += 16;
  EXPECT_NE(ParamLayout::ForModel(wider).hash(), h);
  ModelConfig untied = c;
  untied.tie_embeddings = false;
  EXPECT_NE(ParamLayout::ForModel(untied).hash(), h);
  // Things that do not change the layout do not change the hash.
  ModelConfig theta = c;
  theta.rope_theta = 5e5;
  EXPECT_EQ(ParamLayout::ForModel(theta).hash(), h);
}

TEST(LayoutTest, FromEntriesChecks) {
  auto ok = ParamLayout::FromEntries({{"a", {4, 4}, 0, 0, true}, {"b", {4}, 0, 0, false}});
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->total_numel(), 20);
  EXPECT_EQ(ok->decay_numel(), 16);
  EXPECT_EQ(ok->Find("b")->offset, 16);
  EXPECT_FALSE(ParamLayout::FromEntries({{"b", {4}, 0, 0, false}, {"a", {4, 4}, 0, 0, true}}).ok());
  EXPECT_FALSE(ParamLayout::FromEntries({{"a", {4}, 0, 0, false}, {"a", {4}, 0, 0, false}}).ok());
}

void CheckPartition(const ParamLayout& l, int s) {
  auto parts = l.Partition(s);
  ASSERT_TRUE(parts.ok()) << parts.status().ToString();
  ASSERT_EQ(parts->size(), static_cast<size_t>(s));
  int64_t lo = INT64_MAX, hi = 0, pos = 0;
  for (const auto& r : *parts) {
    EXPECT_EQ(r.begin, pos);
    EXPECT_EQ(r.begin % ParamLayout::kAlign, 0);
    EXPECT_GT(r.size(), 0);
    lo = std::min(lo, r.size());
    hi = std::max(hi, r.size());
    pos = r.end;
  }
  EXPECT_EQ(pos, l.total_numel());
  EXPECT_LE(hi - lo, ParamLayout::kAlign) << "slices " << s;
}

TEST(LayoutTest, PartitionBalancedCoveringAligned) {
  ParamLayout l = ParamLayout::ForModel(Tiny());
  for (int s : {1, 2, 3, 7, 8, 13, 64, 100}) CheckPartition(l, s);
  CheckPartition(l, static_cast<int>(l.total_numel() / 64));  // the most slices allowed
  // A total that is not a multiple of the alignment.
  auto odd = ParamLayout::FromEntries({{"w", {1000, 3}, 0, 0, true}, {"n", {7}, 0, 0, false}});
  ASSERT_TRUE(odd.ok());
  for (int s : {1, 2, 5, 46}) CheckPartition(*odd, s);
}

TEST(LayoutTest, PartitionErrors) {
  ParamLayout l = ParamLayout::ForModel(Tiny());
  EXPECT_EQ(l.Partition(0).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(l.Partition(-3).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(l.Partition(static_cast<int>(l.total_numel() / 64) + 1).status().code(), StatusCode::kInvalidArgument);
  auto small = ParamLayout::FromEntries({{"n", {63}, 0, 0, false}});
  ASSERT_TRUE(small.ok());
  EXPECT_FALSE(small->Partition(1).ok());  // less than one alignment unit
}

}  // namespace
}  // namespace fedps
