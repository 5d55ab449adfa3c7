// StagedStore: the shard's durable staged updates, kept as received.
//
// What it owns: the folder <dir>/staged/, one file per staged update,
// <sha256(update_id)[0:32]>.safetensors, holding the update's frames exactly as the
// client sent them (tensors "frame.<i>", U8) and metadata (format, update id, the client
// that pushed it, the stage record: base_version / tokens / local_steps, the shard's slice,
// and every frame's own checksum, so that a resend can be compared with what is staged
// without reading the frames back; a file written before the checksums were kept has them
// read from its frames' headers when indexed). No checksum of its own:
// every codec frame carries a 64-bit checksum over its header and payload
// (compression/codec.h), checked when the frames are decoded at apply, so a flipped bit
// anywhere in the data is caught there; a damaged header is caught when parsing.
// Files are written atomically (temporary file, fsync, rename; WriteSafetensors) BEFORE
// the stage record goes to Redis, and double as the log of applied updates (ShardCore
// deletes one when the oldest kept checkpoint covers it, or when its stage expired).
//
// Threads: stateless besides the folder's name; any thread. RPC threads write (a completed
// push), the apply thread reads, lists and removes. One update's file is written by one
// thread at a time (ShardCore's receiving entry has a single stager).
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/env.h"
#include "common/status.h"

namespace fedps {

// A staged update as stored.
struct StagedUpdate {
  std::string update_id;
  std::string client_id;             // "" in files written before it was kept
  nlohmann::json record;             // {"base_version", "tokens", "local_steps"}
  std::vector<std::string> frames;   // in frame order, as received (Read only)
  std::vector<uint64_t> checksums;   // each frame's header checksum, in frame order
  int64_t bytes = 0;                 // the frames' total size
};

class StagedStore {
 public:
  struct Slice {
    int shard_index = 0;
    int64_t slice_begin = 0;
    int64_t slice_elements = 0;
  };
  StagedStore(std::string dir, Slice slice, Env* env);

  // Creates the folder.
  Status Init();
  std::string Path(const std::string& update_id) const;
  // Durable and atomic; `frames` are written as given, `checksums[i]` is frame i's header
  // checksum (kept in the metadata).
  Status Write(const std::string& update_id, const std::string& client_id, const nlohmann::json& record,
               const std::vector<std::string>& frames, const std::vector<uint64_t>& checksums);
  // DataLoss when the file is missing, unreadable, of another update or another slice.
  // The frames' own checksums are checked by whoever decodes them.
  StatusOr<StagedUpdate> Read(const std::string& update_id) const;
  // The updates on disk (frames not loaded, checksums and bytes known). Removes unfinished writes; logs and skips
  // files whose header is unreadable (kept: applying their update, if committed, halts
  // the shard with the reason).
  StatusOr<std::vector<StagedUpdate>> Index() const;
  void Remove(const std::string& update_id) const;

 private:
  const std::string dir_;
  const Slice slice_;
  Env* const env_;
};

}  // namespace fedps
