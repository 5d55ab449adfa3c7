#include "tests/testing/process.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>
#include <utility>

extern char** environ;

namespace fedps::testing {
namespace {

using Millis = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

// What a child that failed before exec reports through the status pipe.
struct ChildFailure {
  int stage;  // kStage*
  int err;    // errno
};
constexpr int kStageChdir = 1;
constexpr int kStageExec = 2;

std::string ErrnoText(int err) { return std::string(std::strerror(err)); }

// Closes a file descriptor when it goes out of scope.
class ScopedFd {
 public:
  explicit ScopedFd(int fd = -1) : fd_(fd) {}
  ~ScopedFd() { Reset(); }
  ScopedFd(const ScopedFd&) = delete;
  ScopedFd& operator=(const ScopedFd&) = delete;
  int get() const { return fd_; }
  void Reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

ExitStatus FromWaitStatus(int status) {
  ExitStatus out;
  if (WIFEXITED(status)) {
    out.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    out.signal = WTERMSIG(status);
  }
  return out;
}

// Only async-signal-safe calls from here on: the parent may have other threads, and
// one of them may hold the allocator's lock at the moment of fork.
[[noreturn]] void RunChild(pid_t parent, int status_fd, int stdin_fd, int log_fd,
                           const char* working_dir, char* const* argv, char* const* envp) {
  ::setpgid(0, 0);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  // The parent may have died before prctl took effect; then nobody will kill us.
  if (::getppid() != parent) ::_exit(127);

  // Dispositions set to "ignore" survive exec (a parent that ignores SIGPIPE would
  // hand that to the child); start the child clean.
  struct sigaction dfl;
  std::memset(&dfl, 0, sizeof dfl);
  dfl.sa_handler = SIG_DFL;
  for (int sig : {SIGPIPE, SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGCHLD, SIGUSR1, SIGUSR2}) {
    ::sigaction(sig, &dfl, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  ::dup2(stdin_fd, STDIN_FILENO);
  if (log_fd >= 0) {
    ::dup2(log_fd, STDOUT_FILENO);
    ::dup2(log_fd, STDERR_FILENO);
  }
  ChildFailure failure{0, 0};
  if (working_dir != nullptr && ::chdir(working_dir) != 0) {
    failure = {kStageChdir, errno};
  } else {
    ::execvpe(argv[0], argv, envp);
    failure = {kStageExec, errno};
  }
  ssize_t ignored = ::write(status_fd, &failure, sizeof failure);
  (void)ignored;
  ::_exit(127);
}

}  // namespace

std::string ExitStatus::ToString() const {
  if (signal != 0) {
    const char* name = ::strsignal(signal);
    return "signal " + std::to_string(signal) + " (" + (name ? name : "?") + ")";
  }
  return "exit code " + std::to_string(code);
}

StatusOr<ScopedProcess> ScopedProcess::Start(const ProcessOptions& options) {
  if (options.argv.empty() || options.argv[0].empty()) {
    return InvalidArgument("ScopedProcess: argv is empty");
  }
  // Everything the child needs is built before fork (see RunChild).
  std::vector<std::string> env_strings;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string entry(*e);
    std::string name = entry.substr(0, entry.find('='));
    if (options.env.count(name) == 0) env_strings.push_back(std::move(entry));
  }
  for (const auto& [name, value] : options.env) env_strings.push_back(name + "=" + value);
  std::vector<char*> envp;
  for (auto& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> argv_strings = options.argv;
  std::vector<char*> argv;
  for (auto& s : argv_strings) argv.push_back(s.data());
  argv.push_back(nullptr);

  ScopedFd dev_null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
  if (dev_null.get() < 0) return Internal("open /dev/null: " + ErrnoText(errno));
  ScopedFd log_fd;
  if (!options.log_path.empty()) {
    log_fd.Reset(::open(options.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (log_fd.get() < 0) {
      return Internal("open log file " + options.log_path + ": " + ErrnoText(errno));
    }
  }
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) != 0) return Internal("pipe2: " + ErrnoText(errno));
  ScopedFd status_read(pipe_fds[0]);
  ScopedFd status_write(pipe_fds[1]);

  const pid_t parent = ::getpid();
  const char* working_dir = options.working_dir.empty() ? nullptr : options.working_dir.c_str();
  pid_t pid = ::fork();
  if (pid < 0) return Internal("fork: " + ErrnoText(errno));
  if (pid == 0) {
    RunChild(parent, status_write.get(), dev_null.get(), log_fd.get(), working_dir, argv.data(),
             envp.data());
  }
  // Also from this side, so that the group exists before anyone signals it; EACCES once
  // the child has exec'd (it did it itself then).
  ::setpgid(pid, pid);
  status_write.Reset();

  ScopedProcess process;
  process.pid_ = pid;
  process.log_path_ = options.log_path;

  // The pipe closes on a successful exec (O_CLOEXEC) and carries a ChildFailure otherwise.
  ChildFailure failure{0, 0};
  ssize_t n;
  do {
    n = ::read(status_read.get(), &failure, sizeof failure);
  } while (n < 0 && errno == EINTR);
  if (n == static_cast<ssize_t>(sizeof failure)) {
    process.BlockingReap();
    const std::string what = failure.stage == kStageChdir ? "chdir to " + options.working_dir
                                                          : "exec " + options.argv[0];
    const std::string message = "ScopedProcess: " + what + ": " + ErrnoText(failure.err);
    if (failure.err == ENOENT) return NotFound(message);
    return Internal(message);
  }
  return process;
}

ScopedProcess::~ScopedProcess() { Kill().IgnoreError(); }

ScopedProcess::ScopedProcess(ScopedProcess&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      reaped_(std::exchange(other.reaped_, false)),
      exit_status_(std::exchange(other.exit_status_, std::nullopt)),
      log_path_(std::move(other.log_path_)) {}

ScopedProcess& ScopedProcess::operator=(ScopedProcess&& other) noexcept {
  if (this != &other) {
    Kill().IgnoreError();
    pid_ = std::exchange(other.pid_, -1);
    reaped_ = std::exchange(other.reaped_, false);
    exit_status_ = std::exchange(other.exit_status_, std::nullopt);
    log_path_ = std::move(other.log_path_);
  }
  return *this;
}

bool ScopedProcess::TryReap() {
  if (pid_ < 0 || reaped_) return true;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return false;
  reaped_ = true;
  // r < 0 (ECHILD): someone else reaped it; the status is unknown.
  exit_status_ = r == pid_ ? FromWaitStatus(status) : ExitStatus{};
  return true;
}

void ScopedProcess::BlockingReap() {
  if (pid_ < 0 || reaped_) return;
  int status = 0;
  pid_t r;
  do {
    r = ::waitpid(pid_, &status, 0);
  } while (r < 0 && errno == EINTR);
  reaped_ = true;
  exit_status_ = r == pid_ ? FromWaitStatus(status) : ExitStatus{};
}

bool ScopedProcess::running() { return !TryReap(); }

Status ScopedProcess::Signal(int sig) {
  if (pid_ < 0) return FailedPrecondition("ScopedProcess: no process");
  if (TryReap()) {
    return FailedPrecondition("ScopedProcess: pid " + std::to_string(pid_) + " already exited (" +
                              exit_status_->ToString() + ")");
  }
  if (::kill(pid_, sig) != 0) {
    return Internal("kill(" + std::to_string(pid_) + ", " + std::to_string(sig) +
                    "): " + ErrnoText(errno));
  }
  return Status::Ok();
}

Status ScopedProcess::Kill() {
  if (pid_ < 0 || reaped_) return Status::Ok();
  // The group first: while the leader is not reaped its pid (= the group id) cannot be
  // reused, so this reaches only what it started.
  ::kill(-pid_, SIGKILL);
  ::kill(pid_, SIGKILL);
  BlockingReap();
  return Status::Ok();
}

StatusOr<ExitStatus> ScopedProcess::Terminate(std::chrono::milliseconds grace) {
  if (pid_ < 0) return FailedPrecondition("ScopedProcess: no process");
  if (!TryReap()) {
    ::kill(pid_, SIGTERM);
    ::kill(pid_, SIGCONT);  // a stopped process handles SIGTERM only once it runs
    auto waited = Wait(grace);
    if (waited.ok()) return waited;
    RETURN_IF_ERROR(Kill());
  }
  return *exit_status_;
}

StatusOr<ExitStatus> ScopedProcess::Wait(std::chrono::milliseconds timeout) {
  if (pid_ < 0) return FailedPrecondition("ScopedProcess: no process");
  const auto deadline = SteadyClock::now() + timeout;
  auto poll = Millis(1);
  while (!TryReap()) {
    if (SteadyClock::now() >= deadline) {
      return DeadlineExceeded("ScopedProcess: pid " + std::to_string(pid_) +
                              " still running after " + std::to_string(timeout.count()) + " ms");
    }
    std::this_thread::sleep_for(poll);
    poll = std::min(poll * 2, Millis(20));
  }
  return *exit_status_;
}

StatusOr<ExitStatus> RunLogged(const std::vector<std::string>& argv, const std::string& log,
                               const std::string& cwd, std::chrono::milliseconds timeout) {
  ProcessOptions o;
  o.argv = argv;
  o.log_path = log;
  o.working_dir = cwd;
  ASSIGN_OR_RETURN(ScopedProcess p, ScopedProcess::Start(o));
  return p.Wait(timeout);
}

StatusOr<int> PickFreePort() {
  ScopedFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (fd.get() < 0) return Internal("socket: " + ErrnoText(errno));
  sockaddr_in addr;
  std::memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    return Internal("bind 127.0.0.1:0: " + ErrnoText(errno));
  }
  socklen_t len = sizeof addr;
  if (::getsockname(fd.get(), reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
    return Internal("getsockname: " + ErrnoText(errno));
  }
  return static_cast<int>(ntohs(addr.sin_port));
}

bool WaitFor(const std::function<bool()>& condition, std::chrono::milliseconds timeout,
             std::chrono::milliseconds poll) {
  const auto deadline = SteadyClock::now() + timeout;
  while (SteadyClock::now() < deadline) {
    if (condition()) return true;
    std::this_thread::sleep_for(poll);
  }
  return condition();
}

int RunShellCapturing(const std::string& shell_command, std::string* out) {
  FILE* p = ::popen(shell_command.c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out->append(buf, n);
  const int rc = ::pclose(p);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

std::string ReadLogTail(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  const std::streamoff start = size > static_cast<std::streamoff>(max_bytes)
                                   ? size - static_cast<std::streamoff>(max_bytes)
                                   : 0;
  in.seekg(start);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

bool ProcessGone(pid_t pid) {
  if (::kill(pid, 0) != 0 && errno == ESRCH) return true;
  // A zombie still answers kill(pid, 0); it has stopped running all the same.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string line;
  std::getline(stat, line);
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
}

}  // namespace fedps::testing
