// Model presets and the resolved model configuration.
//
// A run names a preset (tiny ... 7b) and may override single fields (common/config.h,
// ModelOptions: 0 / -1 mean "from the preset"). ResolveModelConfig turns that into a
// ModelConfig, the one description of the architecture that the decoder, the flat
// parameter layout, checkpoints, the Hugging Face export and the parameter-server shards
// all agree on. It is torch-free so the shards and tools can use it without LibTorch.
//
// The shapes are Llama-style (RMSNorm, rotary embeddings, SwiGLU, optional grouped-query
// attention, no biases) sized like Photon's MPT models; see docs/models.md for the table
// and exact parameter counts.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "common/config.h"
#include "common/status.h"

namespace fedps {

struct ModelConfig {
  std::string preset;
  int64_t vocab_size = 0;
  int64_t d_model = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;
  int64_t ffn_hidden = 0;
  int64_t max_seq_len = 0;
  double rope_theta = 10000.0;
  double norm_eps = 1e-5;
  double init_std = 0.02;
  bool tie_embeddings = false;

  int64_t head_dim() const { return d_model / n_heads; }

  // All fields; FromJson(ToJson()) reproduces the config exactly.
  nlohmann::json ToJson() const;
  // Requires every field with the right type, then Validate()s.
  static StatusOr<ModelConfig> FromJson(const nlohmann::json& j);
  // Positive sizes, d_model % n_heads == 0, n_heads % n_kv_heads == 0, even head_dim,
  // finite positive rope_theta / norm_eps / init_std.
  Status Validate() const;

  bool operator==(const ModelConfig&) const = default;
};

// tiny, 20m, 125m, 350m, 1.3b, 3b, 7b.
std::vector<std::string> PresetNames();

// The preset's shapes with vocab_size 0 ("from the tokenizer"); NotFound for an unknown name.
StatusOr<ModelConfig> PresetConfig(const std::string& name);

// Preset + overrides. vocab_size 0 => tokenizer_vocab rounded up to a multiple of 64 (error
// when both are 0); an explicit vocab_size smaller than tokenizer_vocab is an error.
StatusOr<ModelConfig> ResolveModelConfig(const ModelOptions& opts, int64_t tokenizer_vocab);

// Every weight: embedding, blocks, final norm, and lm_head when untied (once when tied).
int64_t ParameterCount(const ModelConfig& c);

// Training FLOPs per token (forward + backward), PaLM-style: 6*N + 12*L*d_model*seq_len,
// where N counts the weights that take part in matrix multiplies: ParameterCount minus the
// input embedding table when it is untied (a lookup costs no FLOPs; when tied, the shared
// matrix is the LM head and is counted once). The second term is attention's QK^T and AV.
double FlopsPerToken(const ModelConfig& c, int64_t seq_len);

}  // namespace fedps
