// SnapshotStore: the shard's slice and the versions of it that pulls read, sharing memory.
//
// What it owns
//   * the master buffer: the fp32 slice at the newest version, which the apply thread
//     updates IN PLACE (the outer optimizer steps it directly);
//   * the current snapshot: the newest published version, read by pulls. When no pull pins
//     it, it is the master buffer itself (no copy at all);
//   * older snapshots pinned by pulls under way: version -> buffer, at most
//     max_pinned_snapshots (the least recently pulled go first);
//   * one spare buffer: a released snapshot's, kept for the next copy (a fresh 2.7 GB
//     buffer costs ~1 s of zeroing and page faults, measured at 1.3b);
//   * per snapshot and codec, its frames, encoded once on the first pull that needs them.
//
// Pins: each pull (by its caller's name) pins the snapshot it reads from its first frame
// request until snapshot_ttl_ms after its latest one, and only kFinishedPullGraceUs after
// its last frame: a finished pull releases its version at once, an abandoned one after the
// TTL. A snapshot no pull pins is dropped.
//
// Copy on write: before the apply thread writes version v+1 (BeginWrite), a current
// snapshot v that a pull pins (or that shares the master with a pinned older one) keeps the
// buffer it has, and the master becomes a copy of it (into the spare when there is one); an
// unpinned one is written in place, with pulls of the current version waiting until v+1
// is published (Publish). So a slice is copied at most once per version, and only for
// versions being pulled; an apply of a version nobody reads copies nothing.
//
// The copy runs on copy_threads threads (16 MiB pieces).
//
// Memory (fp32 slice buffers): 1 (master) + 1 spare + the snapshots pulls pin (<= 1 +
// max_pinned); a dropped snapshot is freed when its last in-flight pull ends. Encoded
// frames add, per kept snapshot and codec pulled, its encoded size (fp32 about 1x, bf16
// about 0.5x, int8 about 0.26x of the slice).
//
// Threads: the apply thread calls Reset / BeginWrite / Publish / master() / Hold; RPC
// threads call Pin and Frame; the checkpoint thread reads a held snapshot's Values. mu_
// guards the snapshot map, the pins, the spare and the current pointer; a cache cell's own
// mutex guards one encoding (so two codecs or two snapshots encode in parallel). master()
// and the span from BeginWrite are the apply thread's alone.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/env.h"
#include "common/status.h"
#include "compression/codec.h"
#include "compression/thread_pool.h"

namespace fedps {

class SnapshotStore {
 public:
  struct Options {
    int64_t slice_elements = 0;
    int64_t total_frames = 0;
    int64_t snapshot_ttl_ms = 0;
    int max_pinned_snapshots = 4;
    // Threads of the copy-on-write copy (a memory-bound loop over the whole slice);
    // 0: the machine's hardware concurrency.
    int copy_threads = 0;
  };
  struct Snapshot;  // opaque to callers

  // `codecs` encode pulls (one per kind; thread-safe).
  SnapshotStore(Options options, std::map<CodecKind, std::unique_ptr<Codec>> codecs, Clock* clock);
  ~SnapshotStore();

  // ---- apply thread
  // The slice at `version` becomes master and current (Start, after a load or init).
  void Reset(int64_t version, std::vector<float> slice);
  // The master: the newest state (for checkpoints).
  std::span<const float> master() const;
  // The master, writable, for applying the next version in place (see the file comment).
  std::span<float> BeginWrite();
  // Publishes the master as `version` (after BeginWrite, or alone for a skipped update).
  void Publish(int64_t version);

  // ---- RPC threads
  struct PinResult {
    std::shared_ptr<Snapshot> snapshot;  // null: `version` is no longer kept
    int64_t version = 0;                 // the snapshot's, or the current version when null
  };
  // The snapshot that `puller`'s request for frame `frame_index` reads: `version`
  // (continuing a pull) or the current one. Pins it for that pull (see the file comment);
  // waits (bounded by the apply of one update) while current is written in place.
  PinResult Pin(std::optional<int64_t> version, const std::string& puller, int64_t frame_index);
  // Frame `index` of `snapshot` in codec `kind` (encodes the snapshot once per codec).
  StatusOr<std::string> Frame(const std::shared_ptr<Snapshot>& snapshot, CodecKind kind, int64_t index);
  // The current snapshot, held without counting as a pull (a background checkpoint keeps
  // its version's buffer this way: while it is held, BeginWrite copies); and its values.
  std::shared_ptr<Snapshot> Hold();
  static std::span<const float> Values(const Snapshot& snapshot);
  // A copy of the current snapshot (tests and tools).
  std::pair<int64_t, std::vector<float>> CopyCurrent();
  // Older snapshots kept, and whether a spare buffer is kept (tests).
  int pinned_count();
  bool has_spare();

  // How long a pull's pin outlives its last frame (a lost reply asks for it again).
  static constexpr int64_t kFinishedPullGraceUs = 1'000'000;

 private:
  // Whether a pull still pins `s` (drops the pins that ended).
  bool PinnedLocked(Snapshot& s, int64_t now_us) const;
  // Drops older snapshots no pull pins, or over the cap (least recently pulled first); the
  // buffer of a dropped one that nobody else holds becomes the spare, when there is none.
  void ExpireLocked(int64_t now_us);

  const Options options_;
  const std::map<CodecKind, std::unique_ptr<Codec>> codecs_;
  Clock* const clock_;
  ThreadPool copy_pool_;                        // the copy-on-write copy (apply thread)
  std::shared_ptr<std::vector<float>> master_;  // apply thread; the pointer is read under mu_
  std::shared_ptr<std::vector<float>> spare_;   // under mu_: a free slice buffer for the next copy

  std::mutex mu_;
  std::condition_variable published_;  // with mu_: writing_ went false
  bool writing_ = false;               // master_ is current and being written in place
  std::shared_ptr<Snapshot> current_;
  std::map<int64_t, std::shared_ptr<Snapshot>> older_;
};

}  // namespace fedps
