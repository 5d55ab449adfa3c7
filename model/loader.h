// SequenceLoader: deterministic, resumable batches of fixed-length token
// sequences from a prepared folder (model/token_data.h).
//
// Each selected domain's split is one token stream (its shards, memory-mapped).
// It is cut into non-overlapping windows of seq_len + 1 tokens with stride
// seq_len: window i covers tokens [i*seq_len, i*seq_len + seq_len], so
// consecutive windows share one token and every token after the first is a
// target exactly once per epoch. A domain of T tokens gives (T - 1) / seq_len
// windows (the tail that does not fill one is dropped). The windows of all
// domains form one index space [0, N) in manifest order, so a domain is sampled
// in proportion to its size.
//
// Order: epoch e visits the N windows in a pseudo-random permutation keyed by
// (seed, e): a 4-round Feistel network on the next power of four >= N, with
// cycle walking to stay in [0, N). It is a bijection computed per index in O(1)
// with no per-epoch table, so the state is just (seed, epoch, cursor) and
// Restore() is instant. After the last window of an epoch comes the first of the
// next. shuffle = false visits windows in order (validation).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "common/status.h"
#include "model/token_data.h"

namespace fedps {

struct LoaderState {
  uint64_t seed = 0;
  int64_t epoch = 0;
  int64_t cursor = 0;  // windows already taken in this epoch
  // Windows per epoch of the loader that made the state (0: unknown); Restore
  // refuses a state from a different dataset, domain selection or seq_len.
  int64_t sequences_per_epoch = 0;

  nlohmann::json ToJson() const;
  static StatusOr<LoaderState> FromJson(const nlohmann::json& json);
  bool operator==(const LoaderState&) const = default;
};

class SequenceLoader {
 public:
  // `domains` empty = every domain of the manifest; the order of the windows
  // follows the manifest whatever the order given here. Errors: unknown domain
  // (naming the ones there are), seq_len < 1, a domain with fewer than
  // seq_len + 1 tokens in this split (naming it).
  static StatusOr<std::unique_ptr<SequenceLoader>> Open(const std::string& prepared_dir, Split split,
                                                        const std::vector<std::string>& domains, int64_t seq_len,
                                                        uint64_t seed, bool shuffle = true);

  // [batch, seq_len + 1] int64 CPU tensor of consecutive tokens (inputs =
  // [:, :-1], targets = [:, 1:]); advances the cursor by `batch` windows,
  // crossing into the next epoch as needed. batch <= 0 gives an empty batch.
  torch::Tensor Next(int64_t batch);

  LoaderState state() const;
  // Continues from `state` (a later Next() returns what the loader that made the
  // state would have returned). Its seed replaces this loader's seed.
  Status Restore(const LoaderState& state);

  int64_t sequences_per_epoch() const { return total_windows_; }
  // Tokens in the selected domains' split.
  int64_t tokens() const { return total_tokens_; }
  int64_t seq_len() const { return seq_len_; }
  Split split() const { return split_; }
  const std::vector<std::string>& domains() const { return domain_names_; }
  // The manifest (documents, tokens and UTF-8 bytes per domain and split: what
  // bits per byte needs).
  const Manifest& manifest() const { return manifest_; }

  // The window (global index) taken at `position` of epoch `epoch` (exposed for tests).
  int64_t WindowAt(int64_t epoch, int64_t position) const;

 private:
  SequenceLoader() = default;
  // Copies window `window` (global index) into out[0 .. seq_len].
  void CopyWindow(int64_t window, int64_t* out) const;

  Manifest manifest_;
  Split split_ = Split::kTrain;
  int64_t seq_len_ = 0;
  bool shuffle_ = true;
  std::vector<std::string> domain_names_;
  std::vector<TokenStream> streams_;
  std::vector<int64_t> window_starts_;  // first global window of each domain; back() == total
  int64_t total_windows_ = 0;
  int64_t total_tokens_ = 0;
  LoaderState state_;
};

}  // namespace fedps
