// The shard shard_fuzz runs, as its seeds (seeds.cc) must address it: run, layout, the
// live member and both epochs (what the first registrations get in a fresh Redis), the slice and
// frame sizes and the request size limit.
#pragma once

#include <cstdint>

namespace fedps::shard_fuzz {

inline constexpr const char* kRunId = "fuzz";
inline constexpr const char* kLayoutHash = "fuzz-layout";
inline constexpr const char* kMember = "fuzz";
inline constexpr int64_t kMemberEpoch = 1;
inline constexpr int64_t kShardEpoch = 2;
inline constexpr int64_t kSliceElements = 2048;
inline constexpr int64_t kFrameElements = 1024;
inline constexpr int64_t kMaxMessageBytes = 16384;

}  // namespace fedps::shard_fuzz
