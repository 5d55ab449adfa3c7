// The state folder of one fedps-client (--state DIR, default <run.dir>/clients/<name>):
// everything a restarted client needs to continue without losing or repeating work.
//
//   state.json                       the commit point, replaced atomically (written last):
//                                    format, generation, update counter, the inner trainer's
//                                    global step, loader state (data cursor), totals, the
//                                    pending update's metadata and the names of the files below
//   optimizer-<gen>.safetensors      inner AdamW state (LocalTrainer::OptimizerState)
//   residuals-<gen>.safetensors      codec error-feedback residual per shard slice
//                                    ("residual.<i>"), and with a pending update the residuals
//                                    from before encoding it ("residual_before.<i>", restored
//                                    if the update is dropped)
//   pending-<gen>.bin                the pending update's encoded frames (sha256 in state.json)
//   metrics.jsonl                    the client's records (written by FederatedClient)
//   LOCK                             flock()ed while a process uses the folder
//
// Every file is written atomically (Env::WriteFileAtomic / SaveTensors) under a new
// generation number and only then named by a new state.json; files of older generations
// are removed afterwards. A crash at any point leaves the previous state.json and the files
// it names intact, so Load() sees either the old state or the new one, never a mix.
//
// The pending update is written *before* the first frame is pushed. A restarted client
// therefore either finds it committed (Registry::LookupCommit) and moves on, or re-pushes
// the very same frames under the same update id and scalars (the shards' idempotency key),
// then commits: nothing is lost and nothing is applied twice.
//
// Threads: a ClientStateStore is used by one thread (the update loop).
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
  std::vector<std::pair<std::string, torch::Tensor>> optimizer;  // empty: none yet
  std::vector<std::vector<float>> residuals;         // per shard; an empty vector: none
  std::vector<std::vector<float>> residuals_before;  // with `pending`; same shape
  std::optional<PendingUpdate> pending;
};

// Which parts changed since the last Save (unchanged tensor files are reused).
struct StateWrite {
  bool optimizer = true;
  bool residuals = true;
};

class ClientStateStore {
 public:
  // Creates `dir` if needed and locks it; kFailedPrecondition when another process holds it.
  static StatusOr<std::unique_ptr<ClientStateStore>> Open(const std::string& dir, Env* env = Env::Default());
  ~ClientStateStore();
  ClientStateStore(const ClientStateStore&) = delete;
  ClientStateStore& operator=(const ClientStateStore&) = delete;

  const std::string& dir() const { return dir_; }
  // kNotFound when the folder holds no state yet; kDataLoss when a file named by
  // state.json is missing or corrupt.
  StatusOr<ClientState> Load();
  // Writes a new generation (see the file comment). Pending frames are written when the
  // pending update differs from the one last written.
  Status Save(const ClientState& state, StateWrite what = {});

 private:
  ClientStateStore(std::string dir, Env* env, int lock_fd) : dir_(std::move(dir)), env_(env), lock_fd_(lock_fd) {}
  std::string Path(const std::string& name) const { return JoinPath(dir_, name); }
  Status RemoveUnreferenced();

  std::string dir_;
  Env* env_;
  int lock_fd_ = -1;
  int64_t generation_ = 0;
  std::string optimizer_file_, residuals_file_, pending_file_, pending_sha256_;
  std::string pending_update_id_;  // whose frames pending_file_ holds
};

}  // namespace fedps
