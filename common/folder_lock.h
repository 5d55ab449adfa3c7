// An exclusive, advisory lock on a folder for the life of a process: `<dir>/LOCK`, held
// with flock(2), so that two fedps processes never share one shard folder or one client
// state folder. The lock belongs to the open file: it is released when the FolderLock is
// destroyed or the process dies (kill -9 included), never left stale. The file holds the
// holder's pid and what it is, for the refusal message of a second process.
#pragma once

#include <memory>
#include <string>

#include "common/status.h"

namespace fedps {

class FolderLock {
 public:
  // Creates `dir` if needed and locks it for `holder` (e.g. "fedps-shard 1"). When another
  // process holds it: kFailedPrecondition naming that process (pid and holder).
  static StatusOr<std::unique_ptr<FolderLock>> Acquire(const std::string& dir, const std::string& holder);
  ~FolderLock();
  FolderLock(const FolderLock&) = delete;
  FolderLock& operator=(const FolderLock&) = delete;

  const std::string& path() const { return path_; }

 private:
  FolderLock(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_ = -1;
};

}  // namespace fedps
