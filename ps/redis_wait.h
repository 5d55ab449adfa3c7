// Waiting for Redis: processes that start (or join) while the registry is away wait for it
// with a progress line instead of giving up (docs/fault-tolerance.md, "Timeouts").
//
// WaitForRedis calls `attempt` until it returns anything but kUnavailable (Redis cannot be
// reached, or answers LOADING while it replays its append-only file), sleeping 200 ms,
// doubling to 2 s, in between. Every 5 s it logs one line
//   waiting for Redis at HOST:PORT (N s): <the last error>
// After `max_wait` (0: forever) it gives up with kUnavailable naming the endpoint, how long
// it waited and the option (ps.redis_wait_ms) that set the limit. `stopping` (may be null)
// is polled while sleeping: true ends the wait with kAborted.
//
// Threads: any; it blocks the calling thread. Clock: std::chrono::steady_clock.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "common/status.h"
#include "ps/registry.h"

namespace fedps {

Status WaitForRedis(const std::string& endpoint, std::chrono::milliseconds max_wait,
                    const std::function<Status()>& attempt, const std::function<bool()>& stopping = nullptr);

// Registry::Connect through WaitForRedis.
StatusOr<std::unique_ptr<Registry>> ConnectWaitingForRedis(const RegistryOptions& options,
                                                           std::chrono::milliseconds max_wait,
                                                           const std::function<bool()>& stopping = nullptr);

}  // namespace fedps
