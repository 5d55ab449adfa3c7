// Env: the seam through which fedps touches time and files.
//
// Production code takes an `Env*` (default: Env::Default()) so that tests can
// substitute a manual clock or a file system that fails on purpose. Every
// durable write goes through WriteFileAtomic: write a temporary file beside the
// target, fsync it, rename it over the target, fsync the folder. A reader
// therefore sees either the old file or the new one, never a torn one.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/status.h"

namespace fedps {

class Clock {
 public:
  virtual ~Clock() = default;
  // Microseconds on a monotonic clock (for durations and deadlines).
  virtual int64_t NowMicros() = 0;
  // Microseconds since the Unix epoch (for timestamps in logs and reports).
  virtual int64_t WallMicros() = 0;
  virtual void SleepForMicros(int64_t micros) = 0;
  static Clock* Real();
};

// A clock that moves only when told to; SleepForMicros advances it.
class ManualClock : public Clock {
 public:
  explicit ManualClock(int64_t start_micros = 0) : now_(start_micros) {}
  int64_t NowMicros() override { return now_; }
  int64_t WallMicros() override { return now_; }
  void SleepForMicros(int64_t micros) override { now_ += micros; }
  void Advance(int64_t micros) { now_ += micros; }

 private:
  int64_t now_;
};

class Env {
 public:
  virtual ~Env() = default;
  static Env* Default();

  virtual Clock* clock() { return Clock::Real(); }

  virtual StatusOr<std::string> ReadFile(const std::string& path);
  // Durable, atomic replacement of `path` by `contents` (see file comment).
  virtual Status WriteFileAtomic(const std::string& path, std::string_view contents);
  // The same with the concatenation of `pieces`, written one after another (a large file
  // made of parts is never joined in memory).
  virtual Status WriteFileAtomic(const std::string& path, std::span<const std::string_view> pieces);
  // Appends and flushes (no fsync); for logs such as metrics.jsonl.
  virtual Status AppendToFile(const std::string& path, std::string_view contents);
  virtual bool Exists(const std::string& path);
  virtual bool IsDirectory(const std::string& path);
  virtual Status CreateDirs(const std::string& path);
  virtual Status RemoveFile(const std::string& path);
  // Removes `path` and everything below it, depth first; Ok when it does not exist.
  // Symbolic links are removed, never followed.
  virtual Status RemoveAll(const std::string& path);
  // Atomic within a file system; fsyncs the destination's folder.
  virtual Status Rename(const std::string& from, const std::string& to);
  // Names (not paths) of the entries of a folder, sorted.
  virtual StatusOr<std::vector<std::string>> ListDir(const std::string& path);
  virtual StatusOr<int64_t> FileSize(const std::string& path);
  virtual Status SyncDir(const std::string& path);
};

// Joins path pieces with '/'.
std::string JoinPath(std::string_view a, std::string_view b);
std::string Dirname(std::string_view path);
std::string Basename(std::string_view path);

}  // namespace fedps
