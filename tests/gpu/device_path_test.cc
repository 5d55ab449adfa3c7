// The client's device data path on a CUDA device: host buffers page-locked at their exact
// size (client/host_buffer.h), and DeviceUpdate's rounding and error feedback giving the
// same bits on the GPU as on the CPU.
#include <dlfcn.h>
#include <gtest/gtest.h>

#include <cstring>
#include <iostream>
#include <string>

#include "client/device_update.h"
#include "client/host_buffer.h"

namespace fedps {
namespace {

#define SKIP_WITHOUT_CUDA() \
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device (label gpu: run on the GPU machine)"

// The driver's view of a host pointer, from cudaPointerGetAttributes of the loaded CUDA
// runtime: 1 = cudaMemoryTypeHost (page-locked: allocated or registered with CUDA), 0 =
// unregistered, -1 = the function is not there or failed. LibTorch's Tensor::is_pinned()
// is not used: on the GPU machine (LibTorch 2.11 + CUDA, 2026-12-06) it answered false for
// a buffer that cudaHostRegister had registered.
int CudaMemoryType(const void* p) {
  using Fn = int (*)(void* attributes, const void* ptr);
  auto fn = reinterpret_cast<Fn>(::dlsym(RTLD_DEFAULT, "cudaPointerGetAttributes"));
  if (fn == nullptr) return -1;
  alignas(8) unsigned char attributes[512] = {};  // struct cudaPointerAttributes; `type` first
  if (fn(attributes, p) != 0) return -1;
  int type = 0;
  std::memcpy(&type, attributes, sizeof(type));
  return type;
}

TEST(HostTensorTest, IsPageLockedAtItsExactSizeOnCuda) {
  SKIP_WITHOUT_CUDA();
  const int64_t n = (int64_t{1} << 24) + 12345;  // 64 MiB + a bit: LibTorch would take 128 MiB
  torch::Tensor h = HostTensor(n, torch::kFloat32, torch::Device(torch::kCUDA, 0));
  EXPECT_EQ(std::string(HostTensorPinning()), "cudaHostRegister");
  ASSERT_EQ(h.numel(), n);
  EXPECT_EQ(CudaMemoryType(h.data_ptr()), 1) << "not page-locked in the driver's view";
  EXPECT_EQ(CudaMemoryType(h.data_ptr<float>() + n - 1), 1) << "the last element is outside the registration";
  std::cout << "[info] LibTorch's is_pinned(): " << (h.is_pinned() ? "true" : "false") << "\n";
  EXPECT_EQ(h.abs().max().item<float>(), 0.0f);
  h.copy_(torch::arange(n, torch::kFloat32));
  torch::Tensor d = h.to(torch::Device(torch::kCUDA, 0));
  torch::Tensor back = HostTensor(n, torch::kFloat32, torch::Device(torch::kCUDA, 0));
  back.copy_(d);
  EXPECT_TRUE(torch::equal(back, h));
}

TEST(DeviceUpdateOnCuda, GivesTheSameBitsAsOnTheCpu) {
  SKIP_WITHOUT_CUDA();
  const int64_t n = 3 * 1000 * 1000 + 7;
  const torch::Device cuda(torch::kCUDA, 0);
  torch::manual_seed(11);
  const torch::Tensor model = torch::randn({n});
  const torch::Tensor steps[2] = {torch::randn({n}) * 1e-3, torch::randn({n}) * 1e-3};
  DeviceUpdate on_cpu(n, torch::kCPU, CodecKind::kBf16, /*error_feedback=*/true);
  DeviceUpdate on_gpu(n, cuda, CodecKind::kBf16, /*error_feedback=*/true);
  torch::Tensor p_cpu = torch::zeros({n}), p_gpu = torch::zeros({n}, cuda);
  for (int round = 0; round < 2; ++round) {
    for (auto [path, params] : {std::pair{&on_cpu, &p_cpu}, std::pair{&on_gpu, &p_gpu}}) {
      std::span<float> buf = path->PullBuffer();
      std::memcpy(buf.data(), model.data_ptr<float>(), buf.size() * sizeof(float));
      ASSERT_TRUE(path->LoadPulled(*params).ok());
      params->copy_((model - steps[round]).to(params->device()));
      ASSERT_TRUE(path->Quantize(*params).ok());
    }
    auto a = on_cpu.Bf16Bits(0, n), b = on_gpu.Bf16Bits(0, n);
    ASSERT_EQ(std::memcmp(a.data(), b.data(), a.size_bytes()), 0) << "round " << round;
  }
}

}  // namespace
}  // namespace fedps
