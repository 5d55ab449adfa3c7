// DeviceUpdate: a client's per-update data path on its training device (docs/client.md,
// "Data path"). One set of buffers, allocated on first use and reused for every update:
//
//   pull buffer (host, pinned on CUDA: client/host_buffer.h)  --H2D-->  model parameters  --D2D-->  base
//   after H local steps, chunk by chunk on the device:
//     x = (base - trained) + r          pseudo-gradient plus the error-feedback residual
//     q = bf16(x),  r = x - q           rounding and error feedback on the device (bf16)
//     q  --D2H-->  quantised buffer (host, pinned on CUDA): 2 bytes per value
//   the update pipeline then zstd-codes the quantised buffer per shard slice on the codec's
//   threads (Codec::EncodeBf16Bits): only the rounded 16-bit values cross to the host.
//   fp32 (lossless) sends x = base - trained as is; int8 and topk send x in fp32 and the codec's
//   host kernel does the blockwise scaling with a host residual (HostResidual()).
//
// Memory, with P = the model's parameter count:
//   device: base (4P bytes) + residual (4P, bf16 with error feedback) + one chunk of
//           temporaries (kChunk values);
//   host:   pull buffer (4P) + quantised buffer (2P for bf16, 4P for fp32 / int8)
//           (+ 4P host residual for int8 and topk with error feedback).
// On a CPU device "device" and "host" are the same memory; the figures add up the same.
//
// The residual is not persisted: a restarted client starts error feedback from zero, which
// loses at most one update's rounding (bf16: 2^-9 of each value). After a dropped update
// the residual is kept as it is (the same bound).
//
// Threads: LoadPulled / Quantize / HostResidual run on the update loop; the pull buffer is
// written by pull workers and the quantised buffer read by the pipeline's encoder between
// those calls (the update loop hands them over: docs/client.md, "Pipeline").
#pragma once

#include <cstdint>
#include <span>

#include <torch/torch.h>

#include "common/status.h"
#include "compression/codec.h"

namespace fedps {

class DeviceUpdate {
 public:
  // Values per device chunk (64 MiB of fp32 temporaries).
  static constexpr int64_t kChunk = int64_t{1} << 24;

  // `total` parameters on `device`; `kind` is the push codec's; `error_feedback` as in
  // compression.error_feedback. The pull buffer is allocated here, the others on first use.
  DeviceUpdate(int64_t total, torch::Device device, CodecKind kind, bool error_feedback);

  // Where pulls land: total fp32 values on the host.
  std::span<float> PullBuffer();

  // Copies the pull buffer into `params` (the model's flat parameters) and, with keep_base,
  // keeps a copy as the base the next pseudo-gradient is taken against (an evaluator needs
  // none).
  Status LoadPulled(torch::Tensor params, bool keep_base = true);

  // Pseudo-gradient of `trained` against the base, error feedback and rounding as the file
  // comment says; fills the quantised buffer. InvalidArgument (nothing sent, residual
  // unchanged for the chunks not yet done) when a value is not finite.
  Status Quantize(const torch::Tensor& trained);

  // The quantised buffer's values for [begin, begin + n): bf16 bit patterns (kind bf16) ...
  std::span<const uint16_t> Bf16Bits(int64_t begin, int64_t n) const;
  // ... or fp32 values (kinds fp32, int8 and topk).
  std::span<const float> Values(int64_t begin, int64_t n) const;
  // int8 and topk with error feedback: the host residual of [begin, begin + n) the codec updates;
  // empty otherwise.
  std::span<float> HostResidual(int64_t begin, int64_t n);

  CodecKind kind() const { return kind_; }
  bool device_rounding() const { return kind_ == CodecKind::kBf16; }

 private:
  int64_t total_;
  torch::Device device_;
  CodecKind kind_;
  bool error_feedback_;
  torch::Tensor pull_host_;      // [total] fp32, host
  torch::Tensor base_;           // [total] fp32, device
  torch::Tensor residual_;       // [total] fp32, device (bf16 with error feedback)
  torch::Tensor quant_host_;     // [total] int16 (bf16 bits) or fp32, host
  std::vector<float> host_residual_;  // int8 and topk with error feedback
};

}  // namespace fedps
