// CheckpointStore: the shard's checkpoint folders, their format, recovery and pruning.
//
// What it owns: <dir>/checkpoints/v-<version:012>/ {slice.safetensors (tensor "slice" and
// "optimizer.<name>" tensors, F32), state.json (version, run identity, optimizer scalars,
// counters), meta.json (sha256 of both, written last)}. A checkpoint is built in
// .tmp-v-<version> and renamed in. When a folder of the same version exists (one the
// shard could not verify, or one from before a restart that replayed to this version) it
// is renamed to .old-v-<version> first, the new one renamed in, then the old removed:
// some folder holds the version at every instant, and Recover() finishes an interrupted
// replacement (restores .old- when its replacement never arrived) and removes .tmp-.
// The newest `keep` folders are kept. Loading checks every file's sha256; a checkpoint of
// another run, layout or slice is refused (FailedPrecondition: wrong --dir), not skipped.
//
// Threads: no state besides the folder's name; one caller at a time. ShardCore calls it
// from its checkpoint thread (background checkpoints, from state the apply thread took)
// and from Start / Drain while no background checkpoint runs.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/env.h"
#include "common/status.h"

namespace fedps {

// What must match between a checkpoint and the shard loading it.
struct CheckpointIdentity {
  std::string run_id;
  std::string layout_hash;
  int shard_index = 0;
  int num_shards = 1;
  int64_t slice_begin = 0;
  int64_t slice_elements = 0;
  std::string optimizer_name;
};

// The state to write, viewed in the caller's memory.
struct CheckpointView {
  int64_t version = 0;
  std::span<const float> slice;
  std::vector<std::pair<std::string, std::span<const float>>> optimizer_tensors;
  nlohmann::json optimizer_json;  // null: no optimizer yet
  int64_t reference_tokens = 0;
  int64_t applied_updates = 0;
  int64_t skipped_updates = 0;
  // The commit-log entry applied last (at `version`): its update id and commit chain, so a
  // restarted shard can tell whether the registry still holds that entry there.
  std::string last_update_id;
  std::string last_chain;
};

// A checkpoint read back.
struct LoadedCheckpoint {
  std::string folder;
  int64_t version = 0;
  std::vector<float> slice;
  std::vector<std::pair<std::string, std::vector<float>>> optimizer_tensors;
  nlohmann::json optimizer_json;
  int64_t reference_tokens = 0;
  int64_t applied_updates = 0;
  int64_t skipped_updates = 0;
  std::string last_update_id;  // "" in checkpoints written before these were recorded
  std::string last_chain;
  int64_t wall_ms = 0;
};

class CheckpointStore {
 public:
  CheckpointStore(std::string root, CheckpointIdentity identity, int keep, Env* env);

  const std::string& root() const { return root_; }
  std::string FolderOf(int64_t version) const;
  // Creates the root; removes unfinished folders; finishes an interrupted replacement.
  Status Recover();
  // Writes (or replaces) the folder of view.version; returns its path.
  StatusOr<std::string> Write(const CheckpointView& view, const std::string& reason);
  // Reads and verifies one folder.
  StatusOr<LoadedCheckpoint> Load(const std::string& folder) const;
  // The newest folder that verifies; nullopt when there is none at all. DataLoss when
  // folders exist but none verifies (the operator decides); FailedPrecondition when one
  // belongs to another run or slice.
  StatusOr<std::optional<LoadedCheckpoint>> LoadNewest() const;
  // Removes folders beyond the newest `keep`; the oldest kept version (-1: none).
  int64_t Prune();

 private:
  std::vector<std::string> Folders() const;  // "v-..." names, oldest first

  const std::string root_;
  const CheckpointIdentity id_;
  const int keep_;
  Env* const env_;
};

}  // namespace fedps
