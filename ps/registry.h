// Registry: the run's shared state in Redis (identity, shard directory, client
// membership with leases and fencing epochs, the global update sequence, the event
// stream). Shards, clients and fedps-ctl each hold one; docs/registry.md has the full
// key schema and the reasoning behind it.
//
// Key schema (P = "fedps:{<run_id>}:"; the braces are a Redis Cluster hash tag, so every
// key of a run lives in one slot and the Lua scripts below may touch several of them):
//   P run                hash    run identity, written once (InitRun)
//   P epoch              string  fencing-epoch counter, INCR per Join and RegisterShard
//   P seq                string  global update sequence, INCR only inside CommitUpdate
//   P shards             set     shard indices ever registered
//   P shard:<i>          hash    address, slice, pid, epoch, lease_ms, times, alive
//   P shard:<i>:lease    string  the shard's epoch, PX lease_ms (refreshed by ShardHeartbeat)
//   P shard:<i>:stats    hash    version, applied updates, bytes in/out, last checkpoint
//   P members            set     client names whose membership has not been closed yet
//   P member:<name>      hash    epoch, host, domains, instance, joined/heartbeat times, lease_ms, stats
//   P lease:<name>       string  the member's epoch, PX lease_ms (refreshed by Heartbeat)
//   P past_members       list    JSON records of ended memberships (left/expired/replaced)
//   P staged:<update>    hash    shard index -> its stage record (JSON), PX staged_ttl;
//                                deleted by the commit
//   P update:<update>    hash    seq, client, epoch, num_shards, meta, stage_record,
//                                committed_ms, chain; exists iff the update is committed
//   P log                zset    update ids scored by seq (the committed log, from P trimmed below)
//   P trimmed            hash    below (oldest seq kept), entries, tokens: what TrimLog removed
//   P trim_floor         hash    client -> "<epoch>/<counter>" of its newest trimmed update
//   P refusals           hash    refusal reason -> count
//   P events             stream  type, data (JSON); MAXLEN ~ events_max_len
//   P round, P round:expected, P round:clients, P round:updates
//                                the open synchronous round (ps.mode = "sync", ps/rounds.h)
//
// Semantics in brief:
//   * A lease is a key with a TTL whose value is the holder's epoch. Alive iff the lease
//     key exists; Redis expires it, so no clock but the Redis server's decides. Epochs
//     come from one counter and are unique per Join/RegisterShard, so a holder whose lease
//     expired (or who replaced itself by joining again) is fenced: its
//     heartbeats and commits carry an old epoch and get kAborted, and it must rejoin.
//   * CommitUpdate is one Lua script: idempotent on the update id, fenced on the epoch,
//     optionally refused when too stale, refused unless every shard staged its slice with
//     the same stage record, then INCR seq + record + log + event. Sequence numbers are
//     therefore contiguous from 1 and each update has at most one.
//   * ReleaseStaged (a shard dropping an uncommitted staged slice) and CommitUpdate are
//     serialised by Redis: either the commit saw every mark and the shards keep their
//     slices, or a mark was gone and the commit failed. A shard must call ReleaseStaged,
//     and see it succeed, before it deletes a staged slice.
//   * Every log entry carries a commit chain (sha1 over the previous entry's chain, its
//     seq and update id), so a shard can tell a log that lost and re-issued seqs from the
//     one it applied (ReadLog returns the entry at its version with the ones after it).
//   * TrimLog cuts the log below the oldest checkpoint every shard keeps; a trimmed id
//     raises its client's trim floor, and ids at or below it are never committed again.
//   * Every timestamp (*_ms) is the Redis server's clock (TIME inside scripts), in ms
//     since the Unix epoch, so hosts with skewed clocks still agree.
//
// Failure model: every call returns Status. kUnavailable when Redis cannot be reached or
// does not answer within command_timeout (the connection is dropped and the next call
// reconnects, so a process survives a Redis restart; a call that timed out may or may
// not have taken effect: CommitUpdate is safe to retry, Join is not - it gives a new
// epoch). kAborted on fencing conflicts; kFailedPrecondition for identity mismatches and
// unstaged shards; kOutOfRange for a commit that is too stale; kDataLoss when Redis holds
// something this code cannot parse.
//
// Concurrency: a Registry is thread-safe; a mutex serialises calls on its one
// connection, so a call waits for the one in flight (at most command_timeout). A thread
// that must not wait behind others (a heartbeat thread) makes its own Registry. Redis
// executes each script atomically, so any number of processes may use the same run.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "ps/rounds.h"

struct redisContext;  // hiredis; kept out of this header

namespace fedps {

struct RegistryOptions {
  std::string host = "127.0.0.1";  // Redis host (name or address)
  int port = 6379;                 // Redis port
  std::string password;            // AUTH password; empty: no AUTH
  std::string run_id;              // required; [A-Za-z0-9._-], at most 128 characters
  // Connecting gives up after this long (-> kUnavailable). Default 2 s.
  std::chrono::milliseconds connect_timeout{2000};
  // A command without an answer after this long -> kUnavailable. Default 5 s.
  std::chrono::milliseconds command_timeout{5000};
  // Approximate cap of the event stream (XADD MAXLEN ~). Default 10000.
  int64_t events_max_len = 10000;
  // Records kept in P past_members. Default 1000.
  int64_t past_members_max = 1000;
  // Lifetime of P staged:<update> without a commit (refreshed by each MarkStaged). Only
  // garbage collection: shards expire their own staged slices (ReleaseStaged). Default 1 h.
  std::chrono::milliseconds staged_ttl{std::chrono::hours(1)};
};

// What makes a run the same run. Every process that joins must agree on all of it.
struct RunIdentity {
  std::string model_preset;                                // e.g. "125m"
  nlohmann::json model_config = nlohmann::json::object();  // full model config
  std::string layout_hash;                                 // flat parameter layout
  std::string tokenizer_sha256;
  std::string codec;  // update codec, e.g. "int8+zstd"
  int num_shards = 0;
  // The [ps] options that decide how updates are weighted, refused and applied
  // (PsApplyConfig in common/config.h). Null: this process does not take part in the check
  // (a tool); a run created by such a process records none and checks none.
  nlohmann::json apply_config = nullptr;
  int64_t created_ms = 0;  // set by the registry on creation; not compared
};

// A shard's entry in the directory, as it registers itself.
struct ShardInfo {
  int index = 0;
  std::string address;      // host:port of its RPC endpoint
  int64_t slice_begin = 0;  // [begin, end) in the flat parameter vector
  int64_t slice_end = 0;
  int64_t pid = 0;
};

// What a shard publishes about itself for the tools (P shard:<i>:stats).
struct ShardStats {
  int64_t version = 0;  // global version of its slice (= last applied seq)
  int64_t applied_updates = 0;
  int64_t bytes_in = 0;
  int64_t bytes_out = 0;
  int64_t last_checkpoint_version = 0;
  int64_t last_checkpoint_ms = 0;
  // The oldest checkpoint the shard keeps (it may restart from any kept one): the commit
  // log below it is no longer needed by this shard (TrimLog). -1: not reported.
  int64_t oldest_checkpoint_version = -1;
  // The update norm bound (ps/norm_bound.h): updates refused for their norm since the shard
  // started, and the median of the recent applied updates' slice norms the bound is a
  // multiple of (0: none yet). 0 when not reported.
  int64_t norm_refused = 0;
  double norm_median = 0;
  int64_t updated_ms = 0;  // read-only: when the registry last stored these
};

// A shard as the directory sees it.
struct ShardStatus {
  ShardInfo info;
  int64_t epoch = 0;
  bool alive = false;              // the lease key exists
  int64_t lease_remaining_ms = 0;  // 0 when expired
  int64_t registered_ms = 0;
  int64_t last_heartbeat_ms = 0;
  ShardStats stats;
};

struct ClientInfo {
  ClientInfo(std::string host_ = "", std::vector<std::string> domains = {}, std::string instance_ = "")
      : host(std::move(host_)), data_domains(std::move(domains)), instance(std::move(instance_)) {}
  std::string host;
  std::vector<std::string> data_domains;  // e.g. {"code", "en-literature"}
  // The process joining (fedps-client: host/pid/random, made once per process). A live
  // membership is taken over only by the same instance; "" matches only "".
  std::string instance;
};

// A live member, or (in PastMembers) one whose membership ended.
struct Member {
  std::string name;
  int64_t epoch = 0;
  std::string host;
  std::vector<std::string> data_domains;
  int64_t joined_ms = 0;
  int64_t last_heartbeat_ms = 0;
  int64_t heartbeats = 0;
  int64_t lease_ms = 0;
  int64_t lease_remaining_ms = 0;                   // live members only
  nlohmann::json stats = nlohmann::json::object();  // as last sent with Heartbeat
  // Past members only:
  std::string end_reason;  // "left", "expired" or "replaced" (the same process joined again)
  int64_t ended_ms = 0;    // for "expired": when the lease ran out
};

struct CommittedUpdate {
  int64_t seq = 0;
  std::string update_id;
  std::string client;
  int64_t epoch = 0;
  int num_shards = 0;
  int64_t committed_ms = 0;
  nlohmann::json meta;  // as given to CommitUpdate (base versions, tokens, steps, ...)
  // The stage record every shard staged (all equal; see MarkStaged); null if none given.
  nlohmann::json stage_record;
  // The commit chain at this entry: sha1 over the previous entry's chain, seq and update
  // id (docs/registry.md, "Commit chain"), so it stands for the whole log up to here. Empty
  // for entries written before the chain existed.
  std::string chain;
};

// TrimLog's answer.
struct TrimResult {
  int64_t below = 1;    // the log holds seqs from here on (the ones below were trimmed)
  int64_t trimmed = 0;  // entries removed by this call
};

// What the trimming removed so far (P trimmed).
struct TrimmedLog {
  int64_t below = 1;    // the oldest seq kept
  int64_t entries = 0;  // log entries removed
  int64_t tokens = 0;   // the sum of their meta.tokens
};

// One atomic read of the commit log for a shard at version `seq` (ReadLog): the entry at
// `seq` itself, to compare with the one the shard applied there, and the entries after it.
struct LogRead {
  int64_t head = 0;                  // the last seq handed out (P seq)
  std::optional<CommittedUpdate> at;  // the entry at `seq`; none for seq 0 or when absent
  std::vector<CommittedUpdate> after;  // seq + 1, seq + 2, ... (contiguous), at most `limit`
};

// CommitUpdate's optional staleness check (docs/protocol.md, "Staleness"): the update
// would be applied at version `current seq`, so its staleness is seq - base_version.
struct StalenessLimit {
  int64_t base_version = 0;   // the oldest version the client pulled
  int64_t max_staleness = 0;  // refuse (kOutOfRange) above this
};

// A shard's refusal of an update (e.g. too stale), recorded for the tools.
struct Refusal {
  std::string update_id;
  std::string client;
  int shard = -1;      // -1: not shard-specific
  std::string reason;  // short machine-readable word, e.g. "too_stale"
  std::string detail;  // human-readable
};

// One entry of the event stream.
struct Event {
  std::string id;    // stream id "<ms>-<n>"; pass to Events() to read on from here
  int64_t ms = 0;    // Redis server time of the event
  std::string type;  // run_created, shard_registered, shard_lost, join, leave, expired,
                     // replaced, commit, commit_refused, refusal, or any AddEvent type
  nlohmann::json data;
};

class Registry {
 public:
  // Checks the options and connects (and AUTHs). kInvalidArgument for bad options,
  // kUnavailable when Redis cannot be reached: retry with backoff.
  static StatusOr<std::unique_ptr<Registry>> Connect(RegistryOptions options);
  ~Registry();
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  const RegistryOptions& options() const { return options_; }
  // "fedps:{<run_id>}:", the prefix of every key of this run.
  const std::string& key_prefix() const { return prefix_; }
  Status Ping();

  // ---- run identity ----
  // Creates the identity if absent; else compares it field by field and fails with
  // kFailedPrecondition naming the first mismatching field and both values. Returns
  // the stored identity (with created_ms).
  StatusOr<RunIdentity> InitRun(const RunIdentity& identity);
  // kNotFound when the run was never initialised.
  StatusOr<RunIdentity> GetRun();

  // ---- shard directory ----
  // Registers (or re-registers) shard info.index with a lease; returns its epoch. Any
  // holder of the index is fenced (a restarted shard takes over from its old process).
  StatusOr<int64_t> RegisterShard(const ShardInfo& info, std::chrono::milliseconds lease);
  // Registers again after this process's lease of `lapsed_epoch` lapsed (Redis was away):
  // a new, larger epoch, as RegisterShard, unless a live lease of another epoch holds the
  // index: kAborted naming that epoch, pid and address (another process owns the shard).
  // Atomic: the check and the registration are one script. Event "shard_reregistered".
  StatusOr<int64_t> ReclaimShard(const ShardInfo& info, std::chrono::milliseconds lease,
                                 int64_t lapsed_epoch);
  // Refreshes the lease (same length as registered) and, when given, stores the stats.
  // kAborted when the lease expired or a newer registration of the index fenced it.
  Status ShardHeartbeat(int index, int64_t epoch, const ShardStats* stats = nullptr);
  // Every registered shard, by index, alive or not. Emits "shard_lost" once per lapse.
  StatusOr<std::vector<ShardStatus>> Shards();

  // ---- client membership ----
  // Starts a membership with a lease; returns a fresh fencing epoch. A name whose lease is
  // live is taken only by the instance holding it (a retried Join: the old membership
  // ends "replaced"); another instance gets kAlreadyExists naming the holder and how long
  // its lease has left. A lapsed membership under the name ends "expired".
  StatusOr<int64_t> Join(const std::string& client, const ClientInfo& info,
                         std::chrono::milliseconds lease);
  // Refreshes the lease and stores `stats`; kAborted ("lease expired or fenced, rejoin")
  // unless `epoch` holds the lease.
  Status Heartbeat(const std::string& client, int64_t epoch,
                   const nlohmann::json& stats = nlohmann::json::object());
  // Ends the membership. OK when it already ended (expired); kAborted when a newer
  // membership holds the name.
  Status Leave(const std::string& client, int64_t epoch);
  // Live members, by name. Members whose lease lapsed are moved to the past members
  // (an "expired" event, once) as a side effect.
  StatusOr<std::vector<Member>> Members();
  // Ended memberships, newest first, at most `limit`.
  StatusOr<std::vector<Member>> PastMembers(int64_t limit = 100);

  // ---- updates: staging and commit ----
  // A shard durably staged its slice of `update_id`. `record` (e.g. base_version,
  // tokens, local_steps) must be the same on every shard, or the commit is refused.
  // Idempotent. Returns 0, or the update's seq when it is already committed (a late
  // mark; nothing is written). Fenced by `shard_epoch`: kAborted unless the shard's
  // directory lease holds that epoch (a lapsed or replaced shard process cannot mark);
  // 0 skips the check, for a ShardCore that is not in the directory (in-process tests).
  StatusOr<int64_t> MarkStaged(const std::string& update_id, int shard_index, int64_t shard_epoch,
                               const nlohmann::json& record = nullptr);
  // A shard wants to drop its uncommitted staged slice. Removes its mark unless the update
  // is committed. Returns 0 when the mark is gone (drop the slice; a commit can no longer
  // succeed without a new mark), or the seq when the update is committed (keep and apply).
  StatusOr<int64_t> ReleaseStaged(const std::string& update_id, int shard_index);
  // Which shards staged `update_id` (sorted); empty once committed (or never staged).
  StatusOr<std::vector<int>> StagedShards(const std::string& update_id);
  // Commits `update_id` and returns its sequence number. One atomic script:
  //   already committed          -> its existing seq (a retry), even after a rejoin;
  //                                 kAlreadyExists if another client committed that id
  //   `epoch` does not hold the lease -> kAborted (fenced)
  //   num_shards != the run's    -> kFailedPrecondition
  //   `staleness` given and seq - base_version > max_staleness
  //                              -> kOutOfRange "staleness S > max M: pull and retrain"
  //                                 (also counted as refusal "too_stale")
  //   a shard has not staged     -> kFailedPrecondition listing the missing shards
  //   stage records differ       -> kFailedPrecondition naming two shards and records
  //   else INCR seq, record it, append to the log, delete the marks, "commit" event.
  StatusOr<int64_t> CommitUpdate(const std::string& update_id, const std::string& client,
                                 int64_t epoch, const nlohmann::json& meta, int num_shards,
                                 const std::optional<StalenessLimit>& staleness = std::nullopt);
  // The commit record of `update_id`; kNotFound when not committed; kOutOfRange when its
  // record may have been trimmed: the id is at or below its client's trim floor (committed
  // before the kept log, or given up by its client; CommitUpdate refuses it too).
  StatusOr<CommittedUpdate> LookupCommit(const std::string& update_id);
  // Committed updates with seq > `seq`, in sequence order, at most `limit`; from the
  // oldest kept seq on when `seq` is below the trimmed part. kDataLoss if the log has a
  // gap (it never should).
  StatusOr<std::vector<CommittedUpdate>> CommittedAfter(int64_t seq, int64_t limit);
  // Trims the commit log below the oldest checkpoint every shard of the run keeps
  // (ShardStats::oldest_checkpoint_version; nothing until every shard reported one): at
  // most `max_entries` entries and their records per call, raising each client's trim
  // floor (docs/registry.md, "Trimming"). Idempotent; any process may call it (shards do,
  // from their heartbeat thread).
  StatusOr<TrimResult> TrimLog(int64_t max_entries);
  StatusOr<TrimmedLog> Trimmed();
  // The entry at `seq`, the entries after it (at most `limit`; 0: none) and the head, in
  // one script, so that what a shard compares and what it applies next come from the same
  // log. kDataLoss if the entries after `seq` have a gap.
  StatusOr<LogRead> ReadLog(int64_t seq, int64_t limit);
  // The last sequence number handed out (0 before the first commit).
  StatusOr<int64_t> GlobalSeq();
  // Counts the refusal under its reason and emits a "refusal" event.
  Status RecordRefusal(const Refusal& refusal);
  StatusOr<std::map<std::string, int64_t>> RefusalCounts();

  // ---- synchronous rounds (ps/rounds.h; implemented in ps/rounds.cc) ----
  // Commits `update_id` to the open round (opening one when none is open, and closing an
  // overdue one first) and returns the seq of the version that will include it (the
  // round's base_version + 1). One atomic script:
  //   already committed          -> its existing seq (a retry); kAlreadyExists if another
  //                                 client committed that id
  //   `epoch` does not hold the lease -> kAborted (fenced)
  //   num_shards != the run's    -> kFailedPrecondition
  //   base_version < the open round's -> kOutOfRange "round <v> closed ...: pull and train
  //                                 the next round" (also counted as refusal "round_closed")
  //   base_version > the open round's -> kInvalidArgument
  //   the client already has an update in the round -> kOutOfRange (refusal "round_repeat")
  //   a shard has not staged / stage records differ -> kFailedPrecondition (as CommitUpdate)
  //   else records the update in the round (P update:<id> with its seq), "round_commit"
  //   event; and when it was the last awaited update, closes the round.
  StatusOr<int64_t> CommitToRound(const std::string& update_id, const std::string& client, int64_t epoch,
                                  const nlohmann::json& meta, int num_shards, int64_t base_version,
                                  const RoundOptions& rounds);
  // Closes the open round when it is due: its deadline passed, or every awaited update is
  // in (a member's lease lapsed since). Returns the closed round's seq, or 0 when nothing
  // closed. Idempotent; any number of processes may call it.
  StatusOr<int64_t> CloseRoundIfDue(const RoundOptions& rounds);
  // The open round; kNotFound before the first round of the run opened.
  StatusOr<RoundState> CurrentRound();

  // ---- events ----
  // Appends an event; returns its stream id.
  StatusOr<std::string> AddEvent(const std::string& type, const nlohmann::json& data);
  // Events after stream id `after_id` ("" or "0": from the start), oldest first.
  StatusOr<std::vector<Event>> Events(const std::string& after_id, int64_t count);
  // The last `count` events, oldest first.
  StatusOr<std::vector<Event>> RecentEvents(int64_t count);

  struct ContextDeleter {
    void operator()(redisContext* c) const;
  };

 private:
  struct Reply;  // an owned redisReply

  explicit Registry(RegistryOptions options);
  std::string Key(const std::string& suffix) const { return prefix_ + suffix; }

  // RegisterShard (lapsed_epoch 0) and ReclaimShard.
  StatusOr<int64_t> RegisterShardIf(const ShardInfo& info, std::chrono::milliseconds lease,
                                    int64_t lapsed_epoch);

  // All of the below run with mu_ held.
  Status ConnectLocked();
  void DropConnectionLocked();
  // Sends one command. Transport failures drop the connection (-> kUnavailable); error
  // replies are mapped to a Status.
  StatusOr<Reply> CommandLocked(const std::vector<std::string>& args);
  // EVALSHA of a script (loaded once per connection, again after NOSCRIPT).
  StatusOr<Reply> EvalLocked(const char* name, const char* lua,
                             const std::vector<std::string>& keys,
                             const std::vector<std::string>& args);
  // The same, taking mu_.
  StatusOr<Reply> Command(const std::vector<std::string>& args);
  StatusOr<Reply> Eval(const char* name, const char* lua, const std::vector<std::string>& keys,
                       const std::vector<std::string>& args);

  const RegistryOptions options_;
  const std::string prefix_;
  std::mutex mu_;
  std::unique_ptr<redisContext, ContextDeleter> ctx_;  // null: reconnect on next call
  std::map<std::string, std::string> script_sha_;      // script name -> SHA1 (this connection)
};

}  // namespace fedps
