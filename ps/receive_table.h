// ReceiveTable: the updates a shard is receiving, frame by frame, before they are staged.
//
// What it owns: update_id -> ReceivingUpdate, each holding the frames received so far AS
// BYTES (checked, not decoded), their checksums and the update's scalars. Nothing is
// committed to an update before its first frame has passed the checks of AcceptFrame
// (placement, size within zstd's bound for the frame's values, checksum), and an update
// holds at most its own frames: the memory of one entry is bounded by the encoded size of
// one slice, the table by `max_updates` entries. An entry idle for the receive timeout is
// dropped with its frames (DropIdle, from the apply thread).
//
// Threads: the map is guarded by the OWNER's mutex (ShardCore::mu_), because an update
// moves between the receiving table and the staged map in one step under that lock; the
// methods say so. One entry's frames are guarded by its own `mu`: RPC threads add frames
// of one update concurrently (several connections, several frames in flight); the copy of
// a frame's bytes happens outside that lock. Lock order: owner's mutex, then entry mu.
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

  std::mutex mu;                   // guards all below
  std::vector<std::string> frames; // "" until received
  std::vector<uint64_t> checksum;  // of frames[i] when received
  int64_t received = 0;
  int64_t bytes = 0;               // sum of frames' sizes
  bool staging = false;            // a thread is staging it (frames are final)
  int64_t last_activity_us = 0;

  // Indexes of the frames not received yet (locks mu).
  std::vector<int64_t> Missing();
};

// What one client holds in the table.
struct ReceiveUsage {
  int64_t updates = 0;
  int64_t bytes = 0;  // frames received so far
};

// The outcome of adding one frame.
enum class FrameOutcome {
  kAdded,      // new frame stored
  kDuplicate,  // the same bytes were received before
  kConflict,   // this frame index was received before with other bytes
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
  // Inserts a new entry (the caller checked Find and Full).
  std::shared_ptr<ReceivingUpdate> Create(const std::string& update_id, const std::string& client_id,
                                          int64_t client_epoch, int64_t base_version, int64_t tokens,
                                          int64_t local_steps, int64_t total_frames, int64_t now_us);
  void Erase(const std::string& update_id) { map_.erase(update_id); }
  // Drops entries idle longer than `timeout_us` that are not being staged; their ids.
  std::vector<std::string> DropIdle(int64_t now_us, int64_t timeout_us);

  // Checks `frame` as the `frame_index`-th of a slice of `slice_elements` values cut into
  // frames of `frame_elements`: header sound, covering exactly its range, payload length
  // as declared, checksum. InvalidArgument when the frame belongs elsewhere, DataLoss when
  // its bytes are damaged. Reads only the frame; any thread, no lock.
  static StatusOr<FrameHeader> CheckFrame(std::string_view frame, int64_t frame_index, int64_t frame_elements,
                                          int64_t slice_elements);
  // Stores a checked frame in `r` (locks r.mu; the copy is made outside it).
  static FrameOutcome AcceptFrame(ReceivingUpdate& r, int64_t frame_index, std::string_view frame,
                                  uint64_t checksum, int64_t now_us);

 private:
  const int max_updates_;
  std::map<std::string, std::shared_ptr<ReceivingUpdate>> map_;
};

}  // namespace fedps
