// The safetensors file format, torch-free (shards, checkpoints, the Hugging Face export).
//
// Layout: 8-byte little-endian header length N, N bytes of JSON
//   {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, ...,
//    "__metadata__": {"key": "value", ...}}
// (padded with spaces to a multiple of 8 so the data is aligned), then the raw little-endian
// tensor bytes; data_offsets are relative to the start of that byte buffer. The format is
// tiny and fixed, so it is written here rather than pulled in as a dependency; files we write
// load with Python's `safetensors` and Hugging Face, and files they write load here.
//
// Writing streams the tensors straight from the caller's memory into a temporary file beside
// the target, fsyncs it and renames it over the target (Env::Rename), so a reader sees the
// old file or the new one. Reading validates everything before trusting it: header length
// sane and within the file, JSON well formed, known dtypes, non-negative shapes, byte ranges
// inside the data area, non-overlapping, and size == numel * dtype size. Failures are
// DataLoss (a damaged or foreign file) naming the file; tensor bytes are read with pread into
// their own buffers so a file is held in memory once.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/env.h"
#include "common/status.h"

namespace fedps {

enum class DType { kF32, kF16, kBF16, kF64, kI64, kI32, kI16, kU16, kU8, kI8, kBool };

// "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "U16", "U8", "I8", "BOOL".
std::string_view DTypeName(DType d);
StatusOr<DType> DTypeFromName(std::string_view name);
size_t DTypeSize(DType d);

// A tensor to write, viewed in the caller's memory (which must outlive the write), or,
// when `data` is null, produced piece by piece by `read` (memory that is not the host's,
// e.g. a GPU tensor copied through a small buffer): read(offset, dst, n) fills dst with the
// tensor's bytes [offset, offset + n).
struct TensorRef {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t bytes = 0;  // must equal numel * DTypeSize(dtype)
  std::function<Status(uint64_t offset, void* dst, size_t n)> read;
};

// Where a written tensor lies in the data area (offsets relative to its start).
struct TensorPlace {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t bytes = 0;
};

// A tensor read back, owning its bytes.
struct TensorBytes {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::string data;
  int64_t numel() const;
};

// One tensor's place in a file (absolute file offsets).
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  uint64_t file_offset = 0;
  uint64_t bytes = 0;
};

// The header only: entries in file order (by data offset), and metadata.
struct SafetensorsIndex {
  std::vector<SafetensorsEntry> entries;
  std::map<std::string, std::string> metadata;
  uint64_t file_size = 0;
  const SafetensorsEntry* Find(std::string_view name) const;
};

struct SafetensorsFile {
  // In file order (by data offset).
  std::vector<std::pair<std::string, TensorBytes>> tensors;
  std::map<std::string, std::string> metadata;
  const TensorBytes* Find(std::string_view name) const;
};

// Writes `tensors` in the given order. InvalidArgument on empty / duplicate names, the
// reserved name "__metadata__", negative dims or a byte count that does not match the shape.
Status WriteSafetensors(const std::string& path, const std::vector<std::pair<std::string, TensorRef>>& tensors,
                        const std::map<std::string, std::string>& metadata, Env* env = Env::Default());

// Writes a safetensors file whose tensors come one at a time, from several threads and in
// any order (a shard writes a pushed update's frames as they arrive): Create reserves room
// for the header, each Add writes its tensor at the next free offset of the data area and
// starts writing its pages back to the disk, and Finish writes the header (padded with
// spaces to the reserve), fsyncs the file and renames it over `path`. Until then the bytes
// are in a temporary file beside `path`; destroying an unfinished appender removes it.
// Thread-safe; the tensors' bytes are written before Add returns.
class SafetensorsAppender {
 public:
  // `header_reserve`: the most bytes the header's JSON will take (Finish fails beyond it).
  static StatusOr<std::unique_ptr<SafetensorsAppender>> Create(const std::string& path, uint64_t header_reserve,
                                                               Env* env = Env::Default());
  ~SafetensorsAppender();
  SafetensorsAppender(const SafetensorsAppender&) = delete;
  SafetensorsAppender& operator=(const SafetensorsAppender&) = delete;

  // InvalidArgument for a bad or duplicate name or a size that does not match the shape;
  // Internal when the write fails (then Finish always fails: the data area has a hole).
  Status Add(const std::string& name, const TensorRef& t);
  // Once, after every Add has returned (FailedPrecondition otherwise). The temporary file
  // is renamed over `path` or removed.
  Status Finish(const std::map<std::string, std::string>& metadata);
  // Bytes of tensor data placed so far.
  uint64_t data_bytes() const;

 private:
  SafetensorsAppender(std::string path, std::string tmp, uint64_t header_bytes, int fd, Env* env);

  const std::string path_, tmp_;
  const uint64_t header_bytes_;  // length prefix + padded header: where the data starts
  int fd_;                       // -1 once Finish took it
  Env* const env_;
  mutable std::mutex mu_;        // guards all below
  std::set<std::string> names_;
  std::vector<TensorPlace> placed_;
  uint64_t data_bytes_ = 0;
  bool finished_ = false;
  bool failed_ = false;
};

// A file opened for reading its tensors piece by piece, into memory the caller chooses (a
// tensor's own buffer, or a bounded buffer on the way to a GPU): the header is parsed and
// validated at Open, as ReadSafetensorsIndex does.
class SafetensorsReader {
 public:
  static StatusOr<std::unique_ptr<SafetensorsReader>> Open(const std::string& path);
  ~SafetensorsReader();
  SafetensorsReader(const SafetensorsReader&) = delete;
  SafetensorsReader& operator=(const SafetensorsReader&) = delete;

  const SafetensorsIndex& index() const { return index_; }
  // Bytes [offset, offset + n) of tensor `e` (an entry of index()); DataLoss when the file
  // ends early, InvalidArgument for a range outside the tensor. Thread-safe (pread).
  Status Read(const SafetensorsEntry& e, uint64_t offset, void* dst, size_t n) const;

 private:
  SafetensorsReader(std::string path, int fd, SafetensorsIndex index)
      : path_(std::move(path)), fd_(fd), index_(std::move(index)) {}
  const std::string path_;
  const int fd_;
  const SafetensorsIndex index_;
};

// Parses and validates the header (reads only the header).
StatusOr<SafetensorsIndex> ReadSafetensorsIndex(const std::string& path);
// Reads and validates the whole file. `env` is accepted for symmetry with the write
// (reads use pread directly, see the file comment).
StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path, Env* env = Env::Default());

}  // namespace fedps
