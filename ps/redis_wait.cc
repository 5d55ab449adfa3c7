// WaitForRedis: see the header.
#include "ps/redis_wait.h"

#include <glog/logging.h>

#include <algorithm>
#include <thread>

namespace fedps {

namespace {
constexpr const char* kStoppedWhileWaiting = "stopped while waiting for Redis at ";
}  // namespace

bool StoppedWhileWaiting(const Status& s) {
  return s.code() == StatusCode::kAborted &&
         s.message().find(kStoppedWhileWaiting) != std::string::npos;
}

Status WaitForRedis(const std::string& endpoint, std::chrono::milliseconds max_wait,
                    const std::function<Status()>& attempt, const std::function<bool()>& stopping) {
  using Clock = std::chrono::steady_clock;
  constexpr auto kProgressEvery = std::chrono::seconds(5);
  const auto start = Clock::now();
  auto next_progress = start;
  auto delay = std::chrono::milliseconds(200);
  for (;;) {
    Status s = attempt();
    if (s.code() != StatusCode::kUnavailable) return s;
    const auto now = Clock::now();
    const auto waited_s = std::chrono::duration_cast<std::chrono::seconds>(now - start).count();
    if (max_wait.count() > 0 && now - start >= max_wait) {
      return Unavailable("Redis at " + endpoint + " unreachable for " + std::to_string(waited_s) +
                         " s (ps.redis_wait_ms = " + std::to_string(max_wait.count()) + "): " + s.message());
    }
    if (now >= next_progress) {
      LOG(WARNING) << "waiting for Redis at " << endpoint << " (" << waited_s << " s): " << s.message();
      next_progress = now + kProgressEvery;
    }
    auto until = now + delay;
    if (max_wait.count() > 0) until = std::min(until, start + max_wait);
    while (Clock::now() < until) {
      if (stopping && stopping()) return Aborted(std::string(kStoppedWhileWaiting) + endpoint);
      std::this_thread::sleep_for(std::min<Clock::duration>(until - Clock::now(), std::chrono::milliseconds(50)));
    }
    delay = std::min(delay * 2, std::chrono::milliseconds(500));
  }
}

StatusOr<std::unique_ptr<Registry>> ConnectWaitingForRedis(const RegistryOptions& options,
                                                           std::chrono::milliseconds max_wait,
                                                           const std::function<bool()>& stopping) {
  std::unique_ptr<Registry> registry;
  Status s = WaitForRedis(
      options.host + ":" + std::to_string(options.port), max_wait,
      [&]() -> Status {
        auto r = Registry::Connect(options);
        if (!r.ok()) return r.status();
        registry = std::move(r).value();
        return Status::Ok();
      },
      stopping);
  if (!s.ok()) return s;
  return registry;
}

}  // namespace fedps
