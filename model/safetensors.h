// LibTorch glue for common/safetensors.h: views of tensors for writing, tensors from bytes
// read back, and whole-file helpers for named tensor lists (checkpoints, tests, export).
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "common/safetensors.h"
#include "common/status.h"

namespace fedps {

StatusOr<DType> DTypeFromTorch(c10::ScalarType t);
StatusOr<c10::ScalarType> TorchFromDType(DType d);

// A view of `t`'s memory for WriteSafetensors; `t` must be a contiguous CPU tensor of a
// supported dtype and must outlive the write (InvalidArgument otherwise).
StatusOr<TensorRef> TensorRefFromTorch(const torch::Tensor& t);

// Writes named tensors (any device / layout: copied to contiguous CPU as needed).
Status SaveTensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                   const std::map<std::string, std::string>& metadata = {});
// Reads every tensor of a file, in file order, onto `device`, each through one 64 MiB host
// buffer: the file is never held in memory (a 1.3b model's optimizer moments are 10.8 GB).
StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> LoadTensors(
    const std::string& path, std::map<std::string, std::string>* metadata = nullptr,
    torch::Device device = torch::kCPU);

}  // namespace fedps
