// The decoder and the flat-buffer Model: see decoder.h.
#include "model/decoder.h"

#include <cmath>

#include "model/lm_head_loss.h"

namespace fedps {
namespace {

// HF's rotate_half: (x1, x2) -> (-x2, x1) over the two halves of the last dimension.
torch::Tensor RotateHalf(const torch::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

}  // namespace

// ---- modules ----------------------------------------------------------------------------

ProjImpl::ProjImpl(int64_t in, int64_t out) { weight = register_parameter("weight", torch::empty({out, in})); }

torch::Tensor ProjImpl::forward(const torch::Tensor& x) { return torch::nn::functional::linear(x, weight); }

EmbedImpl::EmbedImpl(int64_t vocab, int64_t dim) {
  weight = register_parameter("weight", torch::empty({vocab, dim}));
}

torch::Tensor EmbedImpl::forward(const torch::Tensor& tokens) { return torch::embedding(weight, tokens); }

RMSNormImpl::RMSNormImpl(int64_t dim, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::empty({dim}));
}

torch::Tensor RMSNormImpl::forward(const torch::Tensor& x) {
  // In fp32 whatever the activation dtype, as HF does: bf16 squares lose too much.
  torch::Tensor h = x.to(torch::kFloat);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}

AttentionImpl::AttentionImpl(const ModelConfig& c)
    : n_heads(c.n_heads), n_kv_heads(c.n_kv_heads), head_dim(c.head_dim()) {
  q_proj = register_module("q_proj", Proj(c.d_model, n_heads * head_dim));
  k_proj = register_module("k_proj", Proj(c.d_model, n_kv_heads * head_dim));
  v_proj = register_module("v_proj", Proj(c.d_model, n_kv_heads * head_dim));
  o_proj = register_module("o_proj", Proj(n_heads * head_dim, c.d_model));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t B = x.size(0), T = x.size(1);
  torch::Tensor q = q_proj(x).view({B, T, n_heads, head_dim}).transpose(1, 2);
  torch::Tensor k = k_proj(x).view({B, T, n_kv_heads, head_dim}).transpose(1, 2);
  torch::Tensor v = v_proj(x).view({B, T, n_kv_heads, head_dim}).transpose(1, 2);
  const torch::Tensor c = cos.to(q.scalar_type()), s = sin.to(q.scalar_type());
  q = q * c + RotateHalf(q) * s;
  k = k * c + RotateHalf(k) * s;
  if (n_kv_heads != n_heads) {
    // Query head h reads kv head h / (n_heads / n_kv_heads), as HF's repeat_kv. Expanding
    // here rather than SDPA's enable_gqa keeps every 2.x kernel (flash, mem-efficient) usable.
    k = k.repeat_interleave(n_heads / n_kv_heads, 1);
    v = v.repeat_interleave(n_heads / n_kv_heads, 1);
  }
  torch::Tensor y = at::scaled_dot_product_attention(q, k, v, /*attn_mask=*/{}, /*dropout_p=*/0.0, /*is_causal=*/true);
  return o_proj(y.transpose(1, 2).reshape({B, T, n_heads * head_dim}));
}

MlpImpl::MlpImpl(const ModelConfig& c) {
  gate_proj = register_module("gate_proj", Proj(c.d_model, c.ffn_hidden));
  up_proj = register_module("up_proj", Proj(c.d_model, c.ffn_hidden));
  down_proj = register_module("down_proj", Proj(c.ffn_hidden, c.d_model));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

BlockImpl::BlockImpl(const ModelConfig& c) {
  // Registration order = HF's module order (attention, mlp, norms), for readable dumps.
  self_attn = register_module("self_attn", Attention(c));
  mlp = register_module("mlp", Mlp(c));
  input_layernorm = register_module("input_layernorm", RMSNorm(c.d_model, c.norm_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", RMSNorm(c.d_model, c.norm_eps));
}

torch::Tensor BlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  torch::Tensor h = x + self_attn(input_layernorm(x), cos, sin);
  return h + mlp(post_attention_layernorm(h));
}

DecoderBodyImpl::DecoderBodyImpl(const ModelConfig& c) {
  embed_tokens = register_module("embed_tokens", Embed(c.vocab_size, c.d_model));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t l = 0; l < c.n_layers; ++l) {
    blocks.push_back(Block(c));
    layers->push_back(blocks.back());
  }
  norm = register_module("norm", RMSNorm(c.d_model, c.norm_eps));
}

DecoderImpl::DecoderImpl(const ModelConfig& c) : config_(c) {
  model = register_module("model", DecoderBody(c));
  if (!c.tie_embeddings) lm_head = register_module("lm_head", Proj(c.d_model, c.vocab_size));
  // Rotary tables exactly as HF computes them (fp32 inverse frequencies, positions times
  // frequencies, duplicated halves), so exported models agree to rounding.
  const int64_t hd = c.head_dim();
  torch::Tensor exponent = torch::arange(0, hd, 2, torch::kInt64).to(torch::kFloat) / static_cast<double>(hd);
  torch::Tensor inv_freq = 1.0 / torch::pow(c.rope_theta, exponent);
  torch::Tensor pos = torch::arange(c.max_seq_len, torch::kInt64).to(torch::kFloat);
  torch::Tensor freqs = torch::outer(pos, inv_freq);
  torch::Tensor emb = torch::cat({freqs, freqs}, -1);
  rope_cos = register_buffer("rope_cos", emb.cos());
  rope_sin = register_buffer("rope_sin", emb.sin());
}

torch::Tensor DecoderImpl::hidden(const torch::Tensor& tokens) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [batch, seq], got ", tokens.sizes());
  TORCH_CHECK(tokens.scalar_type() == torch::kLong, "tokens must be int64, got ", tokens.scalar_type());
  const int64_t T = tokens.size(1);
  TORCH_CHECK(T >= 1 && T <= config_.max_seq_len, "sequence length ", T, " not in [1, max_seq_len ",
              config_.max_seq_len, "]");
  const torch::Tensor cos = rope_cos.narrow(0, 0, T), sin = rope_sin.narrow(0, 0, T);
  torch::Tensor h = model->embed_tokens(tokens);
  for (auto& block : model->blocks) h = block(h, cos, sin);
  return model->norm(h);
}

torch::Tensor DecoderImpl::lm_head_weight() {
  return lm_head ? lm_head->weight : model->embed_tokens->weight;
}

torch::Tensor DecoderImpl::forward(const torch::Tensor& tokens) {
  return torch::nn::functional::linear(hidden(tokens), lm_head_weight());
}

// ---- Model ------------------------------------------------------------------------------

StatusOr<std::unique_ptr<Model>> Model::Create(const ModelConfig& config, torch::Device device, uint64_t seed) {
  RETURN_IF_ERROR(config.Validate());
  try {
    ParamLayout layout = ParamLayout::ForModel(config);
    // Parameters start as torch::empty (no pages touched), so building a 7b decoder and
    // then moving its storage into the flat buffer costs one model's memory, not two.
    Decoder decoder(config);
    std::unique_ptr<Model> m(new Model(config, std::move(layout), device, std::move(decoder)));

    // Deterministic init on the CPU, entry by entry in layout order, from a local generator:
    // the same seed gives the same weights on any device and whatever else seeded torch.
    torch::Tensor flat = torch::empty({m->layout_.total_numel()}, torch::kFloat);
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    const double out_scale = 1.0 / std::sqrt(2.0 * static_cast<double>(config.n_layers));
    for (const ParamEntry& e : m->layout_.entries()) {
      torch::Tensor v = flat.narrow(0, e.offset, e.numel);
      if (!e.decay) {
        v.fill_(1.0);  // RMSNorm gains
        continue;
      }
      // Residual-branch outputs are scaled so the residual stream's variance does not grow
      // with depth (GPT-2 / Megatron).
      const bool out_proj = e.name.ends_with("o_proj.weight") || e.name.ends_with("down_proj.weight");
      v.normal_(0.0, config.init_std * (out_proj ? out_scale : 1.0), gen);
    }
    m->flat_ = device.is_cpu() ? flat : flat.to(device);
    m->flat_grad_ = torch::zeros_like(m->flat_);

    // Point every parameter at its slice of the flat buffers. set_data keeps the parameter
    // a leaf (not an autograd view) whose storage is the flat buffer; its grad is a view of
    // the flat grad that AccumulateGrad adds into in place.
    auto named = m->decoder_->named_parameters(/*recurse=*/true);
    if (named.size() != m->layout_.entries().size())
      return Internal("decoder has " + std::to_string(named.size()) + " parameters, layout " +
                      std::to_string(m->layout_.entries().size()));
    for (const ParamEntry& e : m->layout_.entries()) {
      torch::Tensor* p = named.find(e.name);
      if (p == nullptr) return Internal("decoder has no parameter " + e.name);
      if (p->sizes().vec() != e.shape) return Internal("shape mismatch for " + e.name);
      p->set_data(m->flat_.narrow(0, e.offset, e.numel).view(e.shape));
      p->mutable_grad() = m->flat_grad_.narrow(0, e.offset, e.numel).view(e.shape);
      m->params_.emplace_back(e.name, *p);
    }
    for (auto& buf : m->decoder_->buffers(/*recurse=*/true)) buf.set_data(buf.to(device));
    m->decoder_->train(true);
    return m;
  } catch (const std::exception& e) {
    return Internal(std::string("cannot create model: ") + e.what());
  }
}

void Model::ZeroGrad() { flat_grad_.zero_(); }

torch::Tensor Model::Forward(const torch::Tensor& tokens) { return decoder_->forward(tokens); }

torch::Tensor Model::Loss(const torch::Tensor& tokens, const torch::Tensor& targets, int64_t chunk_rows) {
  TORCH_CHECK(targets.sizes() == tokens.sizes(), "targets ", targets.sizes(), " must match tokens ", tokens.sizes());
  if (chunk_rows > 0) {
    torch::Tensor h = decoder_->hidden(tokens);
    return ChunkedLmHeadLoss(h.reshape({-1, h.size(-1)}), decoder_->lm_head_weight(), targets.reshape({-1}),
                             chunk_rows);
  }
  torch::Tensor logits = Forward(tokens);
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(-1)}).to(torch::kFloat),
                                              targets.reshape({-1}));
}

std::vector<std::pair<std::string, torch::Tensor>> Model::NamedParameters() { return params_; }

void Model::SetTraining(bool on) { decoder_->train(on); }

}  // namespace fedps
