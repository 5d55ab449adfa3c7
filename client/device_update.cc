#include "client/device_update.h"

#include "client/host_buffer.h"

#include <string>

namespace fedps {

DeviceUpdate::DeviceUpdate(int64_t total, torch::Device device, CodecKind kind, bool error_feedback)
    : total_(total), device_(device), kind_(kind), error_feedback_(error_feedback) {
  pull_host_ = HostTensor(total_, torch::kFloat32, device_);
}

std::span<float> DeviceUpdate::PullBuffer() {
  return {pull_host_.data_ptr<float>(), static_cast<size_t>(total_)};
}

Status DeviceUpdate::LoadPulled(torch::Tensor params, bool keep_base) {
  if (params.numel() != total_ || params.scalar_type() != torch::kFloat32) {
    return InvalidArgument("model has " + std::to_string(params.numel()) + " parameters; the update path holds " +
                           std::to_string(total_));
  }
  torch::NoGradGuard guard;
  params.copy_(pull_host_);
  if (!keep_base) return Status::Ok();
  if (!base_.defined()) base_ = torch::empty({total_}, params.options());
  base_.copy_(params);
  return Status::Ok();
}

Status DeviceUpdate::Quantize(const torch::Tensor& trained) {
  if (!base_.defined()) return FailedPrecondition("Quantize before LoadPulled");
  if (trained.numel() != total_) return InvalidArgument("trained model size differs from the pulled one");
  torch::NoGradGuard guard;
  const bool bf16 = kind_ == CodecKind::kBf16;
  if (!quant_host_.defined()) {
    quant_host_ = HostTensor(total_, bf16 ? torch::kInt16 : torch::kFloat32, device_);
  }
  const bool device_ef = bf16 && error_feedback_;
  if (device_ef && !residual_.defined()) residual_ = torch::zeros({total_}, base_.options());
  if ((kind_ == CodecKind::kInt8 || kind_ == CodecKind::kTopK) && error_feedback_ && host_residual_.empty()) {
    host_residual_.assign(static_cast<size_t>(total_), 0.0f);
  }
  for (int64_t begin = 0; begin < total_; begin += kChunk) {
    const int64_t n = std::min(kChunk, total_ - begin);
    torch::Tensor x = base_.narrow(0, begin, n) - trained.narrow(0, begin, n);
    if (device_ef) x.add_(residual_.narrow(0, begin, n));
    torch::Tensor out = x;   // what goes to the host
    torch::Tensor sent = x;  // the values the shards will decode
    if (bf16) {
      sent = x.to(torch::kBFloat16);
      out = sent.view(torch::kInt16);
    }
    // Checked after rounding: bf16 can overflow to infinity.
    if (!torch::isfinite(sent).all().item<bool>()) {
      return InvalidArgument("the pseudo-gradient holds a non-finite value in parameters [" + std::to_string(begin) +
                             ", " + std::to_string(begin + n) + "): local training diverged; lower train.lr");
    }
    if (device_ef) residual_.narrow(0, begin, n).copy_(x - sent.to(torch::kFloat32));
    quant_host_.narrow(0, begin, n).copy_(out);
  }
  return Status::Ok();
}

std::span<const uint16_t> DeviceUpdate::Bf16Bits(int64_t begin, int64_t n) const {
  return {reinterpret_cast<const uint16_t*>(quant_host_.data_ptr<int16_t>()) + begin, static_cast<size_t>(n)};
}

std::span<const float> DeviceUpdate::Values(int64_t begin, int64_t n) const {
  return {quant_host_.data_ptr<float>() + begin, static_cast<size_t>(n)};
}

std::span<float> DeviceUpdate::HostResidual(int64_t begin, int64_t n) {
  if (host_residual_.empty()) return {};
  return {host_residual_.data() + begin, static_cast<size_t>(n)};
}

}  // namespace fedps
