// Presets: see presets.h. The table below is the single source of the shapes; the parameter
// counts in docs/models.md are printed by tests/model/presets_test.cc from this code.
#include "model/presets.h"

#include <cmath>
#include <map>

#include <nlohmann/json.hpp>

namespace fedps {
namespace {

int64_t RoundUp(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// SwiGLU width: 8/3 d rounded up to `multiple`, so the MLP costs about as much as a
// 4d GELU MLP (LLaMA's choice), on a size the matmul kernels like.
int64_t SwiGluHidden(int64_t d, int64_t multiple) { return RoundUp((8 * d + 2) / 3, multiple); }

ModelConfig Make(const std::string& name, int64_t d, int64_t layers, int64_t heads, int64_t kv_heads,
                 int64_t ffn_multiple, int64_t max_seq, bool tied) {
  ModelConfig c;
  c.preset = name;
  c.vocab_size = 0;  // from the tokenizer
  c.d_model = d;
  c.n_layers = layers;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.ffn_hidden = SwiGluHidden(d, ffn_multiple);
  c.max_seq_len = max_seq;
  c.rope_theta = 10000.0;
  c.norm_eps = 1e-5;
  c.init_std = 0.02;
  c.tie_embeddings = tied;
  return c;
}

// The presets. tiny is for tests and CI (a step of 8x64 tokens is a few ms on one core); it
// uses grouped-query attention (kv 2 of 4 heads) so that path is always exercised, and ties
// its embeddings because at d=64 the vocabulary matrices would otherwise be most of the
// model. 20m is the smallest model worth looking at (head_dim 64 like the large ones),
// untied. 125m..7b follow Photon's MPT shapes (d_model, layers, heads) with Llama blocks;
// multi-head attention, untied, as in Llama 1/2 at these sizes.
const std::vector<ModelConfig>& Table() {
  static const std::vector<ModelConfig> kTable = {
      Make("tiny", 64, 2, 4, 2, 16, 256, true),
      Make("20m", 384, 8, 6, 6, 64, 2048, false),
      Make("125m", 768, 12, 12, 12, 64, 2048, false),
      Make("350m", 1024, 24, 16, 16, 64, 2048, false),
      Make("1.3b", 2048, 24, 16, 16, 64, 2048, false),
      Make("3b", 2560, 32, 20, 20, 64, 2048, false),
      Make("7b", 4096, 32, 32, 32, 64, 2048, false),
  };
  return kTable;
}

bool FinitePositive(double x) { return std::isfinite(x) && x > 0; }

}  // namespace

std::vector<std::string> PresetNames() {
  std::vector<std::string> names;
  for (const auto& c : Table()) names.push_back(c.preset);
  return names;
}

StatusOr<ModelConfig> PresetConfig(const std::string& name) {
  for (const auto& c : Table()) {
    if (c.preset == name) return c;
  }
  std::string known;
  for (const auto& n : PresetNames()) known += (known.empty() ? "" : ", ") + n;
  return NotFound("unknown model preset '" + name + "' (known: " + known + ")");
}

Status ModelConfig::Validate() const {
  auto bad = [&](const std::string& why) {
    return InvalidArgument("model config" + (preset.empty() ? "" : " (preset " + preset + ")") + ": " + why);
  };
  const std::pair<const char*, int64_t> sizes[] = {
      {"vocab_size", vocab_size}, {"d_model", d_model},       {"n_layers", n_layers},
      {"n_heads", n_heads},       {"n_kv_heads", n_kv_heads}, {"ffn_hidden", ffn_hidden},
      {"max_seq_len", max_seq_len}};
  for (const auto& [key, v] : sizes) {
    if (v <= 0) return bad(std::string(key) + " must be > 0, got " + std::to_string(v));
  }
  // Keeps every weight matrix and the flat vector far from int64 overflow.
  if (vocab_size > (int64_t{1} << 24) || d_model > (int64_t{1} << 16) || n_layers > 1024 ||
      ffn_hidden > (int64_t{1} << 18) || max_seq_len > (int64_t{1} << 22))
    return bad("a size is implausibly large");
  if (d_model % n_heads != 0)
    return bad("d_model " + std::to_string(d_model) + " is not a multiple of n_heads " + std::to_string(n_heads));
  if (n_heads % n_kv_heads != 0)
    return bad("n_heads " + std::to_string(n_heads) + " is not a multiple of n_kv_heads " +
               std::to_string(n_kv_heads));
  if (head_dim() % 2 != 0)
    return bad("head_dim (d_model / n_heads) " + std::to_string(head_dim()) + " must be even for rotary embeddings");
  if (!FinitePositive(rope_theta)) return bad("rope_theta must be > 0");
  if (!FinitePositive(norm_eps)) return bad("norm_eps must be > 0");
  if (!FinitePositive(init_std)) return bad("init_std must be > 0");
  return Status::Ok();
}

nlohmann::json ModelConfig::ToJson() const {
  return nlohmann::json{{"preset", preset},
                        {"vocab_size", vocab_size},
                        {"d_model", d_model},
                        {"n_layers", n_layers},
                        {"n_heads", n_heads},
                        {"n_kv_heads", n_kv_heads},
                        {"ffn_hidden", ffn_hidden},
                        {"max_seq_len", max_seq_len},
                        {"rope_theta", rope_theta},
                        {"norm_eps", norm_eps},
                        {"init_std", init_std},
                        {"tie_embeddings", tie_embeddings}};
}

StatusOr<ModelConfig> ModelConfig::FromJson(const nlohmann::json& j) {
  if (!j.is_object()) return InvalidArgument("model config: expected a JSON object");
  ModelConfig c;
  auto need = [&](const char* key) -> StatusOr<const nlohmann::json*> {
    auto it = j.find(key);
    if (it == j.end()) return InvalidArgument(std::string("model config: missing '") + key + "'");
    return &*it;
  };
  auto get_int = [&](const char* key, int64_t* out) -> Status {
    ASSIGN_OR_RETURN(const nlohmann::json* v, need(key));
    if (!v->is_number_integer()) return InvalidArgument(std::string("model config: '") + key + "' must be an integer");
    *out = v->get<int64_t>();
    return Status::Ok();
  };
  auto get_double = [&](const char* key, double* out) -> Status {
    ASSIGN_OR_RETURN(const nlohmann::json* v, need(key));
    if (!v->is_number()) return InvalidArgument(std::string("model config: '") + key + "' must be a number");
    *out = v->get<double>();
    return Status::Ok();
  };
  {
    ASSIGN_OR_RETURN(const nlohmann::json* v, need("preset"));
    if (!v->is_string()) return InvalidArgument("model config: 'preset' must be a string");
    c.preset = v->get<std::string>();
  }
  RETURN_IF_ERROR(get_int("vocab_size", &c.vocab_size));
  RETURN_IF_ERROR(get_int("d_model", &c.d_model));
  RETURN_IF_ERROR(get_int("n_layers", &c.n_layers));
  RETURN_IF_ERROR(get_int("n_heads", &c.n_heads));
  RETURN_IF_ERROR(get_int("n_kv_heads", &c.n_kv_heads));
  RETURN_IF_ERROR(get_int("ffn_hidden", &c.ffn_hidden));
  RETURN_IF_ERROR(get_int("max_seq_len", &c.max_seq_len));
  RETURN_IF_ERROR(get_double("rope_theta", &c.rope_theta));
  RETURN_IF_ERROR(get_double("norm_eps", &c.norm_eps));
  RETURN_IF_ERROR(get_double("init_std", &c.init_std));
  {
    ASSIGN_OR_RETURN(const nlohmann::json* v, need("tie_embeddings"));
    if (!v->is_boolean()) return InvalidArgument("model config: 'tie_embeddings' must be true or false");
    c.tie_embeddings = v->get<bool>();
  }
  RETURN_IF_ERROR(c.Validate());
  return c;
}

StatusOr<ModelConfig> ResolveModelConfig(const ModelOptions& opts, int64_t tokenizer_vocab) {
  auto preset = PresetConfig(opts.preset);
  if (!preset.ok()) return InvalidArgument(preset.status().message());
  ModelConfig c = *preset;
  if (tokenizer_vocab < 0) return InvalidArgument("tokenizer vocabulary size must be >= 0");
  if (opts.vocab_size < 0 || opts.d_model < 0 || opts.n_layers < 0 || opts.n_heads < 0 || opts.n_kv_heads < 0 ||
      opts.ffn_hidden < 0 || opts.max_seq_len < 0 || opts.rope_theta < 0 || opts.norm_eps < 0 || opts.init_std < 0)
    return InvalidArgument("model options must be >= 0 (0 = from the preset)");
  if (opts.vocab_size > 0) {
    if (opts.vocab_size < tokenizer_vocab)
      return InvalidArgument("model.vocab_size " + std::to_string(opts.vocab_size) +
                             " is smaller than the tokenizer's vocabulary " + std::to_string(tokenizer_vocab));
    c.vocab_size = opts.vocab_size;
  } else {
    if (tokenizer_vocab == 0)
      return InvalidArgument("model.vocab_size is 0 (from the tokenizer) but no tokenizer vocabulary size is known");
    c.vocab_size = RoundUp(tokenizer_vocab, 64);
  }
  const bool width_changed = opts.d_model > 0 && opts.d_model != c.d_model;
  if (opts.d_model > 0) c.d_model = opts.d_model;
  if (opts.n_layers > 0) c.n_layers = opts.n_layers;
  if (opts.n_heads > 0) c.n_heads = opts.n_heads;
  if (opts.n_kv_heads > 0) {
    c.n_kv_heads = opts.n_kv_heads;
  } else if (opts.n_heads > 0 && c.n_heads % c.n_kv_heads != 0) {
    // The preset's kv heads do not divide the new head count: fall back to full MHA
    // rather than failing on a field the user never set.
    c.n_kv_heads = c.n_heads;
  }
  if (opts.ffn_hidden > 0) {
    c.ffn_hidden = opts.ffn_hidden;
  } else if (width_changed) {
    c.ffn_hidden = SwiGluHidden(c.d_model, c.preset == "tiny" ? 16 : 64);  // follows the width
  }
  if (opts.max_seq_len > 0) c.max_seq_len = opts.max_seq_len;
  if (opts.rope_theta > 0) c.rope_theta = opts.rope_theta;
  if (opts.norm_eps > 0) c.norm_eps = opts.norm_eps;
  if (opts.init_std > 0) c.init_std = opts.init_std;
  if (opts.tie_embeddings == 0 || opts.tie_embeddings == 1) c.tie_embeddings = opts.tie_embeddings == 1;
  RETURN_IF_ERROR(c.Validate());
  return c;
}

int64_t ParameterCount(const ModelConfig& c) {
  const int64_t d = c.d_model, kv_dim = c.n_kv_heads * c.head_dim();
  const int64_t attn = d * d /*q*/ + 2 * d * kv_dim /*k,v*/ + d * d /*o*/;
  const int64_t mlp = 3 * d * c.ffn_hidden;
  const int64_t norms = 2 * d;
  const int64_t embed = c.vocab_size * d;
  return embed + c.n_layers * (attn + mlp + norms) + d /*final norm*/ + (c.tie_embeddings ? 0 : embed);
}

double FlopsPerToken(const ModelConfig& c, int64_t seq_len) {
  const int64_t matmul_params = ParameterCount(c) - (c.tie_embeddings ? 0 : c.vocab_size * c.d_model);
  return 6.0 * static_cast<double>(matmul_params) +
         12.0 * static_cast<double>(c.n_layers) * static_cast<double>(c.d_model) * static_cast<double>(seq_len);
}

}  // namespace fedps
