// ScopedRedisServer: a private redis-server for one test.
//
// It listens on 127.0.0.1 on a free port, keeps its files (log, AOF) in its own
// ScopedTempDir, and is killed, reaped and removed with the object. Start() returns
// once the server answers PING (and is done loading its data), so a test can use it
// at once. Stop() is a crash (SIGKILL: no shutdown save); with `persistence` on, every
// write was fsynced to the append-only file before it was acknowledged
// (appendfsync always), so Start() after Stop() comes back with the same data on the
// same port. Without persistence (the default, `--save ""`) a restart starts empty.
//
// Thread safety: one thread drives a ScopedRedisServer; any number of threads may talk
// to the server itself.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "common/status.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_dir.h"

namespace fedps::testing {

struct RedisServerOptions {
  // appendonly yes + appendfsync always in dir(): data survives Stop()/Restart().
  // Default off: --save "" and no AOF, nothing written to disk.
  bool persistence = false;
  // requirepass; clients must AUTH. Default: none.
  std::string password;
  // Appended to the command line, e.g. {"--maxmemory", "10mb"}. Default: none.
  std::vector<std::string> extra_args;
  // How long Start() waits for PING to answer. Default 10 s.
  std::chrono::milliseconds start_timeout{10000};
  // The server binary, searched in PATH. Default "redis-server".
  std::string executable = "redis-server";
};

class ScopedRedisServer {
 public:
  explicit ScopedRedisServer(RedisServerOptions options = {});
  ~ScopedRedisServer();  // kills the server; the temp dir removes its files
  ScopedRedisServer(const ScopedRedisServer&) = delete;
  ScopedRedisServer& operator=(const ScopedRedisServer&) = delete;

  // Starts the server and waits until it answers PING. The first start picks a free
  // port (and retries with another if the port was taken meanwhile); later starts reuse
  // it. kFailedPrecondition when already running; kUnavailable with the tail of the
  // server's log when it does not come up.
  Status Start();
  // SIGKILL and reap (a crash). OK when not running.
  Status Stop();
  // Stop() then Start(): same port, same folder.
  Status Restart();

  bool running() { return process_.running(); }
  const std::string& host() const { return host_; }
  int port() const { return port_; }
  const std::string& password() const { return options_.password; }
  const std::string& dir() const { return dir_.path(); }
  std::string log_path() const { return dir_.File("redis-server.log"); }
  // Sends one command (AUTH first when there is a password) on a fresh connection and
  // returns the reply as text: a string or status as is, an integer in decimal, nil as "",
  // an array as its elements' texts joined by '\n'. An error reply is kInternal.
  StatusOr<std::string> Command(const std::vector<std::string>& argv);
  // The server process itself, e.g. to Stop()/Continue() it (a hung Redis).
  ScopedProcess& process() { return process_; }

 private:
  Status StartOnce(bool* port_clash);
  Status WaitUntilReady();

  RedisServerOptions options_;
  ScopedTempDir dir_;
  std::string host_ = "127.0.0.1";
  int port_ = 0;
  ScopedProcess process_;
};

}  // namespace fedps::testing
