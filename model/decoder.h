// The fedps language model: a Llama-style decoder, and Model, which lays its parameters
// and gradients out as views into single flat fp32 buffers (model/layout.h).
//
// Architecture (matches Hugging Face LlamaForCausalLM exactly, so the export is a rename-free
// copy): token embedding; n_layers blocks of x += Attn(RMSNorm(x)), x += MLP(RMSNorm(x));
// final RMSNorm; LM head (optionally tied to the embedding). No biases.
//  - RMSNorm in fp32 like HF: weight * (x.float() * rsqrt(mean(x^2) + eps)).to(x.dtype).
//  - Attention: q/k/v/o projections, grouped-query (n_kv_heads divides n_heads; K/V heads are
//    repeat_interleave'd before SDPA so any LibTorch 2.x kernel works), rotary embeddings in
//    HF's "rotate_half" convention (first and second halves of each head form the pairs),
//    at::scaled_dot_product_attention with is_causal=true.
//  - MLP: SwiGLU down(silu(gate(x)) * up(x)).
//  - Rotary cos/sin tables are fp32 buffers for max_seq_len positions (not parameters).
// Module and parameter names are HF's ("model.layers.0.self_attn.q_proj.weight"), so
// named_parameters() of a Decoder equals ParamLayout::ForModel's names.
//
// Model owns the Decoder. Its parameters' storage is carved out of one flat fp32 tensor (in
// ParamLayout order) and each parameter's .grad() is a view into one flat fp32 gradient
// tensor; autograd accumulates into those views in place (AccumulateGrad adds into an
// existing grad), so an optimizer, the pseudo-gradient and the shards work on flat vectors
// with no copies. Never let anything reset the grads to undefined (e.g. torch::optim's
// zero_grad() with set_to_none): use Model::ZeroGrad().
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/status.h"
#include "model/layout.h"
#include "model/presets.h"

namespace fedps {

// A bias-free linear map; "weight" is [out, in] like torch::nn::Linear and HF.
class ProjImpl : public torch::nn::Module {
 public:
  ProjImpl(int64_t in, int64_t out);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
};
TORCH_MODULE(Proj);

// A token embedding table; "weight" is [vocab, d].
class EmbedImpl : public torch::nn::Module {
 public:
  EmbedImpl(int64_t vocab, int64_t dim);
  torch::Tensor forward(const torch::Tensor& tokens);
  torch::Tensor weight;
};
TORCH_MODULE(Embed);

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);
  torch::Tensor weight;
  double eps;
};
TORCH_MODULE(RMSNorm);

class AttentionImpl : public torch::nn::Module {
 public:
  explicit AttentionImpl(const ModelConfig& c);
  // x [B,T,d]; cos/sin [T, head_dim] fp32.
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
  int64_t n_heads, n_kv_heads, head_dim;
  Proj q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(Attention);

class MlpImpl : public torch::nn::Module {
 public:
  explicit MlpImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x);
  Proj gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

class BlockImpl : public torch::nn::Module {
 public:
  explicit BlockImpl(const ModelConfig& c);
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);
  RMSNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(Block);

// HF's LlamaModel: embed_tokens, layers, norm (registered as "model" inside Decoder).
class DecoderBodyImpl : public torch::nn::Module {
 public:
  explicit DecoderBodyImpl(const ModelConfig& c);
  Embed embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<Block> blocks;  // the same modules as `layers`, typed
  RMSNorm norm{nullptr};
};
TORCH_MODULE(DecoderBody);

// Parameters are created uninitialised (torch::empty): Model::Create fills them.
class DecoderImpl : public torch::nn::Module {
 public:
  explicit DecoderImpl(const ModelConfig& c);
  // tokens [B,T] int64 (T <= max_seq_len) -> logits [B,T,vocab]. Throws c10::Error on bad
  // shapes or dtypes; token ids are not range-checked here (that would sync the device
  // every step): the data pipeline guarantees them.
  torch::Tensor forward(const torch::Tensor& tokens);
  // The final hidden states [B,T,d] (before the LM head).
  torch::Tensor hidden(const torch::Tensor& tokens);
  // The LM head weight (the embedding matrix when tied).
  torch::Tensor lm_head_weight();
  const ModelConfig& config() const { return config_; }

  DecoderBody model{nullptr};
  Proj lm_head{nullptr};  // null when tied
  torch::Tensor rope_cos, rope_sin;  // [max_seq_len, head_dim] fp32 buffers

 private:
  ModelConfig config_;
};
TORCH_MODULE(Decoder);

class Model {
 public:
  // Validates `config`, builds the decoder, and initialises it deterministically from `seed`
  // on the CPU with a local generator (independent of torch::manual_seed and of `device`):
  // normal(0, init_std) for every matrix in layout order, o_proj and down_proj scaled by
  // 1/sqrt(2 n_layers) (GPT-2's residual scaling), norms 1. Then moves it to `device`.
  static StatusOr<std::unique_ptr<Model>> Create(const ModelConfig& config, torch::Device device, uint64_t seed);

  const ModelConfig& config() const { return config_; }
  const ParamLayout& layout() const { return layout_; }
  torch::Device device() const { return device_; }
  // [total_numel] fp32 on device(); writing into it (under NoGradGuard) changes the model.
  torch::Tensor flat_params() { return flat_; }
  // [total_numel] fp32 on device(); every parameter's .grad() is a view into it.
  torch::Tensor flat_grads() { return flat_grad_; }
  void ZeroGrad();

  // [B,T] int64 -> logits [B,T,V] (fp32, or the autocast dtype under autocast).
  torch::Tensor Forward(const torch::Tensor& tokens);
  // Mean cross-entropy (computed in fp32) over all positions; targets [B,T] int64, entries
  // equal to -100 are ignored. Returns a scalar fp32 tensor. chunk_rows > 0: the LM head
  // and the loss fused, that many tokens at a time (model/lm_head_loss.h: the [B*T, V]
  // logits never exist at once); 0: logits, then torch's cross_entropy.
  torch::Tensor Loss(const torch::Tensor& tokens, const torch::Tensor& targets, int64_t chunk_rows = 0);

  // The parameters (views into flat_params()) with their layout names, in layout order.
  std::vector<std::pair<std::string, torch::Tensor>> NamedParameters();
  void SetTraining(bool on);
  Decoder& decoder() { return decoder_; }

 private:
  Model(ModelConfig config, ParamLayout layout, torch::Device device, Decoder decoder)
      : config_(std::move(config)), layout_(std::move(layout)), device_(device), decoder_(std::move(decoder)) {}

  ModelConfig config_;
  ParamLayout layout_;
  torch::Device device_;
  Decoder decoder_;
  torch::Tensor flat_, flat_grad_;
  std::vector<std::pair<std::string, torch::Tensor>> params_;  // layout order
};

}  // namespace fedps
