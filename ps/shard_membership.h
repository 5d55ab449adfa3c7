// ShardMembership: a shard process's entry in the registry's shard directory, kept alive
// across Redis outages (docs/fault-tolerance.md, "Self-healing membership").
//
//   * Start() registers the shard (Registry::RegisterShard: a new epoch, fencing any older
//     process of the index) and hands the epoch to the core.
//   * A heartbeat thread refreshes the lease every lease/5 with the core's stats. A beat
//     that fails with kUnavailable is retried at once: the failed call dropped the dead
//     connection and the retry reconnects (a restarted Redis answers within the beat).
//   * A beat answered kAborted (the lease lapsed: Redis was away longer than the lease, or
//     restarted) fences the core and reclaims the index (Registry::ReclaimShard): when no
//     other live process holds it, the shard registers again with a new, larger epoch,
//     checks the registry's log at its version (head, entry there) and un-fences (ShardCore::Resume; a
//     registry that went back in time halts the shard with DATA_LOSS instead), logging
//     one line; the registry emits "shard_reregistered". While Redis stays away the
//     reclaim is retried every beat.
//   * After each beat (which reports the shard's oldest kept checkpoint) it trims the commit
//     log below the oldest checkpoint every shard keeps (Registry::TrimLog).
//   * When another live process owns the index, the core stays fenced and lost() reports
//     it; fedps-shard then exits non-zero rather than linger.
//
// Threads: Start() and Stop() on the owner's thread; the heartbeat thread owns registry_
// and the epoch changes (epoch() is an atomic read). The ShardCore must outlive this.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "common/status.h"
#include "ps/registry.h"
#include "ps/shard_core.h"

namespace fedps {

struct ShardMembershipOptions {
  int64_t lease_ms = 5000;   // ps.shard_lease_ms: the directory lease
  RegistryOptions registry;  // the heartbeat's own connection
};

class ShardMembership {
 public:
  ShardMembership(ShardCore* core, ShardInfo info, ShardMembershipOptions options);
  ~ShardMembership();  // Stop()
  ShardMembership(const ShardMembership&) = delete;
  ShardMembership& operator=(const ShardMembership&) = delete;

  // Connects, registers (epoch -> core) and starts heartbeating. kUnavailable when Redis
  // cannot be reached.
  Status Start();
  // Stops heartbeating (idempotent).
  void Stop();

  int64_t epoch() const { return epoch_.load(); }
  // Set once another live process owns the shard (this process stays fenced); else OK.
  Status lost() const;

 private:
  void HeartbeatLoop();
  // Beats once; an I/O failure is retried at once on a fresh connection.
  Status Beat();
  // Trims the commit log below every shard's oldest kept checkpoint (Registry::TrimLog, at
  // most kTrimBatch entries a beat).
  void Trim();
  static constexpr int64_t kTrimBatch = 1000;
  // The lease lapsed (`why`): fence, register again unless another process owns the index.
  void Reclaim(const Status& why);
  // After a reclaim: un-fence the core at the new epoch (or halt it on a registry behind it).
  void Resume();

  ShardCore* const core_;
  const ShardInfo info_;
  const ShardMembershipOptions options_;
  std::unique_ptr<Registry> registry_;  // heartbeat thread (after Start)
  std::atomic<int64_t> epoch_{0};
  int64_t lapsed_epoch_ = 0;  // heartbeat thread: the epoch whose lease lapsed, until reclaimed
  bool resumed_ = true;       // heartbeat thread: false between a reclaim and the core's Resume
  std::thread heartbeat_thread_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;  // guarded by mu_
  Status lost_;        // guarded by mu_
};

}  // namespace fedps
