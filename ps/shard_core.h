// ShardCore: the state machine of one parameter-server shard (docs/protocol.md), without
// Thrift or LibTorch, so that it can be driven in-process by tests. ShardServer
// (ps/shard_server.h) is a thin RPC adapter over it; ShardCore is the facade over the
// shard's parts, one concept per file:
//   ps/receive_table   updates being received: their frames as bytes, checked, bounded
//   ps/staged_store    durable staged updates as received frames (also the replay log)
//   ps/applier         decoding an update across all cores; the apply thread (commit-log
//                      order, staleness, outer optimizer in place, expiry, checkpoints)
//   ps/snapshots       the master slice and the versions pulls read (copy on write)
//   ps/checkpoints     checkpoint folders: format, replace, verify, load, prune
// This file: options, lifecycle, request checks, Pull / Push / CommitNotify / Checkpoint.
//
// State kept here (beside the parts): version (the highest global seq processed), the
// OuterOptimizer and the StalenessPolicy; staged_: update_id -> what the shard knows of a
// staged update (scalars, seq once committed); done_: applied / skipped updates. Both drop
// the updates at or below the oldest kept checkpoint (PruneAfterCheckpoint), so they hold
// the replay log of the kept checkpoints and nothing older; a resend of an older update is
// answered from the registry (LookupCommit).
//
// Lifecycle: Start() loads the newest checkpoint that verifies (or initialises version 0
// from init_slice and checkpoints it), indexes the staging store and starts the apply
// thread: state RECOVERING until it has caught up with the commit log it read at start,
// then SERVING. Drain() (clean shutdown): DRAINING (pushes refused), applies what is
// committed and staged, checkpoints (unless the newest checkpoint already holds this
// version), stops the thread. A committed update whose staged file is missing or corrupt
// halts the shard (HALTED, every call answers DATA_LOSS): it is never skipped; so does a
// registry whose commit log ends below the shard's version, or holds another entry at the
// shard's version than the one it applied there (Redis lost commits and reused their seqs). Fence()
// (the directory lease lapsed, or another process owns the shard): every call answers
// FENCED, nothing more is applied, status FENCED; Resume() (registered again) un-fences.
//
// Memory (docs/protocol.md, "Shard implementation notes"): shard RAM <= (4 + pinned
// snapshots) x slice bytes for an outer optimizer with one state tensor (SGD has none,
// Adam two): the master slice, the optimizer state, the decode scratch (ps/applier.h),
// the spare buffer of the copy on write and one buffer per snapshot a pull pins
// (ps/snapshots.h); beside them encoded
// frames: those cached for pulls and those of updates being received (at most
// max_receiving updates of one encoded slice each); while a background checkpoint is
// written, up to one more slice and a copy of the optimizer state. ps.mode = sync adds one
// slice: a round's mean pseudo-gradient (round_mean_, ps/applier.cc).
//
// Concurrency contract
//   * apply thread (one, started by Start): owns the master slice (SnapshotStore's write
//     side), optimizer_, apply_registry_, and the counters marked [apply]. It is the only
//     writer of version_ (under mu_). Checkpoints are taken on it (scheduled, and
//     on-demand ones handed over in checkpoint_requests_) so that slice, optimizer and
//     version agree, and written by the checkpoint thread.
//   * checkpoint thread (one): writes checkpoint_job_ through the checkpoint store, then
//     prunes checkpoints and staged files and answers the job's requests. It is the only
//     user of the checkpoint store while the apply thread runs.
//   * RPC threads (any number): Pull / Push / CommitNotify / Checkpoint / GetStatus.
//     Checking frames, decoding, encoding, file writes and Redis calls happen outside
//     mu_; the maps are only looked up / changed under it. Entries are shared_ptr so that
//     a request can work on one while it is removed from a map.
//   * mu_ guards: state_, fenced_, halt_message_, epoch_, version_, last_applied_id_,
//     last_applied_chain_, committed_seq_,
//     receiving_ (the table; an entry's frames have their own lock), norm_bound_,
//     norm_refused_, norm_refusals_, staged_, done_,
//     checkpoint_requests_, checkpoint_job_ (the pointer), checkpoint_version_, stats. version_cv_ (with mu_) signals version changes;
//     apply_cv_ (with mu_) wakes the apply thread (commit_notify, checkpoint, stop).
//   * Lock order: mu_, then a receiving entry's mu; SnapshotStore's and UpdateDecoder's
//     locks are never taken while holding mu_.
//   * request_registry_ (pushes' MarkStaged / LookupCommit) and apply_registry_ are
//     separate connections; Registry is itself thread-safe.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/env.h"
#include "common/folder_lock.h"
#include "common/metrics_log.h"
#include "common/status.h"
#include "compression/codec.h"
#include "compression/thread_pool.h"
#include "ps/applier.h"
#include "ps/checkpoints.h"
#include "ps/norm_bound.h"
#include "ps/outer_optimizer.h"
#include "ps/receive_table.h"
#include "ps/registry.h"
#include "ps/snapshots.h"
#include "ps/staged_store.h"
#include "ps/staleness.h"

namespace fedps {

// docs/protocol.md §10, mirrored here so the core needs no Thrift (same numbers as the IDL).
enum class ShardErrorCode {
  kOk = 0,
  kStaleRefused = 1,
  kFenced = 2,
  kNotStaged = 3,
  kBadRequest = 4,
  kDataLoss = 5,
  kUnavailable = 6,
  kIdentityMismatch = 7,
  kSnapshotExpired = 8,
  kInternal = 9,
  kNotMember = 10,
};

// The outcome of a core call: kOk, or an error with the fields ShardError carries.
struct CoreError {
  ShardErrorCode code = ShardErrorCode::kOk;
  std::string message;
  std::optional<int64_t> version;
  std::optional<int64_t> retry_after_ms;
  std::optional<int64_t> epoch;
  // A refusal of the update itself that Push records in the registry for the tools
  // (Refusal::reason: "too_stale", "norm_bound"); "" for other errors.
  std::string refusal;

  bool ok() const { return code == ShardErrorCode::kOk; }
  // The protocol's Status for this error (§10 table).
  Status ToStatus() const;
  static CoreError Make(ShardErrorCode code, std::string message) {
    CoreError e;
    e.code = code;
    e.message = std::move(message);
    return e;
  }
};

// Same numbers as the IDL's ShardState / UpdateState.
// kFenced is only reported (GetStatus): the directory lease lapsed or another process owns
// the shard; requests answer FENCED and nothing is applied until Resume().
enum class ShardState { kStarting = 1, kRecovering = 2, kServing = 3, kDraining = 4, kHalted = 5, kFenced = 6 };
enum class UpdateState { kReceiving = 1, kStaged = 2, kCommitted = 3, kApplied = 4, kSkipped = 5 };
const char* ShardStateName(ShardState s);

struct ShardCoreOptions {
  std::string run_id;       // required
  std::string layout_hash;  // required: ParamLayout::hash() of the run's model
  int shard_index = 0;
  int num_shards = 1;
  int64_t slice_begin = 0;
  int64_t slice_elements = 0;  // n > 0
  std::string dir;             // the shard's folder (staged/, checkpoints/); required
  PsOptions ps;                // frame_elements, staleness, optimizer, TTLs, checkpoint_every
  CompressionOptions compression;  // pull encoding: zstd level, threads, int8 block
  RegistryOptions registry;    // the core opens its own connections with these
  // Receiving updates at once; beyond: UNAVAILABLE with retry_after_ms. Default 16.
  int max_receiving = 16;
  // Per client (the push's client_id, a live member: see Push): updates being received at
  // once and their frames in memory; beyond either: UNAVAILABLE. Defaults 4 and 16 GiB.
  int max_receiving_per_client = 4;
  int64_t max_receiving_bytes_per_client = int64_t{16} << 30;
  // Staged, uncommitted updates (and their frames on disk), all clients and per client. A
  // new update is refused UNAVAILABLE while one is full (commits and expiry free them).
  // Defaults 1024, 256 GiB, 16, 32 GiB (the [limits] section's).
  int max_staged = 1024;
  int64_t max_staged_bytes = int64_t{256} << 30;
  int max_staged_per_client = 16;
  int64_t max_staged_bytes_per_client = int64_t{32} << 30;
  // A partially received update idle this long is dropped. Default 120 s.
  int64_t receive_timeout_ms = 120000;
  // Cap of PullRequest.wait_ms. Default 30 s.
  int64_t max_pull_wait_ms = 30000;
  // Older snapshots kept pinned besides the current one. Default 4.
  int max_pinned_snapshots = 4;
  // Threads that decode an update at apply (and once when its push completes); 0: the
  // machine's hardware concurrency. Default 0.
  int decode_threads = 0;
  // Apply thread: commit-log poll interval when idle (commit_notify wakes it sooner).
  // Default 100 ms.
  int64_t poll_ms = 100;
  // Checkpoints kept. Default 2.
  int keep_checkpoints = 2;
  // retry_after_ms in UNAVAILABLE answers. Default 200 ms.
  int64_t retry_after_ms = 200;
  // The initial slice (n floats), called only when the shard has no checkpoint yet.
  std::function<StatusOr<std::vector<float>>()> init_slice;
  Env* env = Env::Default();
  MetricsLog* metrics = nullptr;  // optional: apply / stage / checkpoint / halt records
};

// The request header (docs/protocol.md §1).
struct CoreHeader {
  std::string run_id;
  std::string layout_hash;
  int shard_index = 0;
  int64_t shard_epoch = 0;
  std::string caller;
};

struct PullArgs {
  CoreHeader header;
  std::string codec;
  int64_t frame_index = 0;
  std::optional<int64_t> version;
  std::optional<int64_t> min_version;
  std::optional<int64_t> wait_ms;
};

struct PullResult {
  int64_t version = 0;
  int64_t frame_index = 0;
  int64_t total_frames = 0;
  int64_t frame_elements = 0;
  int64_t slice_elements = 0;
  std::string codec;
  std::string frame;
  int64_t snapshot_ttl_ms = 0;
};

struct PushArgs {
  CoreHeader header;
  std::string update_id;
  std::string client_id;
  int64_t client_epoch = 0;
  int64_t base_version = 0;
  int64_t tokens = 0;
  int64_t local_steps = 0;
  std::string codec;
  int64_t frame_index = 0;
  int64_t total_frames = 0;
  int64_t frame_elements = 0;
  std::string frame;
};

struct PushResult {
  UpdateState state = UpdateState::kReceiving;
  int64_t frames_received = 0;
  int64_t total_frames = 0;
  int64_t version = 0;
  std::optional<int64_t> seq;
  std::optional<int64_t> stage_ttl_ms;
  std::optional<std::vector<int64_t>> missing_frames;
};

struct CheckpointResult {
  int64_t version = 0;
  int64_t optimizer_steps = 0;
  std::string path;
  int64_t duration_ms = 0;
};

struct CoreStatus {
  ShardState state = ShardState::kStarting;
  int64_t epoch = 0;
  bool fenced = false;
  std::string halt_message;
  int64_t version = 0;
  int64_t committed_seq = 0;
  int64_t optimizer_steps = 0;
  int32_t buffered_updates = 0;
  int32_t receiving_updates = 0;
  int32_t staged_updates = 0;
  int64_t checkpoint_version = -1;  // -1: none yet
  int64_t checkpoint_ms = 0;        // wall time of the last checkpoint
  int64_t applied_updates = 0;      // applied (not skipped) since version 0
  int64_t skipped_updates = 0;
  int64_t bytes_in = 0;   // push frame bytes
  int64_t bytes_out = 0;  // pull frame bytes
  int64_t norm_refused = 0;  // updates refused by the norm bound since Start
  double norm_median = 0;    // the bound's median slice norm (0: none yet)
  std::optional<double> norm_limit;  // the norm above which an update is refused now (none: not bounding)
};

// One applied (or skipped) update, in apply order; for tests and metrics.
struct AppliedRecord {
  int64_t seq = 0;
  std::string update_id;
  bool skipped = false;
  double weight = 0;
};

class ShardCore {
 public:
  // Validates options; touches nothing.
  static StatusOr<std::unique_ptr<ShardCore>> Create(ShardCoreOptions options);
  ~ShardCore();  // Stop()
  ShardCore(const ShardCore&) = delete;
  ShardCore& operator=(const ShardCore&) = delete;

  // Connects to Redis, loads the newest valid checkpoint (or initialises and writes
  // version 0), indexes staged files and starts the apply thread (RECOVERING). Requests
  // may arrive from now on (answered UNAVAILABLE until SERVING). Errors: the shard cannot
  // start (bad folder, Redis unreachable, init failed).
  Status Start();
  // The fencing epoch requests must carry (from RegisterShard); 0 until set.
  void SetEpoch(int64_t epoch);
  // The directory lease lapsed or another process owns the shard: answer FENCED, apply
  // nothing more until Resume().
  void Fence(const std::string& why);
  // The shard registered again (Registry::ReclaimShard) as `epoch`: un-fences, unless the
  // registry went back in time - `log` (Registry::ReadLog at `log_version`, the shard's
  // version then) ends below this shard's version, or holds another entry at it than the
  // one this shard applied there (Redis lost acknowledged commits and handed their seqs to
  // other updates) - which halts the shard (DATA_LOSS naming the seq, and both update ids)
  // rather than apply other updates under reused seqs. Returns the halt's status then (and
  // kDataLoss when already halted).
  Status Resume(int64_t epoch, int64_t log_version, const LogRead& log);
  // Clean shutdown: DRAINING, apply what is committed and staged, checkpoint, stop the
  // apply thread. Returns the final checkpoint's status.
  Status Drain();
  // Stops the apply thread without a checkpoint (idempotent).
  void Stop();

  CoreError Pull(const PullArgs& args, PullResult* out);
  // One frame of an update (docs/protocol.md §3; docs/security.md for who may push):
  // update_id must be "<client_id>/<client_epoch>/<counter>"; the first frame of an update
  // this shard does not know is admitted only when client_id is a live member whose
  // membership epoch is client_epoch (or later: a re-push of an update made under an
  // earlier membership), and within the [limits] quotas; every frame is checked (placement,
  // checksum) before anything is looked up or kept, and a frame of an update received or
  // staged before is compared with it by checksum: other bytes are BAD_REQUEST.
  CoreError Push(const PushArgs& args, PushResult* out);
  CoreError CommitNotify(const CoreHeader& header, const std::string& update_id, int64_t seq);
  CoreError Checkpoint(const CoreHeader& header, const std::string& reason, CheckpointResult* out);

  CoreStatus GetStatus();
  const ShardCoreOptions& options() const { return options_; }
  int64_t total_frames() const { return total_frames_; }
  // Codec names pull can encode and push can decode.
  std::vector<std::string> codecs() const;
  // Registry stats for the heartbeat.
  ShardStats Stats();
  // The updates applied / skipped since Start(), in order (for tests and tools): the last
  // kAppliedLogKept at least, so that it does not grow without bound on a long run.
  std::vector<AppliedRecord> AppliedLog();
  static constexpr size_t kAppliedLogKept = 100000;
  // Blocks until version >= v or the timeout passes; true when reached.
  bool WaitForVersion(int64_t v, int64_t timeout_ms);
  // A copy of the current snapshot (version, slice); for tests and tools.
  std::pair<int64_t, std::vector<float>> CurrentSlice();
  // The staged file of an update (exists or not).
  std::string StagedPath(const std::string& update_id) const;
  std::string CheckpointRoot() const;

 private:
  // Push without the refusal bookkeeping (Push records STALE_REFUSED in the registry,
  // outside the lock, so `fedps-ctl status` counts refusals made at push time too).
  CoreError PushFrame(const PushArgs& args, PushResult* out);

  // A staged update on disk (guarded by mu_).
  struct Staged {
    std::string client_id;
    std::vector<uint64_t> checksums;  // each frame's header checksum: a resend is compared
    int64_t bytes = 0;                // the frames' total size
    int64_t base_version = 0;
    int64_t tokens = 0;
    int64_t local_steps = 0;
    double sum_squares = -1;  // of its values as received (the norm bound's); -1: not known
    int64_t staged_us = 0;  // last (re)mark; expiry counts from here
    int inflight = 0;       // MarkStaged calls in flight
    bool expiring = false;  // ReleaseStaged in flight
    int64_t seq = 0;        // committed seq when known, else 0
  };
  struct CheckpointRequest {
    std::string reason;
    bool done = false;  // guarded by mu_
    Status status;
    CheckpointResult result;
    std::condition_variable cv;
  };
  struct DoneUpdate {
    int64_t seq = 0;
    bool skipped = false;
  };

  explicit ShardCore(ShardCoreOptions options);

  // Checks run on every request but status(): identity, epoch, halted, fenced.
  CoreError CheckHeaderLocked(const CoreHeader& h) const;
  CoreError NotServingLocked() const;  // kOk when requests may be served
  CoreError UnavailableLocked(const std::string& why) const;

  // Push helpers.
  // [limits] that a new update of `client_id` would exceed (receiving and staged quotas).
  CoreError AdmitLocked(const std::string& client_id) const;
  // Whether `client_id` is a live member and `client_epoch` its membership (one registry
  // read, at an update's first frame).
  CoreError CheckMember(const PushArgs& args);
  CoreError StageReceived(const std::shared_ptr<ReceivingUpdate>& r, PushResult* out);
  // The norm bound on an update being received: when the frames stored so far already
  // make its norm exceed norm_bound_'s limit, drops it and answers BAD_REQUEST (refusal
  // "norm_bound"). `stager`: called by the thread staging r (others leave the decision to
  // it once staging started).
  CoreError CheckNorm(const std::shared_ptr<ReceivingUpdate>& r, bool stager);
  CoreError MarkStagedAndAnswer(const std::string& update_id, PushResult* out);
  bool AnswerKnownLocked(const std::string& update_id, PushResult* out);
  nlohmann::json StageRecord(int64_t base_version, int64_t tokens, int64_t local_steps) const;
  Status IndexStagedFiles();

  // Apply thread (ps/applier.cc).
  void ApplyLoop();
  // Applies one entry of the commit log; false when the shard halted.
  bool ApplyOne(const CommittedUpdate& c);
  // ApplyOne for a closed synchronous round (ps/rounds.h): one outer step on the
  // token-weighted mean of its updates.
  bool ApplyRound(const CommittedUpdate& c, int64_t start_us);
  // After ApplyOne / ApplyRound stepped (or skipped, with the reason) commit `c`: publishes
  // its version and records each of its updates (`applied`: id and weight) as done.
  void FinishApply(const CommittedUpdate& c, const std::vector<AppliedRecord>& applied,
                   const std::string& skip_reason);
  // ps.mode = sync: closes the open round in the registry when it is due.
  void CloseDueRound();
  void Halt(const std::string& message);
  // The halt message for a registry whose commit log ends at `head` < `version`.
  std::string RegistryBehindMessage(int64_t head, int64_t version) const;
  // Why `log` (read at version `log_version`) does not continue the history this shard
  // applied: its head below version_, or its entry at version_ not the one applied there
  // (another update id or commit chain). "" when it does, or when log_version != version_.
  std::string DivergenceLocked(int64_t log_version, const LogRead& log) const;
  void ExpireStaged();
  void DropIdleReceiving();
  void ServeCheckpointRequests();
  void OnApplyExit();  // the apply thread's last act

  // Checkpoints (ps/applier.cc). A checkpoint of the apply thread's state is written by
  // the checkpoint thread while applies go on: the job holds the version's slice buffer
  // (SnapshotStore::Hold; an apply meanwhile writes a copy) and a copy of the optimizer
  // state, taken on the apply thread so that slice, optimizer and version agree.
  struct CheckpointJob {
    CheckpointView view;  // spans into `held` and `optimizer_copy`
    std::shared_ptr<SnapshotStore::Snapshot> held;
    std::vector<std::pair<std::string, std::vector<float>>> optimizer_copy;
    std::string reason;
    std::vector<std::shared_ptr<CheckpointRequest>> requests;  // answered when durable
    int64_t start_us = 0;
  };
  // [apply] Hands a checkpoint of the current state to the checkpoint thread (or answers
  // at once when the newest checkpoint holds this version); false while one is written.
  bool StartBackgroundCheckpoint(const std::string& reason, std::vector<std::shared_ptr<CheckpointRequest>> requests);
  void CheckpointLoop();  // the checkpoint thread
  // The newest checkpoint when it holds the current version (nothing applied since).
  std::optional<CheckpointResult> CurrentCheckpoint(const std::string& reason);
  // Bookkeeping once a checkpoint is durable (either thread).
  CheckpointResult FinishCheckpoint(const CheckpointView& view, const std::string& reason, int64_t start_us);
  // Writes a checkpoint on the calling thread, after any background one (Start, Drain).
  StatusOr<CheckpointResult> WriteCheckpoint(const std::string& reason);
  Status LoadNewestCheckpoint(bool* found);
  void PruneAfterCheckpoint();
  StatusOr<std::unique_ptr<OuterOptimizer>> MakeOptimizer(int64_t reference_tokens) const;

  void Metric(const std::string& event, nlohmann::json fields);
  int64_t NowUs() const;

  const ShardCoreOptions options_;
  Env* const env_;
  int64_t total_frames_ = 0;
  std::unique_ptr<StalenessPolicy> staleness_;
  std::unique_ptr<SnapshotStore> snapshots_;   // thread-safe; its write side is [apply]
  std::unique_ptr<UpdateDecoder> decoder_;     // thread-safe
  std::unique_ptr<Codec> frame_checker_;       // thread-safe: checks each pushed frame
  std::unique_ptr<FolderLock> folder_lock_;     // <dir>/LOCK, from Start() on
  std::unique_ptr<StagedStore> staged_store_;  // thread-safe (files)
  std::unique_ptr<CheckpointStore> checkpoints_;  // [apply]
  std::unique_ptr<Registry> request_registry_;
  std::unique_ptr<Registry> apply_registry_;  // [apply]

  // [apply] thread state.
  bool have_slice_ = false;  // a slice was loaded or initialised
  // The outer optimizer's element loops, on every core (used by the apply thread; declared
  // before optimizer_, so it outlives every optimizer).
  std::unique_ptr<ThreadPool> step_pool_ =
      std::make_unique<ThreadPool>(static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
  std::unique_ptr<OuterOptimizer> optimizer_;
  int64_t reference_tokens_ = 0;  // resolved reference_tokens (0: not yet, weight_by_tokens)
  std::vector<float> round_mean_;  // sync mode: a round's mean pseudo-gradient (one more slice)
  int64_t applied_since_checkpoint_ = 0;
  int64_t recovery_target_ = 0;   // commit-log head read at start

  std::thread apply_thread_;
  std::thread checkpoint_thread_;

  mutable std::mutex mu_;
  std::condition_variable version_cv_;
  std::condition_variable apply_cv_;
  bool stop_ = false;       // guarded by mu_
  bool draining_ = false;   // guarded by mu_
  bool started_ = false;    // guarded by mu_
  bool nudged_ = false;     // guarded by mu_: commit_notify arrived
  bool apply_running_ = false;  // guarded by mu_
  ShardState state_ = ShardState::kStarting;
  bool fenced_ = false;
  std::string fence_message_;
  std::string halt_message_;
  int64_t epoch_ = 0;
  int64_t version_ = 0;
  // The commit-log entry applied at version_ (update id and commit chain; "" when not
  // known: version 0, or a checkpoint that did not record them).
  std::string last_applied_id_;
  std::string last_applied_chain_;
  int64_t committed_seq_ = 0;
  ReceiveTable receiving_;
  NormBound norm_bound_;  // fed by FinishApply and at Start with applied updates' norms
  int64_t norm_refused_ = 0;
  // Updates refused for their norm (id -> the answer), the last kRefusedKept: their other
  // frames are answered at once instead of opening a receive entry again.
  std::map<std::string, std::string> norm_refusals_;
  std::deque<std::string> norm_refusal_order_;
  static constexpr size_t kRefusedKept = 1024;
  std::map<std::string, std::shared_ptr<Staged>> staged_;
  std::map<std::string, DoneUpdate> done_;
  std::vector<AppliedRecord> applied_log_;  // at most 2 x kAppliedLogKept
  std::vector<std::shared_ptr<CheckpointRequest>> checkpoint_requests_;
  std::shared_ptr<CheckpointJob> checkpoint_job_;  // queued or being written (one at a time)
  bool checkpoint_writing_ = false;                // the checkpoint thread took checkpoint_job_
  bool checkpoint_stop_ = false;
  std::condition_variable checkpoint_cv_;  // with mu_: a job queued or finished, or stop
  int64_t checkpoint_version_ = -1;
  int64_t oldest_checkpoint_version_ = -1;  // the oldest kept (reported for trimming); -1: none
  int64_t checkpoint_ms_ = 0;
  int64_t optimizer_steps_ = 0;
  int32_t buffered_updates_ = 0;
  int64_t applied_updates_ = 0;
  int64_t skipped_updates_ = 0;
  std::atomic<int64_t> bytes_in_{0};
  std::atomic<int64_t> bytes_out_{0};
};

}  // namespace fedps
