// The LM head and the cross-entropy loss in one autograd node, a chunk of rows at a time,
// so the [N, V] logits (V = 32000: 4.2 GB in fp32 for 16 x 2048 tokens) never exist at
// once. Liger-Kernel's fused linear cross-entropy does the same on GPUs; this one is built
// from LibTorch ops, so it runs on every device.
//
// Forward walks the rows in chunks of `chunk_rows`: logits = hidden_c W^T (in the autocast
// dtype when autocast is on, as the unfused path), then in fp32 the log-sum-exp, the loss,
// and at once the gradient of the mean loss with respect to the logits,
// (softmax - onehot(target)) / n_valid, which gives grad_hidden_c = dlogits W and adds
// dlogits^T hidden_c into grad_W. Backward only scales those by the incoming gradient: no
// second pass over the logits. Extra memory: one chunk's logits (chunk_rows x V in the
// matmul dtype and twice that in fp32), grad_hidden (as hidden) and grad_W (fp32, as W).
// Rows whose target is `ignore_index` (-100) count for nothing, as in
// torch::nn::functional::cross_entropy.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace fedps {

// hidden [N, d] (any float dtype), weight [V, d] (fp32 parameter), targets [N] int64.
// Returns the mean cross-entropy over the rows whose target is not -100, a scalar fp32
// tensor; differentiable with respect to hidden and weight. chunk_rows >= 1.
torch::Tensor ChunkedLmHeadLoss(const torch::Tensor& hidden, const torch::Tensor& weight,
                                const torch::Tensor& targets, int64_t chunk_rows);

}  // namespace fedps
