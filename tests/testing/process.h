// Child processes for integration tests, and the small helpers that go with them.
//
// ScopedProcess owns one child started with fork + exec. It never outlives the test:
//   * the destructor sends SIGKILL to the child's process group and reaps the child;
//   * the child asks the kernel for PR_SET_PDEATHSIG(SIGKILL), so it is killed when the
//     thread that started it dies, even if the test process is killed with SIGKILL and
//     no destructor runs. (Linux ties the death signal to the *thread* that forked:
//     start children from a thread that outlives them, such as the test's main thread.)
//   * each child leads its own process group, so Kill() and the destructor also take
//     down whatever the child itself started (redis-server's AOF-rewrite child, a
//     shell's `sleep`).
// The child's stdin is /dev/null; stdout and stderr go to a log file when one is given
// (a failing test can print its tail with ReadLogTail).
//
// Waiting is condition-based: WaitFor polls a predicate until it holds or a deadline
// passes. Tests never sleep a fixed time hoping something happened meanwhile.
//
// Thread safety: a ScopedProcess is used by one thread at a time.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace fedps::testing {

// How a child ended.
struct ExitStatus {
  int code = -1;   // exit code when it exited normally; -1 when a signal ended it
  int signal = 0;  // the signal that ended it; 0 when it exited normally

  bool exited() const { return signal == 0; }
  bool success() const { return signal == 0 && code == 0; }
  std::string ToString() const;  // "exit code 3" or "signal 9 (Killed)"
};

struct ProcessOptions {
  // argv[0] is the program: searched in PATH when it has no '/'. Required.
  std::vector<std::string> argv;
  // Variables added to (or replacing those of) this process's environment. Default: none.
  std::map<std::string, std::string> env;
  // The child's working folder. Default: this process's.
  std::string working_dir;
  // stdout and stderr are appended to this file (created if absent). Default: inherited.
  std::string log_path;
};

class ScopedProcess {
 public:
  // Starts the child. Fails with kNotFound when the program does not exist, kInternal
  // when exec fails otherwise; the reason names the program and the errno.
  static StatusOr<ScopedProcess> Start(const ProcessOptions& options);

  ScopedProcess() = default;  // holds no process
  ~ScopedProcess();           // Kill()
  ScopedProcess(ScopedProcess&& other) noexcept;
  ScopedProcess& operator=(ScopedProcess&& other) noexcept;
  ScopedProcess(const ScopedProcess&) = delete;
  ScopedProcess& operator=(const ScopedProcess&) = delete;

  // The child's pid; -1 when none was started. Stays valid after the child was reaped.
  pid_t pid() const { return pid_; }
  const std::string& log_path() const { return log_path_; }

  // True while the child has not exited. Reaps it (without blocking) when it has.
  bool running();
  // The exit status once the child was reaped.
  const std::optional<ExitStatus>& exit_status() const { return exit_status_; }

  // Sends `sig` to the child. kFailedPrecondition when it already exited.
  Status Signal(int sig);
  Status Stop() { return Signal(SIGSTOP); }      // SIGSTOP: freeze it
  Status Continue() { return Signal(SIGCONT); }  // SIGCONT: let it run again
  // SIGKILL to the child's process group, then reap. OK when it already exited.
  Status Kill();
  // SIGTERM (and SIGCONT, in case it is stopped); SIGKILL to the group after `grace`.
  // Returns how it ended.
  StatusOr<ExitStatus> Terminate(std::chrono::milliseconds grace);
  // Waits for the child to exit; kDeadlineExceeded when it is still running at `timeout`.
  StatusOr<ExitStatus> Wait(std::chrono::milliseconds timeout);

 private:
  // Non-blocking reap; true when the child has been reaped (now or before).
  bool TryReap();
  void BlockingReap();

  pid_t pid_ = -1;
  bool reaped_ = false;
  std::optional<ExitStatus> exit_status_;
  std::string log_path_;
};

// Runs argv (in `cwd` when not empty) with stdout and stderr to `log` and waits up to
// `timeout` for it to end; kDeadlineExceeded (the process is killed) when it runs longer.
StatusOr<ExitStatus> RunLogged(const std::vector<std::string>& argv, const std::string& log,
                               const std::string& cwd, std::chrono::milliseconds timeout);

// Runs `shell_command` with /bin/sh (popen), appends what it writes to stdout to `out`
// and returns its exit code (-1 when it did not exit normally or could not start).
int RunShellCapturing(const std::string& shell_command, std::string* out);

// A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close).
// Another process may take it before the caller binds it; starters retry on a clash.
StatusOr<int> PickFreePort();

// Polls `condition` every `poll` until it returns true (-> true) or `timeout` passed
// (-> false). The condition is checked once more at the deadline.
bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
             std::chrono::milliseconds poll = std::chrono::milliseconds(10));

// The last `max_bytes` of a file (for failure messages); "" when it cannot be read.
std::string ReadLogTail(const std::string& path, size_t max_bytes = 4096);

// True when `pid` no longer names a live process (absent, or a zombie).
bool ProcessGone(pid_t pid);

}  // namespace fedps::testing
