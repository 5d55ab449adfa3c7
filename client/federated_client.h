// FederatedClient: one member of a fedps federation (docs/protocol.md, docs/client.md).
//
// The update cycle, repeated until client.max_updates commits or a stop request
// (docs/client.md, "Data path" and "Pipeline"):
//   1. pull: status() then every frame of a pinned snapshot from every shard, in parallel
//      (one worker thread per shard), into the host pull buffer (client/device_update.h);
//      SNAPSHOT_EXPIRED restarts that shard's pull from frame 0. base_version = min over
//      the shards' versions. The buffer is copied into the model and kept as the base.
//   2. train: LocalTrainer for client.local_steps (or client.local_time_s); client.throttle
//      > 1 sleeps after each step so that a step takes `throttle` times longer.
//   3. quantise on the device: Delta = base - trained, error feedback and bf16 rounding
//      there (DeviceUpdate::Quantize); only the rounded values go to the host.
//   4. communicate (the pipeline): zstd-code every shard's frames on the codec's threads,
//      save the pending update and the state after training (optimizer moments every
//      client.optimizer_save_every updates) in the state folder BEFORE the first frame is
//      pushed, push every shard's frames in parallel (retry UNAVAILABLE / transport errors
//      with backoff; DATA_LOSS resends; FENCED re-reads the shard directory; STALE_REFUSED
//      drops the update), commit through the registry once every shard answered STAGED,
//      commit_notify every shard, write a metrics.jsonl "update" record; then pull the
//      model for the update after next into the pull buffer.
//   With client.pipeline_depth = 1 (the default) step 4 for update n runs on a background
//   thread while update n + 1 trains from the model pulled after update n - 1 committed:
//   the GPU does not wait for the network, and each update is one update staler than it
//   would be without the overlap (counted and weighted like any staleness). With 0, step 4
//   runs in line and update n + 1 trains from a model that includes update n.
//
// Fencing and restarts. Updates are identified by "<name>/<client_epoch>/<counter>" and the
// shards' idempotency key is (update_id, frame). A pending update keeps its id and its
// scalars (client_epoch included) for its whole life: when the heartbeat finds the
// membership fenced (lease lapsed during a pause, or a newer Join under the name) the client
// rejoins under a new epoch and the work in flight is NOT discarded: it is re-pushed and
// committed under its ORIGINAL update id, with the new epoch as the commit's fencing token.
// This is safe because the registry commits an id at most once (a retried commit returns the
// same seq), and the old epoch can never commit again. A restarted client does the same
// with the pending update from its state folder: LookupCommit first; committed -> move on;
// else re-push the same id and commit. Work not yet saved as a pending update (a pull or
// training interrupted by a stop) is abandoned; the saved data cursor makes the restarted
// client train on the same data again.
//
// Synchronous rounds (ps.mode = "sync", ps/rounds.h; client.pipeline_depth is 0 there): the
// commit goes to the open round (Registry::CommitToRound) and the client then waits, with a
// progress line every few seconds, until that round closed and the shards applied it,
// pulls the new version and trains the next round from it. An update whose round closed
// without it (a round timeout) is dropped with the registry's reason, and the client trains
// the next round. A restarted client waits for the round of its last commit the same way.
//
// Evaluator mode (options.evaluator): no membership, no training; pulls whenever the
// shards reached the next multiple of client.eval_every_versions and writes "eval" records
// (version, loss, perplexity, bits per byte per domain of the validation split, tokens the
// federation committed up to that version).
//
// Concurrency contract
//   * update-loop thread (the caller of Run()): owns the model, trainer, loader and the
//     device buffers of update_path_. While no communication job runs it also owns what
//     the job uses: push codecs, state store and `state_`, metrics log, `registry_` (the
//     main Redis connection), the shard directory and channels, the host pull and
//     quantised buffers, stats_.
//   * communication thread (pipeline_depth 1): one job at a time, started by the update
//     loop after Quantize and joined before the loop touches any of the job's objects
//     above again (before the next Quantize, a stop, or a synchronous pull).
//   * heartbeat thread (trainers only; started by Run, joined before it returns): owns
//     `heartbeat_registry_` (its own connection, so that it never waits behind a commit).
//     Calls Heartbeat every client.heartbeat_ms; on kAborted (fenced) it rejoins.
//   * pull/push workers: one std::thread per shard per phase, started and joined by the
//     update loop or the communication job. Worker i uses only channels_[i] (a ShardChannel
//     is single-threaded: a push worker's client.streams_per_shard streams use one channel
//     each, channels_[i][j]), its own Backoff, and writes only its own slice of the pulled
//     buffer / its own result slot.
//     Codecs are thread-safe (compression/codec.h).
//   * membership_mu_ guards epoch_, rejoins_ and replaced_: Rejoin() is called by the
//     heartbeat thread or the update loop, and joins again only if the epoch it saw fenced
//     is still current, so two threads noticing the same fencing produce one Join. A name
//     that another live process holds (kAlreadyExists) is never taken: at start the client
//     waits up to 2 x client.lease_ms for it to lapse; after a fencing it stops (replaced_).
//   * stats_mu_ guards heartbeat_stats_ (written by the loop, read by the heartbeat).
//   * stop: an external std::atomic<bool> (a signal handler sets it) plus stopping_; every
//     wait polls them at least every 50 ms.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "client/backoff.h"
#include "client/client_state.h"
#include "client/device_update.h"
#include "common/config.h"
#include "common/metrics_log.h"
#include "common/status.h"
#include "compression/codec.h"
#include "model/decoder.h"
#include "model/layout.h"
#include "model/loader.h"
#include "model/tokenizer.h"
#include "model/trainer.h"
#include "client/registry_link.h"
#include "ps/shard_channel.h"
#include "ps/shard_tls.h"

namespace fedps {

struct FederatedClientOptions {
  RunConfig config;            // already loaded; overrides (steps, throttle, device) applied
  std::string data_dir;        // this client's prepared data ("" = config.data.prepared)
  std::string name;            // client id in the registry; printable ASCII, no spaces
  std::string state_dir;       // "" = <run.dir>/clients/<name>
  bool evaluator = false;      // evaluate instead of training (see the file comment)
  std::string pull_codec = "fp32";  // codec of pulled frames (lossless by default)
  // Shard connections: plaintext to loopback addresses, or mutual TLS with a certificate
  // whose subject is `name` (role client; ps/shard_tls.h).
  TlsOptions tls;
  // Per-call timeout of shard RPCs (a pull with wait_ms waits on the shard). Default 60 s.
  std::chrono::milliseconds shard_call_timeout{60000};
  // Unavailable answers from one shard before the worker gives up its attempt and the
  // loop re-reads the shard directory (then tries again). Default 6.
  int unavailable_attempts = 6;
  // Push rounds for one update (commit said "not staged", a shard moved) before dropping it.
  int max_push_rounds = 6;
  // Set by a signal handler; checked at least every 50 ms. May be null.
  const std::atomic<bool>* stop = nullptr;
  // Jitter seed for the backoff schedules (0: none).
  uint64_t backoff_seed = 0;
};

// Totals of one Run().
struct ClientRunStats {
  int64_t committed = 0;    // updates committed
  int64_t dropped = 0;      // updates dropped (too stale, refused)
  int64_t evaluations = 0;  // evaluator mode
  int64_t rejoins = 0;      // membership fenced and joined again
  int64_t last_seq = 0;
};

class FederatedClient {
 public:
  // Loads the tokenizer and data, resolves the model, checks the run identity against the
  // registry (kFailedPrecondition on a mismatch: wrong config or data for this run), opens
  // and locks the state folder. Fails with one readable Status on bad input.
  static StatusOr<std::unique_ptr<FederatedClient>> Create(FederatedClientOptions options);
  ~FederatedClient();
  FederatedClient(const FederatedClient&) = delete;
  FederatedClient& operator=(const FederatedClient&) = delete;

  // Runs until max_updates updates were committed (trainer), max_updates evaluations were
  // written (evaluator; 0 = unlimited), or a stop request; then leaves the federation.
  // Returns an error only for what retrying cannot fix (identity mismatch, corrupt state,
  // a diverged model, a shard halted).
  Status Run();
  // Asks Run() to stop at the next safe point (thread-safe).
  void RequestStop() { stopping_ = true; }
  ClientRunStats stats() const { return stats_; }
  const std::string& state_dir() const { return state_dir_; }
  const std::string& metrics_path() const;

 private:
  struct ShardAddress {
    std::string host;
    int port = 0;
    int64_t epoch = 0;
  };
  // What one shard's pull produced.
  struct PulledSlice {
    int64_t version = 0;
    int64_t frame_elements = 0;
    int64_t bytes = 0;
  };
  // What one shard's push produced.
  struct PushResult {
    Status status;
    int state = 0;  // rpc::UpdateState; 0 when none
    std::optional<int64_t> seq;
    int64_t shard_version = 0;  // the shard's version at its last answer
    int64_t bytes = 0;
  };
  enum class Outcome { kCommitted, kDropped, kStopped };

  explicit FederatedClient(FederatedClientOptions options);
  Status InitTls();
  Status Init();
  bool Stopping() const;
  // Sleeps up to `ms`, waking early on stop; false when stopping.
  bool SleepMs(int64_t ms) const;

  // Membership.
  Status JoinFresh();
  Status Rejoin(RegistryLink* registry, int64_t fenced_epoch);
  int64_t CurrentEpoch();
  void HeartbeatLoop();

  // Shard directory and channels.
  Status RefreshDirectory(bool wait_for_all);
  ShardChannel& Channel(int shard, int stream = 0);
  int StreamsPerShard() const;

  // Pull every shard (min_version: wait until the shards reach it).
  Status PullAll(std::optional<int64_t> min_version, std::vector<PulledSlice>* out);
  Status PullShard(int shard, std::optional<int64_t> min_version, PulledSlice* out);
  // One shard's slice as the shard announced it.
  struct PullShape {
    int shard = 0;
    int64_t slice_elements = 0;
    int64_t frame_elements = 0;
    int64_t total_frames = 0;
  };
  // What one stream of a pull brought.
  struct FramesPulled {
    Status status;
    bool restart = false;  // the snapshot expired: pull again from frame 0
    int64_t bytes = 0;
  };
  // Pulls `frames` of one version over channels_[shard][stream] into `dest` (the shard's
  // part of the pull buffer), `req` naming the version or (for frame 0) the wait; *version
  // < 0 is set from the first answer. Stops early once `abort` is set.
  FramesPulled PullFrames(const PullShape& shape, int stream, rpc::PullRequest req, const std::vector<int64_t>& frames,
                          int64_t* version, std::span<float> dest, const std::atomic<bool>& abort);

  // Trainer cycle.
  struct TrainFigures {
    int64_t steps = 0, tokens = 0;
    double loss = 0, seconds = 0;
    bool stopped = false;
  };
  // The model in training: what it was pulled as.
  struct Base {
    std::vector<PulledSlice> slices;
    double pull_s = 0;
  };
  // One update handed to communication, and what the job reports back.
  struct CommJob {
    ClientState next;          // the state after training; next.pending without frames yet
    bool pull_after = true;    // pull the next model once the update is settled
    StatusOr<Outcome> outcome = Outcome::kStopped;
    Base pulled;               // filled when pull_after and the pull succeeded
    bool did_pull = false;
  };
  Status RunTrainer();
  Status TrainLocal(TrainFigures* out);
  Status PullBase(Base* out, std::optional<int64_t> min_version);
  Status CheckDiskSpace(bool optimizer_due);
  Status SaveOptimizer();
  // Step 4 of the cycle (file comment), on whichever thread runs the job.
  void Communicate(CommJob* job);
  StatusOr<Outcome> FinishPending();
  void PushAll(const PendingUpdate& update, std::vector<PushResult>* results);
  PushResult PushShard(const PendingUpdate& update, const PendingShard& slice);
  // One stream's share of a push round: `frames` over channel (shard, stream); stops early
  // once `done` (another stream saw the update staged). `missing`: the shard's last list.
  PushResult PushFrames(const PendingUpdate& update, const PendingShard& slice, int stream,
                        const std::vector<int64_t>& frames, std::vector<int64_t>* missing,
                        const std::atomic<bool>& done);
  void NotifyAll(const std::string& update_id, int64_t seq);
  Status DropPending(const std::string& reason);
  // ps.mode = sync: blocks until the round that makes version `seq` closed (a later round
  // is open), printing progress while it waits; Aborted when stopping.
  Status WaitForRound(int64_t seq);
  bool sync_mode() const { return cfg_.ps.mode == "sync"; }
  Status ClearPendingCommitted(int64_t seq, double push_seconds, double commit_seconds, int64_t bytes_sent);
  StatusOr<Codec*> PushCodec(int64_t frame_elements);

  // Evaluator.
  Status RunEvaluator();
  StatusOr<int64_t> FederationTokens(int64_t up_to_seq);

  FederatedClientOptions options_;
  RunConfig& cfg_;  // options_.config
  std::string data_dir_, state_dir_, tokenizer_path_;
  std::vector<std::string> domains_;
  std::vector<std::string> member_domains_;  // domains_, or all of the dataset's when empty
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<SequenceLoader> loader_;
  std::unique_ptr<LocalTrainer> trainer_;
  std::vector<SliceRange> slices_;
  RunIdentityFields identity_;
  RegistryLinkOptions registry_options_;
  std::unique_ptr<RegistryLink> registry_;
  std::unique_ptr<ClientStateStore> store_;
  std::unique_ptr<MetricsLog> metrics_;
  std::unique_ptr<Codec> pull_codec_;
  std::vector<std::unique_ptr<Codec>> push_codecs_;  // one per frame_elements seen
  CodecKind push_kind_ = CodecKind::kBf16;

  std::vector<ShardAddress> directory_;
  std::vector<std::vector<std::unique_ptr<ShardChannel>>> channels_;  // [shard][stream]
  std::shared_ptr<TlsSocketFactory> tls_;  // mutual TLS of every channel; null: plaintext
  std::unique_ptr<DeviceUpdate> update_path_;  // pull buffer, base, residual, quantised buffer
  ClientState state_;           // the update loop's view of the state folder

  std::mutex membership_mu_;
  int64_t epoch_ = 0;           // guarded by membership_mu_
  bool joined_ = false;         // guarded by membership_mu_
  Status replaced_;             // guarded by membership_mu_: another process took the name
  std::mutex stats_mu_;
  nlohmann::json heartbeat_stats_ = nlohmann::json::object();  // guarded by stats_mu_
  std::atomic<int64_t> rejoins_{0};
  std::atomic<bool> stopping_{false};
  std::atomic<bool> heartbeat_stop_{false};
  std::mutex hb_mu_;
  std::condition_variable hb_cv_;
  std::thread heartbeat_;
  ClientRunStats stats_;
};

// "host:port" -> (host, port); InvalidArgument otherwise.
StatusOr<std::pair<std::string, int>> ParseHostPort(const std::string& address);

}  // namespace fedps
