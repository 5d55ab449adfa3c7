#include "model/lm_head_loss.h"

#include <algorithm>
#include <utility>

namespace fedps {
namespace {

constexpr int64_t kIgnoreIndex = -100;

// The chunked pass. With `grads` set it also fills grads->first (d mean loss / d hidden)
// and grads->second (d mean loss / d weight, fp32). Returns the mean loss.
torch::Tensor ChunkedPass(const torch::Tensor& hidden, const torch::Tensor& weight, const torch::Tensor& targets,
                          int64_t chunk_rows, std::pair<torch::Tensor, torch::Tensor>* grads) {
  const int64_t n = hidden.size(0);
  const torch::Tensor valid = targets.ne(kIgnoreIndex);
  // The mean's denominator, kept on the device (no host synchronisation); at least 1 so an
  // all-ignored batch gives loss 0 and zero gradients, where cross_entropy gives NaN.
  const torch::Tensor n_valid = valid.sum().clamp_min(1).to(torch::kFloat);
  torch::Tensor loss_sum = torch::zeros({}, hidden.options().dtype(torch::kFloat));
  torch::Tensor weight_low;  // weight in the matmul dtype, cast once
  if (grads) {
    grads->first = torch::empty_like(hidden);
    grads->second = torch::zeros_like(weight, weight.options().dtype(torch::kFloat));
  }
  for (int64_t begin = 0; begin < n; begin += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, n - begin);
    const torch::Tensor h = hidden.narrow(0, begin, rows);
    const torch::Tensor t = targets.narrow(0, begin, rows);
    const torch::Tensor v = valid.narrow(0, begin, rows);
    // The matmul in the autocast dtype (when on), as torch::nn::functional::linear would.
    const torch::Tensor logits_low = torch::nn::functional::linear(h, weight);
    torch::Tensor logits = logits_low.to(torch::kFloat);
    const torch::Tensor lse = logits.logsumexp(-1);
    const torch::Tensor safe_t = t.clamp_min(0);
    const torch::Tensor target_logit = logits.gather(1, safe_t.unsqueeze(1)).squeeze(1);
    loss_sum.add_(((lse - target_logit) * v).sum());
    if (!grads) continue;
    // d mean loss / d logits = (softmax - onehot) / n_valid on valid rows, 0 on ignored
    // ones; in place of the fp32 logits, so a chunk's peak is one fp32 [rows, V] tensor.
    logits.sub_(lse.unsqueeze(1)).exp_();
    logits.scatter_add_(1, safe_t.unsqueeze(1), -torch::ones({rows, 1}, logits.options()));
    logits.mul_((v.to(torch::kFloat) / n_valid).unsqueeze(1));
    const torch::Tensor dlogits = logits.to(logits_low.scalar_type());
    if (!weight_low.defined()) weight_low = weight.to(dlogits.scalar_type());
    grads->first.narrow(0, begin, rows).copy_(torch::matmul(dlogits, weight_low));
    grads->second.add_(torch::matmul(dlogits.t(), h.to(dlogits.scalar_type())));
  }
  return loss_sum / n_valid;
}

// The gradients are computed in forward (the loss is a graph's end, so the incoming
// gradient is a scalar); backward scales them.
class ChunkedLmHeadLossFunction : public torch::autograd::Function<ChunkedLmHeadLossFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& hidden,
                               const torch::Tensor& weight, const torch::Tensor& targets, int64_t chunk_rows) {
    std::pair<torch::Tensor, torch::Tensor> grads;
    torch::Tensor loss = ChunkedPass(hidden, weight, targets, chunk_rows, &grads);
    ctx->saved_data["grad_hidden"] = grads.first;
    ctx->saved_data["grad_weight"] = grads.second;
    return loss;
  }

  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx,
                                               torch::autograd::tensor_list grad_outputs) {
    const torch::Tensor grad_hidden = ctx->saved_data["grad_hidden"].toTensor();
    const torch::Tensor grad_weight = ctx->saved_data["grad_weight"].toTensor();
    const torch::Tensor g = grad_outputs[0].to(torch::kFloat);
    return {grad_hidden * g.to(grad_hidden.scalar_type()), grad_weight * g, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor ChunkedLmHeadLoss(const torch::Tensor& hidden, const torch::Tensor& weight,
                                const torch::Tensor& targets, int64_t chunk_rows) {
  TORCH_CHECK(hidden.dim() == 2 && weight.dim() == 2 && hidden.size(1) == weight.size(1),
              "ChunkedLmHeadLoss: hidden ", hidden.sizes(), " and weight ", weight.sizes(), " do not match");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0), "ChunkedLmHeadLoss: targets ",
              targets.sizes(), " for hidden ", hidden.sizes());
  TORCH_CHECK(chunk_rows >= 1, "ChunkedLmHeadLoss: chunk_rows must be >= 1, got ", chunk_rows);
  // Without autograd (evaluation) only the loss, still a chunk at a time.
  if (!torch::GradMode::is_enabled() || !(hidden.requires_grad() || weight.requires_grad())) {
    return ChunkedPass(hidden, weight, targets, chunk_rows, nullptr);
  }
  return ChunkedLmHeadLossFunction::apply(hidden, weight, targets, chunk_rows);
}

}  // namespace fedps
