// Waiting for Redis: processes that start (or join) while the registry is away wait for it
// with a progress line instead of giving up (docs/fault-tolerance.md, "Timeouts").
//
// WaitForRedis calls `attempt` until it returns anything but kUnavailable (Redis cannot be
// reached, or answers LOADING while it replays its append-only file), sleeping 200 ms,
// then 400 ms, then 500 ms in between (a refused connect costs nothing; a longer sleep
// would only delay the process once Redis is back). Every 5 s it logs one line
//   waiting for Redis at HOST:PORT (N s): <the last error>
// After `max_wait` (0: forever) it gives up with kUnavailable naming the endpoint, how long
// it waited and the option (ps.redis_wait_ms) that set the limit. `stopping` (may be null)
// is polled while sleeping: true ends the wait with kAborted (StoppedWhileWaiting).
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

// Whether `s` is WaitForRedis's answer to `stopping` (with any context added): the process
// was asked to stop before Redis came back, which is no failure of its own.
bool StoppedWhileWaiting(const Status& s);

// Registry::Connect through WaitForRedis.
StatusOr<std::unique_ptr<Registry>> ConnectWaitingForRedis(const RegistryOptions& options,
                                                           std::chrono::milliseconds max_wait,
                                                           const std::function<bool()>& stopping = nullptr);

}  // namespace fedps
