// StagedStore: the shard's durable staged updates, kept as received.
//
// What it owns: the folder <dir>/staged/, one file per staged update,
// <sha256(update_id)[0:32]>.safetensors, holding the update's frames exactly as the
// client sent them (tensors "frame.<i>", U8) and metadata (format, update id, the client
// that pushed it, the stage record: base_version / tokens / local_steps, the shard's slice,
// the sum of the squares of its values for the norm bound (ps/norm_bound.h), and every
// frame's own checksum, so that a resend can be compared with what is staged
// without reading the frames back; a file written before the checksums were kept has them
// read from its frames' headers when indexed). No checksum of its own:
// every codec frame carries a 64-bit checksum over its header and payload
// (compression/codec.h), checked when the frames are decoded at apply, so a flipped bit
// anywhere in the data is caught there; a damaged header is caught when parsing.
// A file is written while its update is received: Begin opens a temporary file beside its
// final name, each frame is written to it as it arrives (StagedWriter::AddFrame, from the
// receiving threads, in any order), and Finish writes the metadata, fsyncs and renames it
// (SafetensorsAppender), BEFORE the stage record goes to Redis; an update dropped before
// its last frame takes its temporary file with it (and a restart removes any left over), and double as the log of applied updates (ShardCore
// deletes one when the oldest kept checkpoint covers it, or when its stage expired).
//
// Threads: stateless besides the folder's name; any thread. RPC threads write (a push's
// frames, then its stager Finishes), the apply thread reads, lists and removes.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <string_view>
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
  double sum_squares = -1;           // of its values, as checked on arrival; -1: not kept (older file)
};

class SafetensorsAppender;

// One update's staged file being written (StagedStore::Begin). Thread-safe.
class StagedWriter {
 public:
  ~StagedWriter();
  // Writes frame `index` (each index once, any order, from any thread).
  Status AddFrame(int64_t index, std::string_view frame);
  // Every frame added: the metadata (with each frame's checksum, in frame order, and the
  // sum of the squares of the update's values), fsync, rename. The file is then durable
  // and what StagedStore::Read returns.
  Status Finish(const std::vector<uint64_t>& checksums, double sum_squares);

 private:
  friend class StagedStore;
  StagedWriter(std::unique_ptr<SafetensorsAppender> file, std::map<std::string, std::string> metadata, int64_t frames);

  std::unique_ptr<SafetensorsAppender> file_;
  std::map<std::string, std::string> metadata_;  // all but the checksums
  const int64_t frames_;
  std::atomic<int64_t> added_{0};
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
  // Starts the file of an update of `frames` frames (see the file comment); nothing is
  // visible under Path(update_id) until the writer's Finish.
  StatusOr<std::unique_ptr<StagedWriter>> Begin(const std::string& update_id, const std::string& client_id,
                                                const nlohmann::json& record, int64_t frames) const;
  // DataLoss when the file is missing, unreadable, of another update or another slice.
  // The frames' own checksums are checked by whoever decodes them.
  StatusOr<StagedUpdate> Read(const std::string& update_id) const;
  // The updates on disk (frames not loaded, checksums and bytes known). Removes unfinished writes; logs and skips
  // files whose header is unreadable (kept: applying their update, if committed, halts
  // the shard with the reason).
  StatusOr<std::vector<StagedUpdate>> Index() const;
  void Remove(const std::string& update_id) const;
  // Frees the update's name at once (a rename to an unfinished-write name, which Index
  // removes after a crash) and returns the path its bytes moved to, for Discard. Called
  // under the shard's lock when an expired update is dropped, so that a push of the same id
  // arriving later stages under the name and a slow delete cannot remove the new file.
  std::string Detach(const std::string& update_id) const;
  void Discard(const std::string& detached_path) const;

 private:
  const std::string dir_;
  const Slice slice_;
  Env* const env_;
};

}  // namespace fedps
