// ReceiveTable: the updates a shard is receiving, frame by frame, before they are staged.
//
// What it owns: update_id -> ReceivingUpdate, each holding which frames were received so
// far, their checksums, the update's scalars and the writer of its staged file, to which
// every frame goes as it arrives (StagedStore::Begin): a receiving update holds no frame in
// memory beyond the one being written, and its disk use is bounded by the encoded size of
// one slice, the table by `max_updates` entries. Nothing is kept for a frame before it has
// passed CheckFrame (placement, checksum, payload, finite values), so a staged update needs
// no decoding to be checked. An entry idle for the receive timeout is dropped with its
// temporary file (DropIdle, from the apply thread).
//
// Threads: the map is guarded by the OWNER's mutex (ShardCore::mu_), because an update
// moves between the receiving table and the staged map in one step under that lock; the
// methods say so. One entry's frames are guarded by its own `mu`: RPC threads add frames
// of one update concurrently (several connections, several frames in flight); a frame's
// bytes are written outside that lock. Lock order: owner's mutex, then entry mu.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"
#include "compression/codec.h"
#include "ps/staged_store.h"

namespace fedps {

struct ReceivingUpdate {
  // Immutable after creation.
  std::string update_id;
  std::string client_id;
  int64_t client_epoch = 0;
  int64_t base_version = 0;
  int64_t tokens = 0;
  int64_t local_steps = 0;
  int64_t total_frames = 0;
  std::unique_ptr<StagedWriter> file;  // thread-safe; where the frames go

  enum class Frame : uint8_t { kMissing, kWriting, kStored };
  std::mutex mu;                   // guards all below
  std::vector<Frame> frames;
  std::vector<uint64_t> checksum;  // of frames[i] once not kMissing
  int64_t received = 0;            // frames kStored
  int64_t bytes = 0;               // sum of the stored frames' sizes
  double sum_squares = 0;          // of the stored frames' values (CheckFrame): the update's norm^2 so far
  bool staging = false;            // a thread is staging it (frames are final)
  int64_t last_activity_us = 0;

  // Indexes of the frames not received yet, nor being written (locks mu).
  std::vector<int64_t> Missing();
};

// What one client holds in the table.
struct ReceiveUsage {
  int64_t updates = 0;
  int64_t bytes = 0;  // frames stored so far
};

// A frame that passed ReceiveTable::CheckFrame: its header and the sum of the squares of
// its values (Codec::CheckFrame), from which the shard knows the update's norm.
struct CheckedFrame {
  FrameHeader header;
  double sum_squares = 0;
};

// The outcome of adding one frame.
enum class FrameOutcome {
  kAdded,      // new frame stored
  kDuplicate,  // the same bytes were received before
  kConflict,   // this frame index was received before with other bytes
  kFailed,     // writing it failed: the update's file has a hole, drop the update
};

class ReceiveTable {
 public:
  explicit ReceiveTable(int max_updates) : max_updates_(max_updates) {}

  // Owner's mutex held for the five below.
  std::shared_ptr<ReceivingUpdate> Find(const std::string& update_id) const;
  bool Full() const { return static_cast<int>(map_.size()) >= max_updates_; }
  size_t size() const { return map_.size(); }
  // The entries of `client_id` and their bytes (locks each entry's mu).
  ReceiveUsage UsageOf(const std::string& client_id) const;
  // Inserts a new entry whose frames go to `file` (the caller checked Find and Full).
  std::shared_ptr<ReceivingUpdate> Create(const std::string& update_id, const std::string& client_id,
                                          int64_t client_epoch, int64_t base_version, int64_t tokens,
                                          int64_t local_steps, int64_t total_frames,
                                          std::unique_ptr<StagedWriter> file, int64_t now_us);
  void Erase(const std::string& update_id) { map_.erase(update_id); }
  // Drops entries idle longer than `timeout_us` that are not being staged; their ids.
  std::vector<std::string> DropIdle(int64_t now_us, int64_t timeout_us);

  // Checks `frame` as the `frame_index`-th of a slice of `slice_elements` values cut into
  // frames of `frame_elements`: covering exactly its range, and whatever `codec`'s
  // CheckFrame checks (header, checksum, payload, finite values) and the sum of the squares
  // of its values (computed in that check's scan). InvalidArgument when the frame belongs
  // elsewhere or holds NaN / Inf, DataLoss when its bytes are damaged. Reads only the
  // frame; any thread, no lock.
  static StatusOr<CheckedFrame> CheckFrame(Codec& codec, std::string_view frame, int64_t frame_index,
                                           int64_t frame_elements, int64_t slice_elements);
  // Writes a checked frame to r's file and marks it stored, adding its sum of squares to
  // r's (locks r.mu; the write happens outside it). On kFailed, `write_error` says why.
  static FrameOutcome AcceptFrame(ReceivingUpdate& r, int64_t frame_index, std::string_view frame,
                                  const CheckedFrame& checked, int64_t now_us, Status* write_error);

 private:
  const int max_updates_;
  std::map<std::string, std::shared_ptr<ReceivingUpdate>> map_;
};

}  // namespace fedps
