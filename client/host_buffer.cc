// HostTensor: see the header.
#include "client/host_buffer.h"

#include <dlfcn.h>
#include <glog/logging.h>
#include <sys/mman.h>

#include <atomic>
#include <mutex>

namespace fedps {
namespace {

// The CUDA runtime's entry points, by name (cuda_runtime_api.h: cudaError_t is an int enum,
// 0 = cudaSuccess; flags 0 = cudaHostRegisterDefault).
using RegisterFn = int (*)(void* ptr, size_t size, unsigned int flags);
using UnregisterFn = int (*)(void* ptr);

struct CudaRuntime {
  RegisterFn host_register = nullptr;
  UnregisterFn host_unregister = nullptr;
};

const CudaRuntime& Runtime() {
  static const CudaRuntime rt = [] {
    CudaRuntime r;
    r.host_register = reinterpret_cast<RegisterFn>(::dlsym(RTLD_DEFAULT, "cudaHostRegister"));
    r.host_unregister = reinterpret_cast<UnregisterFn>(::dlsym(RTLD_DEFAULT, "cudaHostUnregister"));
    if (!r.host_register || !r.host_unregister) r = CudaRuntime{};
    return r;
  }();
  return rt;
}

std::atomic<const char*> g_pinning{""};

}  // namespace

const char* HostTensorPinning() { return g_pinning.load(); }

torch::Tensor HostTensor(int64_t numel, c10::ScalarType dtype, torch::Device device) {
  const auto options = torch::TensorOptions().dtype(dtype).device(torch::kCPU);
  if (!device.is_cuda()) return torch::zeros({numel}, options);
  const CudaRuntime& rt = Runtime();
  const size_t bytes = static_cast<size_t>(numel) * c10::elementSize(dtype);
  if (rt.host_register && bytes > 0) {
    // Whole pages from mmap: zero-filled already, and given back whole when freed.
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      const int err = rt.host_register(p, bytes, 0);
      if (err == 0) {
        g_pinning = "cudaHostRegister";
        UnregisterFn unregister = rt.host_unregister;
        return torch::from_blob(
            p, {numel},
            [bytes, unregister](void* q) {
              unregister(q);
              ::munmap(q, bytes);
            },
            options);
      }
      ::munmap(p, bytes);
      LOG(WARNING) << "cudaHostRegister of " << bytes << " bytes failed (CUDA error " << err
                   << "): using LibTorch's pinned memory, which rounds the buffer up to a power of two";
    }
  }
  static std::once_flag warned;
  if (!rt.host_register) {
    std::call_once(warned, [] {
      LOG(WARNING) << "cudaHostRegister not found in the loaded CUDA runtime: host buffers use LibTorch's pinned "
                      "memory, which rounds each up to a power of two";
    });
  }
  g_pinning = "libtorch";
  return torch::zeros({numel}, options.pinned_memory(true));
}

}  // namespace fedps
