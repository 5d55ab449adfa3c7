#include "common/env.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <thread>

namespace fedps {
namespace {

namespace fs = std::filesystem;

Status ErrnoStatus(const std::string& what, const std::string& path, int err) {
  std::string m = what + " " + path + ": " + std::strerror(err);
  if (err == ENOENT) return NotFound(std::move(m));
  if (err == EEXIST) return AlreadyExists(std::move(m));
  if (err == EACCES || err == EPERM || err == EINVAL || err == ENOTDIR || err == EISDIR)
    return InvalidArgument(std::move(m));
  return Internal(std::move(m));
}

class RealClock : public Clock {
 public:
  int64_t NowMicros() override {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  int64_t WallMicros() override {
    return std::chrono::duration_cast<std::chrono::microseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  void SleepForMicros(int64_t micros) override {
    std::this_thread::sleep_for(std::chrono::microseconds(micros));
  }
};

Status WriteAll(int fd, std::string_view data, const std::string& path) {
  while (!data.empty()) {
    ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", path, errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return Status::Ok();
}

// An explicit depth-first walk with openat/unlinkat rather than std::filesystem::remove_all:
// fedps-shard died of SIGSEGV inside remove_all (GPU-machine build, issue 7), and a walk
// relative to open folder descriptors never follows a symbolic link out of the tree and
// has no path-length limit. Names are read before anything is removed, so the listing
// never races with its own deletions.
Status RemoveTreeAt(int parent_fd, const std::string& name, const std::string& path) {
  int fd = ::openat(parent_fd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return Status::Ok();
    if (errno != ENOTDIR && errno != ELOOP) return ErrnoStatus("cannot open folder", path, errno);
    // A file or a symbolic link (O_NOFOLLOW gives ELOOP for a link): remove the entry itself.
    if (::unlinkat(parent_fd, name.c_str(), 0) != 0 && errno != ENOENT) {
      return ErrnoStatus("cannot remove", path, errno);
    }
    return Status::Ok();
  }
  DIR* dir = ::fdopendir(fd);
  if (dir == nullptr) {
    int err = errno;
    ::close(fd);
    return ErrnoStatus("cannot list folder", path, err);
  }
  std::vector<std::string> names;
  errno = 0;
  while (struct dirent* e = ::readdir(dir)) {
    if (std::strcmp(e->d_name, ".") != 0 && std::strcmp(e->d_name, "..") != 0) names.emplace_back(e->d_name);
  }
  Status s = errno != 0 ? ErrnoStatus("cannot list folder", path, errno) : Status::Ok();
  for (size_t i = 0; s.ok() && i < names.size(); ++i) s = RemoveTreeAt(::dirfd(dir), names[i], path + "/" + names[i]);
  ::closedir(dir);  // closes fd
  if (!s.ok()) return s;
  if (::unlinkat(parent_fd, name.c_str(), AT_REMOVEDIR) != 0 && errno != ENOENT) {
    return ErrnoStatus("cannot remove folder", path, errno);
  }
  return Status::Ok();
}

}  // namespace

Clock* Clock::Real() {
  static RealClock clock;
  return &clock;
}

Env* Env::Default() {
  static Env env;
  return &env;
}

StatusOr<std::string> Env::ReadFile(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open", path, errno);
  std::string out;
  struct stat st {};
  if (::fstat(fd, &st) == 0 && st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  char buf[1 << 16];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return ErrnoStatus("cannot read", path, err);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

Status Env::WriteFileAtomic(const std::string& path, std::string_view contents) {
  return WriteFileAtomic(path, std::span<const std::string_view>(&contents, 1));
}

Status Env::WriteFileAtomic(const std::string& path, std::span<const std::string_view> pieces) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  std::string tmp = path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rng() % 1000000);
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot create", tmp, errno);
  Status s;
  for (size_t i = 0; i < pieces.size() && s.ok(); ++i) s = WriteAll(fd, pieces[i], tmp);
  if (s.ok() && ::fsync(fd) != 0) s = ErrnoStatus("fsync", tmp, errno);
  if (::close(fd) != 0 && s.ok()) s = ErrnoStatus("close", tmp, errno);
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  return Rename(tmp, path);
}

Status Env::AppendToFile(const std::string& path, std::string_view contents) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd < 0) return ErrnoStatus("cannot open", path, errno);
  Status s = WriteAll(fd, contents, path);
  ::close(fd);
  return s;
}

bool Env::Exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool Env::IsDirectory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

Status Env::CreateDirs(const std::string& path) {
  std::error_code ec;
  fs::create_directories(path, ec);
  if (ec) return Internal("cannot create folder " + path + ": " + ec.message());
  return Status::Ok();
}

Status Env::RemoveFile(const std::string& path) {
  if (::unlink(path.c_str()) != 0) return ErrnoStatus("cannot remove", path, errno);
  return Status::Ok();
}

Status Env::RemoveAll(const std::string& path) {
  if (path.empty()) return InvalidArgument("RemoveAll: empty path");
  return RemoveTreeAt(AT_FDCWD, path, path);
}

Status Env::Rename(const std::string& from, const std::string& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) return ErrnoStatus("cannot rename to " + to + ":", from, errno);
  return SyncDir(Dirname(to));
}

StatusOr<std::vector<std::string>> Env::ListDir(const std::string& path) {
  std::error_code ec;
  std::vector<std::string> names;
  for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    names.push_back(it->path().filename().string());
  }
  if (ec) return NotFound("cannot list folder " + path + ": " + ec.message());
  std::sort(names.begin(), names.end());
  return names;
}

StatusOr<int64_t> Env::FileSize(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return ErrnoStatus("cannot stat", path, errno);
  return static_cast<int64_t>(st.st_size);
}

Status Env::SyncDir(const std::string& path) {
  int fd = ::open(path.empty() ? "." : path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrnoStatus("cannot open folder", path, errno);
  // A failed fsync means the folder's entries (a rename, a new file) may not be durable:
  // an error, never ignored. EINVAL: the file system cannot sync folders (nothing to wait for).
  Status s = Status::Ok();
  if (::fsync(fd) != 0 && errno != EINVAL) s = ErrnoStatus("fsync of folder", path, errno);
  ::close(fd);
  return s;
}

std::string JoinPath(std::string_view a, std::string_view b) {
  if (a.empty()) return std::string(b);
  if (b.empty()) return std::string(a);
  if (!b.empty() && b.front() == '/') return std::string(b);
  std::string out(a);
  if (out.back() != '/') out += '/';
  out += b;
  return out;
}

std::string Dirname(std::string_view path) {
  auto pos = path.find_last_of('/');
  if (pos == std::string_view::npos) return ".";
  if (pos == 0) return "/";
  return std::string(path.substr(0, pos));
}

std::string Basename(std::string_view path) {
  auto pos = path.find_last_of('/');
  return std::string(pos == std::string_view::npos ? path : path.substr(pos + 1));
}

}  // namespace fedps
