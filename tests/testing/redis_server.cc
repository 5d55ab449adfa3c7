#include "tests/testing/redis_server.h"

#include <hiredis/hiredis.h>
#include <sys/time.h>

#include <memory>
#include <thread>
#include <utility>

namespace fedps::testing {
namespace {

using SteadyClock = std::chrono::steady_clock;

struct ContextFree {
  void operator()(redisContext* c) const { redisFree(c); }
};
struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ContextPtr = std::unique_ptr<redisContext, ContextFree>;
using ReplyPtr = std::unique_ptr<redisReply, ReplyFree>;

enum class Probe { kReady, kNotYet };

// One attempt to talk to the server: connect, AUTH, PING. kReady on PONG.
Probe ProbeOnce(const std::string& host, int port, const std::string& password) {
  timeval tv{0, 200 * 1000};
  ContextPtr c(redisConnectWithTimeout(host.c_str(), port, tv));
  if (!c || c->err) return Probe::kNotYet;
  redisSetTimeout(c.get(), tv);
  if (!password.empty()) {
    const char* argv[] = {"AUTH", password.c_str()};
    const size_t lens[] = {4, password.size()};
    ReplyPtr r(static_cast<redisReply*>(redisCommandArgv(c.get(), 2, argv, lens)));
    if (!r || r->type == REDIS_REPLY_ERROR) return Probe::kNotYet;
  }
  const char* argv[] = {"PING"};
  const size_t lens[] = {4};
  ReplyPtr r(static_cast<redisReply*>(redisCommandArgv(c.get(), 1, argv, lens)));
  // While loading its data the server answers "-LOADING ..." instead.
  if (r && r->type == REDIS_REPLY_STATUS && std::string(r->str, r->len) == "PONG") {
    return Probe::kReady;
  }
  return Probe::kNotYet;
}

std::string ReplyText(const redisReply* r) {
  switch (r->type) {
    case REDIS_REPLY_STRING:
    case REDIS_REPLY_STATUS:
      return std::string(r->str, r->len);
    case REDIS_REPLY_INTEGER:
      return std::to_string(r->integer);
    case REDIS_REPLY_ARRAY: {
      std::string out;
      for (size_t i = 0; i < r->elements; ++i) out += (i ? "\n" : "") + ReplyText(r->element[i]);
      return out;
    }
    default:
      return "";
  }
}

}  // namespace

StatusOr<std::string> ScopedRedisServer::Command(const std::vector<std::string>& argv) {
  timeval tv{5, 0};
  ContextPtr c(redisConnectWithTimeout(host_.c_str(), port_, tv));
  if (!c || c->err)
    return Unavailable("redis-server at port " + std::to_string(port_) + " does not answer");
  redisSetTimeout(c.get(), tv);
  auto send = [&](const std::vector<std::string>& args) -> StatusOr<std::string> {
    std::vector<const char*> ptrs;
    std::vector<size_t> lens;
    for (const auto& a : args) {
      ptrs.push_back(a.data());
      lens.push_back(a.size());
    }
    ReplyPtr r(static_cast<redisReply*>(
        redisCommandArgv(c.get(), static_cast<int>(args.size()), ptrs.data(), lens.data())));
    if (!r) return Unavailable("redis-server at port " + std::to_string(port_) + ": no reply");
    if (r->type == REDIS_REPLY_ERROR) return Internal("redis: " + std::string(r->str, r->len));
    return ReplyText(r.get());
  };
  if (!options_.password.empty()) {
    auto auth = send({"AUTH", options_.password});
    if (!auth.ok()) return auth.status();
  }
  return send(argv);
}

ScopedRedisServer::ScopedRedisServer(RedisServerOptions options) : options_(std::move(options)) {}

ScopedRedisServer::~ScopedRedisServer() { Stop().IgnoreError(); }

Status ScopedRedisServer::Start() {
  if (process_.pid() > 0 && process_.running()) {
    return FailedPrecondition("redis-server already running on port " + std::to_string(port_));
  }
  if (dir_.path().empty()) return Internal("ScopedRedisServer: no temp dir");
  if (port_ != 0) {
    bool clash = false;
    return StartOnce(&clash);
  }
  // First start: the port was free when picked, but another process may take it before
  // redis-server binds it. Then try another.
  Status last;
  for (int attempt = 0; attempt < 5; ++attempt) {
    ASSIGN_OR_RETURN(port_, PickFreePort());
    bool clash = false;
    last = StartOnce(&clash);
    if (last.ok() || !clash) return last;
  }
  port_ = 0;
  return last;
}

Status ScopedRedisServer::StartOnce(bool* port_clash) {
  std::vector<std::string> argv = {
      options_.executable,
      "--port",
      std::to_string(port_),
      "--bind",
      host_,
      "--dir",
      dir_.path(),
      "--daemonize",
      "no",
      "--save",
      "",
      "--logfile",
      "",  // to stdout, which is our log file
  };
  if (options_.persistence) {
    argv.insert(argv.end(), {"--appendonly", "yes", "--appendfsync", "always"});
  } else {
    argv.insert(argv.end(), {"--appendonly", "no"});
  }
  if (!options_.password.empty()) argv.insert(argv.end(), {"--requirepass", options_.password});
  argv.insert(argv.end(), options_.extra_args.begin(), options_.extra_args.end());

  ProcessOptions popts;
  popts.argv = std::move(argv);
  popts.working_dir = dir_.path();
  popts.log_path = log_path();
  auto started = ScopedProcess::Start(popts);
  if (!started.ok()) return started.status().WithContext("start redis-server");
  process_ = std::move(started).value();

  Status ready = WaitUntilReady();
  if (!ready.ok()) {
    *port_clash = ReadLogTail(log_path()).find("Address already in use") != std::string::npos;
    process_.Kill().IgnoreError();
  }
  return ready;
}

Status ScopedRedisServer::WaitUntilReady() {
  const auto deadline = SteadyClock::now() + options_.start_timeout;
  while (true) {
    if (!process_.running()) {
      return Unavailable("redis-server on port " + std::to_string(port_) + " exited (" +
                         process_.exit_status()->ToString() + "); log tail:\n" +
                         ReadLogTail(log_path()));
    }
    if (ProbeOnce(host_, port_, options_.password) == Probe::kReady) return Status::Ok();
    if (SteadyClock::now() >= deadline) {
      return Unavailable("redis-server on port " + std::to_string(port_) +
                         " did not answer PING in " +
                         std::to_string(options_.start_timeout.count()) + " ms; log tail:\n" +
                         ReadLogTail(log_path()));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

Status ScopedRedisServer::Stop() { return process_.Kill(); }

Status ScopedRedisServer::Restart() {
  RETURN_IF_ERROR(Stop());
  return Start();
}

}  // namespace fedps::testing
