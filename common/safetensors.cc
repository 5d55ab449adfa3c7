// safetensors reader and writer: see safetensors.h.
#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <set>

#include <nlohmann/json.hpp>

namespace fedps {
namespace {

static_assert(std::endian::native == std::endian::little,
              "safetensors data is little-endian; fedps writes host memory as is");

// Python's safetensors refuses headers over 100 MB; a larger length means a damaged file.
constexpr uint64_t kMaxHeaderBytes = 100u << 20;

struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kF32, "F32", 4}, {DType::kF16, "F16", 2}, {DType::kBF16, "BF16", 2}, {DType::kF64, "F64", 8},
    {DType::kI64, "I64", 8}, {DType::kI32, "I32", 4}, {DType::kI16, "I16", 2},   {DType::kU16, "U16", 2},
    {DType::kU8, "U8", 1},   {DType::kI8, "I8", 1},   {DType::kBool, "BOOL", 1},
};

const DTypeInfo& Info(DType d) {
  for (const auto& i : kDTypes) {
    if (i.dtype == d) return i;
  }
  return kDTypes[0];  // unreachable for valid enum values
}

std::string ErrnoText(int err) { return std::strerror(err); }

// numel of `shape`, false on a negative dimension or overflow past int64.
bool NumelOf(const std::vector<int64_t>& shape, int64_t* out) {
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s < 0 || __builtin_mul_overflow(n, s, &n)) return false;
  }
  *out = n;
  return true;
}

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }

 private:
  int fd_;
};

// Reads exactly `n` bytes at `offset`; DataLoss when the file ends early.
Status PreadAll(int fd, char* dst, uint64_t n, uint64_t offset, const std::string& path) {
  while (n > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, 1u << 30));
    ssize_t r = ::pread(fd, dst, chunk, static_cast<off_t>(offset));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Internal("cannot read " + path + ": " + ErrnoText(errno));
    }
    if (r == 0) return DataLoss(path + ": file ends early (truncated safetensors file)");
    dst += r;
    n -= static_cast<uint64_t>(r);
    offset += static_cast<uint64_t>(r);
  }
  return Status::Ok();
}

StatusOr<SafetensorsIndex> ParseIndex(int fd, const std::string& path) {
  auto bad = [&](const std::string& why) { return DataLoss(path + ": not a valid safetensors file: " + why); };
  struct stat st {};
  if (::fstat(fd, &st) != 0) return Internal("cannot stat " + path + ": " + ErrnoText(errno));
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) return bad("shorter than the 8-byte header length");
  unsigned char len_bytes[8];
  RETURN_IF_ERROR(PreadAll(fd, reinterpret_cast<char*>(len_bytes), 8, 0, path));
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | len_bytes[i];
  if (header_len > kMaxHeaderBytes) return bad("header length " + std::to_string(header_len) + " is implausible");
  if (header_len > file_size - 8)
    return bad("header length " + std::to_string(header_len) + " runs past the end of the file (" +
               std::to_string(file_size) + " bytes)");
  std::string header(static_cast<size_t>(header_len), '\0');
  RETURN_IF_ERROR(PreadAll(fd, header.data(), header_len, 8, path));
  nlohmann::json j = nlohmann::json::parse(header, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return bad("header is not a JSON object");

  const uint64_t data_start = 8 + header_len, data_size = file_size - data_start;
  SafetensorsIndex index;
  index.file_size = file_size;
  struct Range {
    uint64_t begin, end;
    size_t entry;
  };
  std::vector<Range> ranges;
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) return bad("__metadata__ is not an object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) return bad("__metadata__ value of '" + m.key() + "' is not a string");
        index.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    auto where = [&](const std::string& why) { return bad("tensor '" + name + "': " + why); };
    if (!v.is_object()) return where("entry is not an object");
    auto dt = v.find("dtype"), sh = v.find("shape"), off = v.find("data_offsets");
    if (dt == v.end() || !dt->is_string()) return where("missing dtype");
    auto dtype = DTypeFromName(dt->get_ref<const std::string&>());
    if (!dtype.ok()) return where("unknown dtype " + dt->get<std::string>());
    if (sh == v.end() || !sh->is_array()) return where("missing shape");
    SafetensorsEntry e;
    e.name = name;
    e.dtype = *dtype;
    for (const auto& d : *sh) {
      if (!d.is_number_unsigned()) return where("shape holds a non-integer or negative dimension");
      const uint64_t dim = d.get<uint64_t>();
      if (dim > static_cast<uint64_t>(INT64_MAX)) return where("dimension too large");
      e.shape.push_back(static_cast<int64_t>(dim));
    }
    if (off == v.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
        !(*off)[1].is_number_unsigned())
      return where("data_offsets must be two non-negative integers");
    const uint64_t begin = (*off)[0].get<uint64_t>(), end = (*off)[1].get<uint64_t>();
    if (begin > end) return where("data_offsets begin > end");
    if (end > data_size)
      return where("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
                   ") run past the data area of " + std::to_string(data_size) + " bytes");
    int64_t numel = 0;
    uint64_t expect = 0;
    if (!NumelOf(e.shape, &numel) ||
        __builtin_mul_overflow(static_cast<uint64_t>(numel), static_cast<uint64_t>(DTypeSize(e.dtype)), &expect))
      return where("shape too large");
    if (expect != end - begin)
      return where("holds " + std::to_string(end - begin) + " bytes but its shape and dtype need " +
                   std::to_string(expect));
    e.file_offset = data_start + begin;
    e.bytes = end - begin;
    ranges.push_back({begin, end, index.entries.size()});
    index.entries.push_back(std::move(e));
  }
  std::sort(ranges.begin(), ranges.end(), [](const Range& a, const Range& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < ranges.size(); ++i) {
    if (ranges[i].begin < ranges[i - 1].end)
      return bad("tensors '" + index.entries[ranges[i - 1].entry].name + "' and '" +
                 index.entries[ranges[i].entry].name + "' overlap");
  }
  // File order: by data offset.
  std::vector<SafetensorsEntry> ordered;
  ordered.reserve(ranges.size());
  for (const auto& r : ranges) ordered.push_back(std::move(index.entries[r.entry]));
  index.entries = std::move(ordered);
  return index;
}

StatusOr<Fd*> OpenForRead(const std::string& path, std::unique_ptr<Fd>* holder) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return NotFound("cannot open " + path + ": " + ErrnoText(err));
    return InvalidArgument("cannot open " + path + ": " + ErrnoText(err));
  }
  *holder = std::make_unique<Fd>(fd);
  return holder->get();
}

}  // namespace

std::string_view DTypeName(DType d) { return Info(d).name; }

StatusOr<DType> DTypeFromName(std::string_view name) {
  for (const auto& i : kDTypes) {
    if (name == i.name) return i.dtype;
  }
  return InvalidArgument("unknown safetensors dtype '" + std::string(name) + "'");
}

size_t DTypeSize(DType d) { return Info(d).size; }

int64_t TensorBytes::numel() const {
  int64_t n = 0;
  return NumelOf(shape, &n) ? n : -1;
}

const SafetensorsEntry* SafetensorsIndex::Find(std::string_view name) const {
  for (const auto& e : entries) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

const TensorBytes* SafetensorsFile::Find(std::string_view name) const {
  for (const auto& [n, t] : tensors) {
    if (n == name) return &t;
  }
  return nullptr;
}

namespace {

// Checks one tensor to write: its name (not empty, not the reserved one) and that its
// byte count matches its shape.
Status CheckTensorRef(const std::string& path, const std::string& name, const TensorRef& t) {
  if (name.empty() || name == "__metadata__")
    return InvalidArgument("safetensors " + path + ": invalid tensor name '" + name + "'");
  int64_t numel = 0;
  if (!NumelOf(t.shape, &numel)) return InvalidArgument("safetensors " + path + ": tensor " + name + " has a bad shape");
  if (static_cast<uint64_t>(numel) * DTypeSize(t.dtype) != t.bytes)
    return InvalidArgument("safetensors " + path + ": tensor " + name + " has " + std::to_string(t.bytes) +
                           " bytes, its shape needs " + std::to_string(numel * DTypeSize(t.dtype)));
  if (t.bytes > 0 && t.data == nullptr && !t.read)
    return InvalidArgument("safetensors " + path + ": tensor " + name + " has no data");
  return Status::Ok();
}

// The 8-byte length and the JSON header (__metadata__ first, like Python's writer), padded
// with spaces to `min_bytes` and then to a multiple of 8 so the data starts 8-byte
// aligned (as Python's writer does), which lets readers map tensors in place.
std::string HeaderBytes(const std::vector<TensorPlace>& placed, const std::map<std::string, std::string>& metadata,
                        uint64_t min_bytes) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json m = nlohmann::ordered_json::object();
    for (const auto& [k, v] : metadata) m[k] = v;
    header["__metadata__"] = std::move(m);
  }
  for (const TensorPlace& p : placed) {
    header[p.name] = {{"dtype", DTypeName(p.dtype)}, {"shape", p.shape}, {"data_offsets", {p.begin, p.begin + p.bytes}}};
  }
  std::string text = header.dump();
  if (text.size() < min_bytes) text.append(min_bytes - text.size(), ' ');
  text.append((8 - (text.size() % 8)) % 8, ' ');
  std::string out(8, '\0');
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + text;
}

std::string TempPathFor(const std::string& path) {
  static thread_local std::mt19937_64 rng(std::random_device{}());
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(rng() % 1000000);
}

StatusOr<int> CreateTemp(const std::string& tmp) {
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd >= 0) return fd;
  const int err = errno;
  if (err == ENOENT) return NotFound("cannot create " + tmp + ": " + ErrnoText(err));
  return Internal("cannot create " + tmp + ": " + ErrnoText(err));
}

Status PwriteAll(int fd, const char* src, size_t n, uint64_t offset, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::pwrite(fd, src, std::min<size_t>(n, 1u << 30), static_cast<off_t>(offset));
    if (w < 0) {
      if (errno == EINTR) continue;
      return Internal("cannot write " + path + ": " + ErrnoText(errno));
    }
    src += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return Status::Ok();
}

// Writes t's bytes at `offset` of `fd`: from its memory, or through `read` in bounded
// pieces (no whole copy).
Status WriteTensorAt(int fd, const TensorRef& t, uint64_t offset, const std::string& path) {
  if (t.bytes == 0) return Status::Ok();
  if (t.data != nullptr) return PwriteAll(fd, static_cast<const char*>(t.data), t.bytes, offset, path);
  constexpr size_t kPiece = size_t{64} << 20;
  std::string scratch(std::min(kPiece, t.bytes), '\0');
  for (size_t at = 0; at < t.bytes; at += scratch.size()) {
    const size_t n = std::min(scratch.size(), t.bytes - at);
    RETURN_IF_ERROR(t.read(at, scratch.data(), n));
    RETURN_IF_ERROR(PwriteAll(fd, scratch.data(), n, offset + at, path));
  }
  return Status::Ok();
}

// fsync, close and rename `tmp` over `path` (the folder fsynced by Env::Rename); removes
// `tmp` on any failure.
Status SyncAndRename(Fd& fd, const std::string& tmp, const std::string& path, Env* env) {
  Status s;
  if (::fsync(fd.get()) != 0) s = Internal("fsync " + tmp + ": " + ErrnoText(errno));
  if (::close(fd.release()) != 0 && s.ok()) s = Internal("close " + tmp + ": " + ErrnoText(errno));
  if (s.ok()) s = env->Rename(tmp, path);
  if (!s.ok()) ::unlink(tmp.c_str());
  return s;
}

}  // namespace

Status WriteSafetensors(const std::string& path, const std::vector<std::pair<std::string, TensorRef>>& tensors,
                        const std::map<std::string, std::string>& metadata, Env* env) {
  // Header first (also validates).
  std::set<std::string_view> names;
  std::vector<TensorPlace> placed;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    RETURN_IF_ERROR(CheckTensorRef(path, name, t));
    if (!names.insert(name).second) return InvalidArgument("safetensors " + path + ": duplicate tensor " + name);
    placed.push_back({name, t.dtype, t.shape, offset, t.bytes});
    offset += t.bytes;
  }
  const std::string header = HeaderBytes(placed, metadata, 0);
  const std::string tmp = TempPathFor(path);
  ASSIGN_OR_RETURN(int raw_fd, CreateTemp(tmp));
  Fd fd(raw_fd);
  Status s = PwriteAll(fd.get(), header.data(), header.size(), 0, tmp);
  for (size_t i = 0; i < tensors.size() && s.ok(); ++i) {
    s = WriteTensorAt(fd.get(), tensors[i].second, header.size() + placed[i].begin, tmp);
  }
  if (!s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  return SyncAndRename(fd, tmp, path, env);
}

// ---- SafetensorsAppender -----------------------------------------------------------------

SafetensorsAppender::SafetensorsAppender(std::string path, std::string tmp, uint64_t header_bytes, int fd, Env* env)
    : path_(std::move(path)), tmp_(std::move(tmp)), header_bytes_(header_bytes), fd_(fd), env_(env) {}

SafetensorsAppender::~SafetensorsAppender() {
  if (fd_ >= 0) ::close(fd_);
  if (!finished_) ::unlink(tmp_.c_str());
}

StatusOr<std::unique_ptr<SafetensorsAppender>> SafetensorsAppender::Create(const std::string& path,
                                                                           uint64_t header_reserve, Env* env) {
  if (header_reserve > kMaxHeaderBytes) {
    return InvalidArgument("safetensors " + path + ": header reserve " + std::to_string(header_reserve) +
                           " over the format's limit");
  }
  // The space of the length prefix and the padded header, as HeaderBytes pads it.
  const uint64_t header_bytes = 8 + (header_reserve + 7) / 8 * 8;
  std::string tmp = TempPathFor(path);
  ASSIGN_OR_RETURN(int fd, CreateTemp(tmp));
  return std::unique_ptr<SafetensorsAppender>(
      new SafetensorsAppender(path, std::move(tmp), header_bytes, fd, env));
}

Status SafetensorsAppender::Add(const std::string& name, const TensorRef& t) {
  RETURN_IF_ERROR(CheckTensorRef(path_, name, t));
  uint64_t begin;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return FailedPrecondition("safetensors " + path_ + " is already written");
    if (!names_.insert(name).second) return InvalidArgument("safetensors " + path_ + ": duplicate tensor " + name);
    begin = data_bytes_;
    data_bytes_ += t.bytes;
  }
  const uint64_t at = header_bytes_ + begin;
  Status s = WriteTensorAt(fd_, t, at, tmp_);
  // Starts writing the pages back now, so that Finish's fsync finds little left to do.
  if (s.ok() && t.bytes > 0) {
    ::sync_file_range(fd_, static_cast<off_t>(at), static_cast<off_t>(t.bytes), SYNC_FILE_RANGE_WRITE);
  }
  std::lock_guard<std::mutex> lock(mu_);
  if (!s.ok()) {
    failed_ = true;  // a hole in the data area: the file can never be finished
    return s;
  }
  placed_.push_back({name, t.dtype, t.shape, begin, t.bytes});
  return Status::Ok();
}

uint64_t SafetensorsAppender::data_bytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  return data_bytes_;
}

Status SafetensorsAppender::Finish(const std::map<std::string, std::string>& metadata) {
  std::vector<TensorPlace> placed;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return FailedPrecondition("safetensors " + path_ + " is already written");
    if (failed_) return FailedPrecondition("safetensors " + path_ + ": a tensor's write failed");
    uint64_t written = 0;
    for (const TensorPlace& p : placed_) written += p.bytes;
    if (written != data_bytes_) return FailedPrecondition("safetensors " + path_ + ": a tensor is still being written");
    placed = placed_;
    finished_ = true;  // from here the temporary file is renamed or removed below
  }
  std::sort(placed.begin(), placed.end(), [](const TensorPlace& a, const TensorPlace& b) { return a.begin < b.begin; });
  std::string header = HeaderBytes(placed, metadata, header_bytes_ - 8);
  Status s;
  if (header.size() != header_bytes_) {
    s = Internal("safetensors " + path_ + ": header of " + std::to_string(header.size() - 8) +
                 " bytes exceeds the " + std::to_string(header_bytes_ - 8) + " reserved");
  }
  if (s.ok()) s = PwriteAll(fd_, header.data(), header.size(), 0, tmp_);
  if (!s.ok()) {
    ::unlink(tmp_.c_str());
    return s;
  }
  Fd fd(std::exchange(fd_, -1));
  return SyncAndRename(fd, tmp_, path_, env_);
}

SafetensorsReader::~SafetensorsReader() {
  if (fd_ >= 0) ::close(fd_);
}

StatusOr<std::unique_ptr<SafetensorsReader>> SafetensorsReader::Open(const std::string& path) {
  std::unique_ptr<Fd> holder;
  ASSIGN_OR_RETURN(Fd * fd, OpenForRead(path, &holder));
  ASSIGN_OR_RETURN(SafetensorsIndex index, ParseIndex(fd->get(), path));
  return std::unique_ptr<SafetensorsReader>(new SafetensorsReader(path, holder->release(), std::move(index)));
}

Status SafetensorsReader::Read(const SafetensorsEntry& e, uint64_t offset, void* dst, size_t n) const {
  if (offset > e.bytes || n > e.bytes - offset) {
    return InvalidArgument("safetensors " + path_ + ": bytes [" + std::to_string(offset) + ", +" + std::to_string(n) +
                           ") outside tensor " + e.name + " of " + std::to_string(e.bytes));
  }
  return PreadAll(fd_, static_cast<char*>(dst), n, e.file_offset + offset, path_);
}

StatusOr<SafetensorsIndex> ReadSafetensorsIndex(const std::string& path) {
  ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
  return reader->index();
}

StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path, Env* /*env*/) {
  ASSIGN_OR_RETURN(auto reader, SafetensorsReader::Open(path));
  SafetensorsFile out;
  out.metadata = reader->index().metadata;
  out.tensors.reserve(reader->index().entries.size());
  for (const SafetensorsEntry& e : reader->index().entries) {
    TensorBytes t;
    t.dtype = e.dtype;
    t.shape = e.shape;
    t.data.resize(static_cast<size_t>(e.bytes));
    RETURN_IF_ERROR(reader->Read(e, 0, t.data.data(), e.bytes));
    out.tensors.emplace_back(e.name, std::move(t));
  }
  return out;
}

}  // namespace fedps
