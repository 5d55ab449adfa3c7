// UpdateDecoder: turns a staged update's frames into fp32 values, across all cores, in one
// reused scratch slice; and the apply and checkpoint threads of ShardCore (ps/applier.cc).
//
// A staged update is kept as the client's encoded frames (ps/staged_store.h). The apply
// thread decodes it here (Codec::DecodeAll: frames in parallel on a pool of
// hardware-concurrency threads, each frame's checksum checked before its payload is
// touched) into the scratch slice, and the outer optimizer steps the master slice in place
// from it (ps/snapshots.h). A push that completes an update is decoded here too, once,
// before it is staged, so that nothing undecodable or non-finite is ever staged (a commit
// of such an update would halt every shard). The scratch slice is allocated on first use
// and kept: shard RAM holds exactly one, whatever the update rate.
//
// Threads: Decode may be called from any thread; the scratch is held by one caller at a
// time (the returned Decoded keeps it locked until it is dropped). The apply thread and a
// stager therefore take turns; both are short next to the network and the disk.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "common/status.h"
#include "compression/codec.h"

namespace fedps {

class UpdateDecoder {
 public:
  // `threads` <= 0: the machine's hardware concurrency.
  static StatusOr<std::unique_ptr<UpdateDecoder>> Create(int64_t slice_elements, int64_t frame_elements, int threads);

  // The decoded values, valid (and the scratch held) while this object lives.
  class Decoded {
   public:
    std::span<const float> values() const { return values_; }

   private:
    friend class UpdateDecoder;
    Decoded(std::unique_lock<std::mutex> lock, std::span<const float> values)
        : lock_(std::move(lock)), values_(values) {}
    std::unique_lock<std::mutex> lock_;
    std::span<const float> values_;
  };

  // Checks that `frames` cover the slice exactly once and decodes them. DataLoss for
  // damaged bytes, InvalidArgument for frames that do not fit the slice.
  StatusOr<Decoded> Decode(const std::vector<std::string>& frames);
  int parallelism() const { return codec_->parallelism(); }

 private:
  UpdateDecoder(int64_t slice_elements, std::unique_ptr<Codec> codec)
      : slice_elements_(slice_elements), codec_(std::move(codec)) {}

  const int64_t slice_elements_;
  std::unique_ptr<Codec> codec_;
  std::mutex mu_;              // held by a Decoded
  std::vector<float> scratch_; // guarded by mu_
};

}  // namespace fedps
