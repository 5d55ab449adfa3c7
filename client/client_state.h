// The state folder of one fedps-client (--state DIR, default <run.dir>/clients/<name>):
// everything a restarted client needs to continue without losing or repeating an update.
//
//   state.json               the commit point, replaced atomically: format, update counter,
//                            the inner trainer's global step, loader state (data cursor),
//                            totals, the pending update's metadata and its frames' sha256
//   pending.bin              the pending update's encoded frames (one copy: written only
//                            while state.json names no pending update, removed once it is
//                            committed or dropped)
//   optimizer.safetensors    the inner AdamW moments (LocalTrainer::OptimizerState), written
//                            every client.optimizer_save_every updates and on a clean stop,
//                            atomically (a temporary file renamed over the old one)
//   metrics.jsonl            the client's records (written by FederatedClient)
//   LOCK                     held while a process uses the folder (common/folder_lock.h)
//
// Disk bound (docs/client.md), P parameters, E = the encoded bytes of one update
// (bf16 + zstd: below 2P): state.json + pending.bin E + optimizer 8P, plus 8P more while a
// new optimizer file is written beside the old one: at most E + 16P bytes + metrics.
//
// The pending update is written *before* its first frame is pushed, so a restarted client
// either finds it committed (Registry::LookupCommit) and moves on, or re-pushes the very
// same frames under the same update id and scalars (the shards' idempotency key), then
// commits: nothing is lost and nothing is applied twice. The optimizer moments are a
// performance aid, not part of that guarantee: a restarted client continues with moments up
// to optimizer_save_every updates old (or fresh ones when the file is missing or unreadable,
// with a warning), and its data cursor from state.json, so no data is trained twice.
//
// Threads: a ClientStateStore is used by one thread at a time (the update loop, or the
// update pipeline while it owns the pending update: docs/client.md, "Pipeline").
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "common/env.h"
#include "common/folder_lock.h"
#include "common/status.h"
#include "model/loader.h"

namespace fedps {

// One shard's part of a pending update.
struct PendingShard {
  int shard = 0;
  int64_t slice_begin = 0;
  int64_t slice_elements = 0;
  int64_t frame_elements = 0;
  std::vector<std::string> frames;  // encoded, frame i at index i
};

// An update that was computed and saved but is not known to be committed or dropped.
struct PendingUpdate {
  std::string update_id;       // "<client>/<client_epoch>/<counter>"
  int64_t client_epoch = 0;    // the epoch in the id; re-pushes send it unchanged
  int64_t counter = 0;
  int64_t base_version = 0;    // min over the pulled versions
  std::vector<int64_t> pulled_versions;  // per shard
  int64_t tokens = 0;
  int64_t local_steps = 0;
  std::string codec;           // push codec name
  nlohmann::json info = nlohmann::json::object();  // training/encoding figures for the metrics record
  std::vector<PendingShard> shards;
};

struct ClientState {
  int64_t next_counter = 1;   // the counter of the next new update
  int64_t trainer_step = 0;   // LocalTrainer::global_step (drives the lr schedule)
  std::optional<LoaderState> loader;
  nlohmann::json totals = nlohmann::json::object();  // committed, dropped, tokens, ...
  std::optional<PendingUpdate> pending;
  // (A new field is copied by CopyWithoutPending too.)
};

// `s` without its pending update, which is not copied (its frames are a whole encoded
// update): the next state once the pending update is committed or dropped.
ClientState CopyWithoutPending(const ClientState& s);

class ClientStateStore {
 public:
  // Creates `dir` if needed and locks it; kFailedPrecondition when another process holds it.
  static StatusOr<std::unique_ptr<ClientStateStore>> Open(const std::string& dir, Env* env = Env::Default());
  ClientStateStore(const ClientStateStore&) = delete;
  ClientStateStore& operator=(const ClientStateStore&) = delete;

  const std::string& dir() const { return dir_; }
  // kNotFound when the folder holds no state yet; kDataLoss when state.json or the pending
  // frames it names are missing or corrupt.
  StatusOr<ClientState> Load();
  // Replaces state.json; writes pending.bin first when `state.pending` is an update not
  // written yet (FailedPrecondition if another pending update is still recorded: it must be
  // committed or dropped first). Removes pending.bin once no update is pending.
  Status Save(const ClientState& state);

  // The optimizer file (see the file comment). LoadOptimizer: kNotFound when there is none.
  Status SaveOptimizer(const std::vector<std::pair<std::string, torch::Tensor>>& tensors);
  // Read onto `device` without a host copy of the file (model/safetensors.h).
  StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> LoadOptimizer(torch::Device device);

  // Free bytes on the folder's file system (for the check before a cycle).
  StatusOr<int64_t> FreeBytes() const;

 private:
  ClientStateStore(std::string dir, Env* env, std::unique_ptr<FolderLock> lock)
      : dir_(std::move(dir)), env_(env), lock_(std::move(lock)) {}
  std::string Path(const std::string& name) const { return JoinPath(dir_, name); }

  std::string dir_;
  Env* env_;
  std::unique_ptr<FolderLock> lock_;  // <dir>/LOCK, held while the store is open
  std::string pending_sha256_;     // of pending.bin as state.json records it
  std::string pending_update_id_;  // whose frames pending.bin holds ("" = none recorded)
};

}  // namespace fedps
