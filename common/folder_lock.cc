#include "common/folder_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include <glog/logging.h>

#include "common/env.h"

namespace fedps {

namespace {

std::string ReadHolder(int fd) {
  char buf[256];
  ssize_t n = ::pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return "";
  std::string s(buf, static_cast<size_t>(n));
  while (!s.empty() && (s.back() == '\n' || s.back() == '\0')) s.pop_back();
  return s;
}

}  // namespace

StatusOr<std::unique_ptr<FolderLock>> FolderLock::Acquire(const std::string& dir, const std::string& holder) {
  RETURN_IF_ERROR(Env::Default()->CreateDirs(dir));
  std::string path = JoinPath(dir, "LOCK");
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Unavailable("cannot open " + path + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    std::string other = ReadHolder(fd);
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return FailedPrecondition("folder " + dir + " is in use by another process (" +
                                (other.empty() ? std::string("unknown") : other) +
                                "): stop it first, or give this process its own folder");
    }
    return Unavailable("cannot lock " + path + ": " + std::strerror(err));
  }
  // Ours now: record who holds it (best effort; the flock is what excludes).
  std::string me = "pid " + std::to_string(::getpid()) + ", " + holder + "\n";
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, me.data(), me.size(), 0) != static_cast<ssize_t>(me.size())) {
    LOG(WARNING) << "cannot record the holder in " << path << ": " << std::strerror(errno);
  }
  return std::unique_ptr<FolderLock>(new FolderLock(path, fd));
}

FolderLock::~FolderLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace fedps
