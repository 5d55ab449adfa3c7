// fedps parameter-server shard service (protocol version 1).
//
// A shard owns one contiguous slice [slice_begin, slice_begin + slice_elements) of the
// flat fp32 model. Clients pull the slice and push pseudo-gradients (Delta = pulled -
// trained) in frames; an update is staged on every shard, committed once through the
// Redis registry (which gives it a global sequence number), and applied by every shard
// in sequence order. docs/protocol.md is the full description: read it before
// implementing either side. In short:
//
//   - Versions: a shard's version is the highest global sequence number it has
//     processed; every shard passes through the same versions. Version 0 is the initial
//     model.
//   - Frames: the slice is cut into frames of frame_elements elements (ShardStatus);
//     frame i covers elements [i * frame_elements, min((i + 1) * frame_elements, n)).
//     Each frame is encoded on its own by a codec (compression/), a few MB at most.
//   - Pull: the first frame (no version given) pins a snapshot of the shard's current
//     version; the following frames name that version and come from the same snapshot.
//   - Push: idempotent by (update_id, frame_index). Once all frames are in, the shard
//     validates, stores the slice durably and answers STAGED.
//   - Commit: by the client, through the Redis registry, once every shard answered
//     STAGED; commit_notify only nudges the shards to read the commit log sooner.
//
// Evolution: field ids are never reused or renumbered; fields added after version 1
// are optional, so older peers keep talking.

// Generated code lives under fedps.rpc in every language that has namespaces (Python:
// `from fedps.rpc import Shard`, `from fedps.rpc.ttypes import PullRequest`; Go: package
// fedps/rpc; Java: fedps.rpc; C#: Fedps.Rpc).
namespace cpp fedps.rpc
namespace py fedps.rpc
namespace java fedps.rpc
namespace go fedps.rpc
namespace netstd Fedps.Rpc
namespace js fedps.rpc

const i32 PROTOCOL_VERSION = 1

// What went wrong, in terms a caller can act on.
enum ErrorCode {
  // The update's staleness is above the run's maximum: pull the current model, train
  // again. (A base version ahead of the shard is BAD_REQUEST.)
  STALE_REFUSED = 1,
  // The shard epoch in the request is not this shard's: re-read the shard directory in
  // Redis and talk to the current owner.
  FENCED = 2,
  // The shard holds no staged slice for that update (never fully pushed, or expired
  // before commit): push it again (if not too stale) or drop it.
  NOT_STAGED = 3,
  // Malformed request: sizes, frame layout, codec, values (NaN), an update_id that is not
  // "<client_id>/<client_epoch>/<counter>", a message larger than the shard's
  // limits.max_message_bytes, a conflicting resend (a frame of an update received or
  // staged before with other bytes: update ids are not reusable). Retrying the same
  // request will fail the same way.
  BAD_REQUEST = 4,
  // A frame failed to decode or a checksum failed (resend the frame), or the shard lost
  // durable state (operator: see the shard's log).
  DATA_LOSS = 5,
  // Busy, starting, recovering, waiting for a version, or a [limits] quota full (the
  // message names it): retry after retry_after_ms.
  UNAVAILABLE = 6,
  // run_id, layout_hash or shard_index differ from the shard's: the caller's config or
  // directory is wrong. Do not retry.
  IDENTITY_MISMATCH = 7,
  // The pull's snapshot was released (too slow, or the shard restarted): pull again
  // from frame 0.
  SNAPSHOT_EXPIRED = 8,
  // A bug or an unexpected failure on the shard.
  INTERNAL = 9,
  // Push, first frame of an update: client_id is not a live member of the federation, or
  // client_epoch is above its membership epoch (an update made under an earlier membership
  // of the same name may be pushed again). Join (again); new updates use the new epoch.
  // (Added after version 1: older peers read it as INTERNAL.)
  NOT_MEMBER = 10,
}

exception ShardError {
  1: ErrorCode code,
  2: string message,
  // The shard's current version (STALE_REFUSED, SNAPSHOT_EXPIRED, UNAVAILABLE).
  3: optional i64 version,
  // UNAVAILABLE: wait at least this long before retrying.
  4: optional i64 retry_after_ms,
  // FENCED: the epoch this shard runs under.
  5: optional i64 epoch,
}

enum ShardState {
  STARTING = 1,    // loading its checkpoint
  RECOVERING = 2,  // replaying committed updates after its checkpoint
  SERVING = 3,
  DRAINING = 4,    // shutting down: finishes applies, refuses new pushes (UNAVAILABLE)
  HALTED = 5,      // stopped on an error it cannot repair (DATA_LOSS); operator needed
  FENCED = 6,      // its directory lease lapsed or another process owns it: answers FENCED
}

enum UpdateState {
  RECEIVING = 1,  // some frames in, not all
  STAGED = 2,     // all frames in, validated, stored durably; waiting for the commit
  COMMITTED = 3,  // committed (has a seq), not yet applied by this shard
  APPLIED = 4,    // applied by this shard (version >= seq)
  SKIPPED = 5,    // committed, but too stale when its turn came; skipped by every shard
}

// Sent with every request except status(). The shard checks it before anything else.
struct RequestHeader {
  1: string run_id,
  // Hex sha256 of the flat parameter layout (model preset, shapes, order, partition).
  2: string layout_hash,
  // The shard the caller means to talk to.
  3: i32 shard_index,
  // The shard's epoch as the caller read it from the shard directory; 0: not checked
  // (read-only tools).
  4: i64 shard_epoch,
  // Client id or tool name, for logs and metrics only.
  5: string caller,
}

struct ShardStatus {
  1: i32 protocol_version,
  2: string run_id,
  3: string layout_hash,
  4: i32 shard_index,
  5: i32 num_shards,
  // Fencing epoch of this shard's ownership (from Redis when it took the shard).
  6: i64 epoch,
  7: ShardState state,
  // First flat element of this slice, and its length n.
  8: i64 slice_begin,
  9: i64 slice_elements,
  // Elements per frame, for pull and push alike.
  10: i64 frame_elements,
  // Codecs the shard can decode (push) and encode (pull), by name.
  11: list<string> codecs,
  // Highest global sequence number processed (applied or skipped).
  12: i64 version,
  // Highest committed sequence number the shard has seen in the commit log.
  13: i64 committed_seq,
  // Outer optimizer steps taken, and updates waiting in its buffer (FedBuff).
  14: i64 optimizer_steps,
  15: i32 buffered_updates,
  // Updates being received / staged and waiting for a commit.
  16: i32 receiving_updates,
  17: i32 staged_updates,
  // Version of the last durable checkpoint.
  18: i64 checkpoint_version,
  // Staleness above which updates are refused; -1: no limit.
  19: i64 max_staleness,
}

struct PullRequest {
  1: RequestHeader header,
  // Codec for the frames (one of ShardStatus.codecs); all frames of a pull use one.
  2: string codec,
  3: i64 frame_index,
  // Absent on the first request: the shard pins a snapshot of its current version and
  // answers with it. Then set to that version for every further frame.
  4: optional i64 version,
  // With version absent: wait (at most wait_ms, capped by the shard) until the shard's
  // version is >= min_version; UNAVAILABLE if it does not get there in time.
  5: optional i64 min_version,
  6: optional i32 wait_ms,
}

struct PullResponse {
  // The version every frame of this pull reflects.
  1: i64 version,
  2: i64 frame_index,
  3: i64 total_frames,
  4: i64 frame_elements,
  5: i64 slice_elements,
  6: string codec,
  // The encoded frame: element range [frame_index * frame_elements, ...), see above.
  7: binary frame,
  // The snapshot is kept at least this long after this response if nothing else pulls it.
  8: i64 snapshot_ttl_ms,
}

struct PushRequest {
  1: RequestHeader header,
  // Unique per update across the run ("<client_id>/<client_epoch>/<counter>"); the same
  // id on every shard's slice of one update.
  2: string update_id,
  3: string client_id,
  // The client's membership epoch (its registration in Redis); a restarted client
  // registers again and gets a new one.
  4: i64 client_epoch,
  // The lowest version among the slices the client pulled for this training cycle; the
  // same value in every shard's push of this update, so every shard computes the same
  // staleness and weight.
  5: i64 base_version,
  // Training tokens and local steps behind this update (weighting, metrics).
  6: i64 tokens,
  7: i64 local_steps,
  8: string codec,
  9: i64 frame_index,
  10: i64 total_frames,
  // Echo of ShardStatus.frame_elements; a mismatch is BAD_REQUEST.
  11: i64 frame_elements,
  12: binary frame,
}

struct PushResponse {
  1: UpdateState state,
  2: i64 frames_received,
  3: i64 total_frames,
  // The shard's current version.
  4: i64 version,
  // COMMITTED, APPLIED, SKIPPED: the update's global sequence number.
  5: optional i64 seq,
  // STAGED: the staged slice expires this many ms from now unless committed.
  6: optional i64 stage_ttl_ms,
  // RECEIVING, answering the frame with the highest index: frames still missing.
  7: optional list<i64> missing_frames,
}

struct CommitNotice {
  1: RequestHeader header,
  2: string update_id,
  // The sequence number the registry gave the update. A hint: the shard reads the
  // commit log in Redis itself and never applies on the caller's word.
  3: i64 seq,
}

struct CheckpointRequest {
  1: RequestHeader header,
  // Why (logged): "operator", "shutdown", ...
  2: string reason,
}

struct CheckpointResponse {
  1: i64 version,
  2: i64 optimizer_steps,
  // The checkpoint folder on the shard's host.
  3: string path,
  4: i64 duration_ms,
}

service Shard {
  // Identity, position and load; cheap, no header (tools, health checks).
  ShardStatus status() throws (1: ShardError error),

  // One frame of a version snapshot of the slice.
  PullResponse pull(1: PullRequest request) throws (1: ShardError error),

  // One frame of an update's slice; stages the update when its last frame arrives.
  // Resending a frame is safe: it is acknowledged again with the update's state.
  PushResponse push(1: PushRequest request) throws (1: ShardError error),

  // Nudge: the update was committed with this seq; read the commit log now.
  // NOT_STAGED when this shard has no staged slice for it.
  void commit_notify(1: CommitNotice notice) throws (1: ShardError error),

  // Write a checkpoint now (slice, optimizer state, version) and return when durable.
  CheckpointResponse checkpoint(1: CheckpointRequest request) throws (1: ShardError error),
}
