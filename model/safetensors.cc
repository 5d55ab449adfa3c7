// LibTorch <-> safetensors glue: see safetensors.h.
#include "model/safetensors.h"

#include <algorithm>
#include <cstring>

namespace fedps {
namespace {

struct Pair {
  c10::ScalarType torch;
  DType dtype;
};
constexpr Pair kPairs[] = {
    {c10::ScalarType::Float, DType::kF32},  {c10::ScalarType::Half, DType::kF16},
    {c10::ScalarType::BFloat16, DType::kBF16}, {c10::ScalarType::Double, DType::kF64},
    {c10::ScalarType::Long, DType::kI64},   {c10::ScalarType::Int, DType::kI32},
    {c10::ScalarType::Short, DType::kI16},  {c10::ScalarType::UInt16, DType::kU16},
    {c10::ScalarType::Byte, DType::kU8},    {c10::ScalarType::Char, DType::kI8},
    {c10::ScalarType::Bool, DType::kBool},
};

}  // namespace

StatusOr<DType> DTypeFromTorch(c10::ScalarType t) {
  for (const auto& p : kPairs) {
    if (p.torch == t) return p.dtype;
  }
  return InvalidArgument(std::string("safetensors: unsupported tensor dtype ") + c10::toString(t));
}

StatusOr<c10::ScalarType> TorchFromDType(DType d) {
  for (const auto& p : kPairs) {
    if (p.dtype == d) return p.torch;
  }
  return InvalidArgument("safetensors: no torch dtype for " + std::string(DTypeName(d)));
}

StatusOr<TensorRef> TensorRefFromTorch(const torch::Tensor& t) {
  if (!t.defined()) return InvalidArgument("safetensors: undefined tensor");
  if (!t.device().is_cpu() || t.layout() != torch::kStrided || !t.is_contiguous())
    return InvalidArgument("safetensors: tensor must be a contiguous dense CPU tensor");
  ASSIGN_OR_RETURN(DType d, DTypeFromTorch(t.scalar_type()));
  TensorRef r;
  r.dtype = d;
  r.shape = t.sizes().vec();
  r.data = t.numel() > 0 ? t.data_ptr() : nullptr;
  r.bytes = static_cast<size_t>(t.numel()) * t.element_size();
  return r;
}

Status SaveTensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                   const std::map<std::string, std::string>& metadata) {
  std::vector<torch::Tensor> keep;  // owns the contiguous copies during the write
  std::vector<std::pair<std::string, TensorRef>> refs;
  keep.reserve(tensors.size());
  try {
    for (const auto& [name, t] : tensors) {
      if (!t.defined()) return InvalidArgument("safetensors " + path + ": tensor " + name + " is undefined");
      if (t.device().is_cpu()) {
        keep.push_back(t.detach().contiguous());
        auto ref = TensorRefFromTorch(keep.back());
        if (!ref.ok()) return ref.status().WithContext(path + ": " + name);
        refs.emplace_back(name, std::move(ref).value());
        continue;
      }
      // Not in host memory: copied to the host a piece at a time while writing, so a GPU
      // tensor never needs a whole host copy.
      keep.push_back(t.detach().contiguous().view({-1}));
      const torch::Tensor& flat = keep.back();
      ASSIGN_OR_RETURN(DType dtype, DTypeFromTorch(flat.scalar_type()));
      TensorRef ref;
      ref.dtype = dtype;
      ref.shape = t.sizes().vec();
      const size_t elem = flat.element_size();
      ref.bytes = static_cast<size_t>(flat.numel()) * elem;
      ref.read = [flat, elem](uint64_t offset, void* dst, size_t n) -> Status {
        if (offset % elem != 0 || n % elem != 0) return Internal("safetensors: unaligned piece");
        try {
          const int64_t count = static_cast<int64_t>(n / elem);
          torch::Tensor out = torch::from_blob(dst, {count}, flat.options().device(torch::kCPU));
          out.copy_(flat.narrow(0, static_cast<int64_t>(offset / elem), count));
        } catch (const std::exception& e) {
          return Internal(std::string("copying a tensor to the host: ") + e.what());
        }
        return Status::Ok();
      };
      refs.emplace_back(name, std::move(ref));
    }
  } catch (const std::exception& e) {
    return Internal("safetensors " + path + ": " + e.what());
  }
  return WriteSafetensors(path, refs, metadata);
}

StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> LoadTensors(
    const std::string& path, std::map<std::string, std::string>* metadata, torch::Device device) {
  ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
  std::vector<std::pair<std::string, torch::Tensor>> out;
  out.reserve(reader->index().entries.size());
  constexpr size_t kPiece = size_t{64} << 20;
  torch::Tensor piece;  // the one host buffer every tensor passes through
  try {
    for (const SafetensorsEntry& e : reader->index().entries) {
      ASSIGN_OR_RETURN(c10::ScalarType st, TorchFromDType(e.dtype));
      torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(st).device(device));
      const size_t elem = DTypeSize(e.dtype);
      const size_t per_piece = std::max<size_t>(1, kPiece / elem);
      if (!piece.defined() && t.numel() > 0) piece = torch::empty({static_cast<int64_t>(kPiece)}, torch::kUInt8);
      torch::Tensor flat = t.view({-1});
      for (size_t at = 0; at < static_cast<size_t>(t.numel()); at += per_piece) {
        const size_t count = std::min(per_piece, static_cast<size_t>(t.numel()) - at);
        RETURN_IF_ERROR(reader->Read(e, at * elem, piece.data_ptr(), count * elem).WithContext(path + ": " + e.name));
        torch::Tensor host = torch::from_blob(piece.data_ptr(), {static_cast<int64_t>(count)}, torch::dtype(st));
        flat.narrow(0, static_cast<int64_t>(at), static_cast<int64_t>(count)).copy_(host);
      }
      out.emplace_back(e.name, std::move(t));
    }
  } catch (const std::exception& e) {
    return Internal("safetensors " + path + ": cannot load onto " + device.str() + ": " + e.what());
  }
  if (metadata) *metadata = reader->index().metadata;
  return out;
}

}  // namespace fedps
