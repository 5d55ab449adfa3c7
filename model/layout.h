// ParamLayout: the model as one flat fp32 vector.
//
// Clients train on it (the optimizer, the pseudo-gradient and the codecs see flat vectors),
// the parameter-server shards each own a contiguous slice of it (Partition), checkpoints and
// the Hugging Face export name its pieces. Every parameter has a stable name (the Hugging
// Face LlamaForCausalLM name), a shape, and an offset. The order is fixed by the config
// alone, and hash() fingerprints it so that processes refuse to exchange vectors laid out
// differently.
//
// Order: parameters that get weight decay (all >= 2-D: embeddings, projections, lm_head)
// first, contiguous in [0, decay_numel), in model order (embed, then per layer q k v o gate
// up down, then lm_head); then the norms (per layer input / post-attention, then the final
// norm). Keeping the decay region contiguous lets an optimizer apply decay to one range.
// Torch-free so the shards can use it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "common/status.h"
#include "model/presets.h"

namespace fedps {

struct ParamEntry {
  std::string name;
  std::vector<int64_t> shape;
  int64_t offset = 0;
  int64_t numel = 0;
  bool decay = false;
};

struct SliceRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
  bool operator==(const SliceRange&) const = default;
};

class ParamLayout {
 public:
  // The alignment unit of Partition (elements): 256 bytes of fp32.
  static constexpr int64_t kAlign = 64;

  ParamLayout() = default;
  static ParamLayout ForModel(const ModelConfig& config);
  // From explicit (name, shape, decay) entries in order; offsets are assigned here. For tests
  // and tools; decay entries must come first (else InvalidArgument), names must be unique.
  static StatusOr<ParamLayout> FromEntries(std::vector<ParamEntry> entries);

  const std::vector<ParamEntry>& entries() const { return entries_; }
  int64_t total_numel() const { return total_; }
  int64_t decay_numel() const { return decay_; }
  // sha256 hex of the canonical text: one line "name dim,dim,... offset" per entry, then "fp32".
  const std::string& hash() const { return hash_; }
  // nullptr when absent.
  const ParamEntry* Find(std::string_view name) const;

  // Contiguous balanced partition of [0, total) into `num_slices` slices: every begin is a
  // multiple of kAlign, sizes differ by at most kAlign (the last slice also takes the
  // total % kAlign tail). InvalidArgument unless 1 <= num_slices <= total / kAlign.
  StatusOr<std::vector<SliceRange>> Partition(int num_slices) const;

 private:
  std::vector<ParamEntry> entries_;
  std::unordered_map<std::string, size_t> index_;
  int64_t total_ = 0;
  int64_t decay_ = 0;
  std::string hash_;
};

}  // namespace fedps
