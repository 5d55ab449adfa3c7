// Host buffers of exactly their size for copies to and from a training device.
//
// LibTorch's pinned-memory allocator (pinned_memory(true), the CUDA caching host
// allocator) rounds every block up to the next power of two, and pinned pages are resident
// from the start: at 1.3b the client's 5.4 GB pull buffer took 8 GiB and its 2.7 GB
// quantised buffer 4 GiB. HostTensor instead allocates the exact size and page-locks it
// with cudaHostRegister, looked up in the CUDA runtime that LibTorch's CUDA build has
// already loaded (so fedps needs no CUDA toolkit to build); without that entry point (a
// CPU-only LibTorch) or when registering fails, it falls back to LibTorch's pinned memory
// and says so once in the log. On a CPU device the buffer is ordinary memory.
#pragma once

#include <cstdint>

#include <torch/torch.h>

namespace fedps {

// A zero-filled contiguous host tensor of `numel` values of `dtype`, page-locked when
// `device` is a CUDA device (see the file comment). Thread-safe.
torch::Tensor HostTensor(int64_t numel, c10::ScalarType dtype, torch::Device device);

// How the last CUDA HostTensor was pinned: "cudaHostRegister", "libtorch" (the fallback)
// or "" (none made yet); for the client's log and its tests.
const char* HostTensorPinning();

}  // namespace fedps
