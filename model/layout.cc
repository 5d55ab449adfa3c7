// ParamLayout: see layout.h.
#include "model/layout.h"

#include "common/sha256.h"

namespace fedps {

ParamLayout ParamLayout::ForModel(const ModelConfig& c) {
  const int64_t d = c.d_model, kv = c.n_kv_heads * c.head_dim(), f = c.ffn_hidden;
  std::vector<ParamEntry> e;
  auto add = [&](std::string name, std::vector<int64_t> shape, bool decay) {
    ParamEntry p;
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.decay = decay;
    e.push_back(std::move(p));
  };
  add("model.embed_tokens.weight", {c.vocab_size, d}, true);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "self_attn.q_proj.weight", {d, d}, true);
    add(p + "self_attn.k_proj.weight", {kv, d}, true);
    add(p + "self_attn.v_proj.weight", {kv, d}, true);
    add(p + "self_attn.o_proj.weight", {d, d}, true);
    add(p + "mlp.gate_proj.weight", {f, d}, true);
    add(p + "mlp.up_proj.weight", {f, d}, true);
    add(p + "mlp.down_proj.weight", {d, f}, true);
  }
  if (!c.tie_embeddings) add("lm_head.weight", {c.vocab_size, d}, true);
  for (int64_t l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {d}, false);
    add(p + "post_attention_layernorm.weight", {d}, false);
  }
  add("model.norm.weight", {d}, false);
  auto layout = FromEntries(std::move(e));
  // The entries above are unique and decay-first by construction.
  CHECK(layout.ok()) << layout.status().ToString();
  return std::move(layout).value();
}

StatusOr<ParamLayout> ParamLayout::FromEntries(std::vector<ParamEntry> entries) {
  ParamLayout l;
  bool seen_no_decay = false;
  std::string canonical;
  for (auto& e : entries) {
    if (e.name.empty()) return InvalidArgument("parameter layout: empty parameter name");
    if (e.decay && seen_no_decay)
      return InvalidArgument("parameter layout: decayed parameter " + e.name + " after a non-decayed one");
    seen_no_decay |= !e.decay;
    int64_t n = 1;
    for (int64_t s : e.shape) {
      if (s < 0) return InvalidArgument("parameter layout: negative dimension in " + e.name);
      n *= s;
    }
    e.numel = n;
    e.offset = l.total_;
    l.total_ += n;
    if (e.decay) l.decay_ = l.total_;
    if (!l.index_.emplace(e.name, l.entries_.size()).second)
      return InvalidArgument("parameter layout: duplicate parameter name " + e.name);
    canonical += e.name;
    canonical += ' ';
    for (size_t i = 0; i < e.shape.size(); ++i) canonical += (i ? "," : "") + std::to_string(e.shape[i]);
    canonical += ' ';
    canonical += std::to_string(e.offset);
    canonical += '\n';
    l.entries_.push_back(std::move(e));
  }
  canonical += "fp32";
  l.hash_ = Sha256Hex(canonical);
  return l;
}

const ParamEntry* ParamLayout::Find(std::string_view name) const {
  auto it = index_.find(std::string(name));
  return it == index_.end() ? nullptr : &entries_[it->second];
}

StatusOr<std::vector<SliceRange>> ParamLayout::Partition(int num_slices) const {
  const int64_t units = total_ / kAlign;
  if (num_slices < 1 || num_slices > units)
    return InvalidArgument("cannot partition " + std::to_string(total_) + " parameters into " +
                           std::to_string(num_slices) + " slices (need 1 <= slices <= " + std::to_string(units) +
                           ", at least " + std::to_string(kAlign) + " elements each)");
  // Whole alignment units spread evenly, the first (units % S) slices one unit larger; the
  // sub-unit tail goes to the last slice, which never holds an extra unit, so sizes still
  // differ by at most kAlign.
  const int64_t base = units / num_slices, extra = units % num_slices;
  std::vector<SliceRange> out(static_cast<size_t>(num_slices));
  int64_t pos = 0;
  for (int64_t i = 0; i < num_slices; ++i) {
    const int64_t n = (base + (i < extra ? 1 : 0)) * kAlign;
    out[static_cast<size_t>(i)] = {pos, pos + n};
    pos += n;
  }
  out.back().end = total_;
  return out;
}

}  // namespace fedps
