// StagedStore: see the header.
#include "ps/staged_store.h"

#include <glog/logging.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "common/safetensors.h"
#include "common/sha256.h"
#include "compression/codec.h"

namespace fedps {

namespace {

// -2: frames as received (was -1: the decoded fp32 delta plus its SHA-256).
constexpr const char* kStagedFormat = "fedps-staged-2";
constexpr const char* kSuffix = ".safetensors";

std::string FrameName(size_t i) { return "frame." + std::to_string(i); }

std::string Meta(const std::map<std::string, std::string>& m, const char* key) {
  auto it = m.find(key);
  return it == m.end() ? std::string() : it->second;
}

std::string JoinChecksums(const std::vector<uint64_t>& checksums) {
  std::string out;
  char hex[17];
  for (uint64_t c : checksums) {
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(c));
    if (!out.empty()) out += ',';
    out += hex;
  }
  return out;
}

// The "checksums" metadata: `frames` comma-separated 16-digit hex numbers.
bool ParseChecksums(const std::string& text, size_t frames, std::vector<uint64_t>* out) {
  out->clear();
  if (frames == 0) return text.empty();
  if (text.size() != frames * 17 - 1) return false;
  for (size_t i = 0; i < frames; ++i) {
    const std::string digits = text.substr(i * 17, 16);
    if (digits.find_first_not_of("0123456789abcdef") != std::string::npos) return false;
    if (i + 1 < frames && text[i * 17 + 16] != ',') return false;
    out->push_back(std::stoull(digits, nullptr, 16));
  }
  return true;
}

// The "sum_squares" metadata; -1 when absent (a file from before it was kept) or not a
// finite number >= 0.
double ParseSumSquares(const std::string& text) {
  if (text.empty()) return -1;
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);
  return end == text.c_str() + text.size() && std::isfinite(v) && v >= 0 ? v : -1;
}

bool HasRecordScalars(const nlohmann::json& r) {
  for (const char* k : {"base_version", "tokens", "local_steps"}) {
    if (!r.is_object() || !r.contains(k) || !r[k].is_number_integer()) return false;
  }
  return true;
}

}  // namespace

StagedStore::StagedStore(std::string dir, Slice slice, Env* env)
    : dir_(std::move(dir)), slice_(slice), env_(env) {}

Status StagedStore::Init() { return env_->CreateDirs(dir_); }

std::string StagedStore::Path(const std::string& update_id) const {
  return JoinPath(dir_, Sha256Hex(update_id).substr(0, 32) + kSuffix);
}

StatusOr<std::unique_ptr<StagedWriter>> StagedStore::Begin(const std::string& update_id, const std::string& client_id,
                                                           const nlohmann::json& record, int64_t frames) const {
  std::map<std::string, std::string> meta = {
      {"format", kStagedFormat},
      {"update_id", update_id},
      {"client", client_id},
      {"record", record.dump()},
      {"frames", std::to_string(frames)},
      {"shard_index", std::to_string(slice_.shard_index)},
      {"slice_begin", std::to_string(slice_.slice_begin)},
      {"slice_elements", std::to_string(slice_.slice_elements)},
  };
  // The header's most bytes: each metadata string escaped at worst 6 bytes per byte, the
  // checksums (17 bytes each), and per frame its entry
  // "frame.<i>":{"dtype":"U8","shape":[n],"data_offsets":[begin,end]}, with 20-digit numbers.
  uint64_t reserve = 256;
  for (const auto& [k, v] : meta) reserve += k.size() + 6 * v.size() + 8;
  reserve += 16 + static_cast<uint64_t>(frames) * (17 + 128);
  ASSIGN_OR_RETURN(auto file, SafetensorsAppender::Create(Path(update_id), reserve, env_));
  return std::unique_ptr<StagedWriter>(new StagedWriter(std::move(file), std::move(meta), frames));
}

StagedWriter::StagedWriter(std::unique_ptr<SafetensorsAppender> file, std::map<std::string, std::string> metadata,
                           int64_t frames)
    : file_(std::move(file)), metadata_(std::move(metadata)), frames_(frames) {}

StagedWriter::~StagedWriter() = default;

Status StagedWriter::AddFrame(int64_t index, std::string_view frame) {
  if (index < 0 || index >= frames_) {
    return InvalidArgument("frame " + std::to_string(index) + " of a " + std::to_string(frames_) + "-frame update");
  }
  TensorRef t;
  t.dtype = DType::kU8;
  t.shape = {static_cast<int64_t>(frame.size())};
  t.data = frame.data();
  t.bytes = frame.size();
  RETURN_IF_ERROR(file_->Add(FrameName(static_cast<size_t>(index)), t));
  ++added_;
  return Status::Ok();
}

Status StagedWriter::Finish(const std::vector<uint64_t>& checksums, double sum_squares) {
  if (static_cast<int64_t>(checksums.size()) != frames_) {
    return InvalidArgument(std::to_string(checksums.size()) + " checksums for " + std::to_string(frames_) + " frames");
  }
  if (added_ != frames_) {
    return FailedPrecondition(std::to_string(added_.load()) + " of " + std::to_string(frames_) + " frames written");
  }
  std::map<std::string, std::string> meta = metadata_;
  meta["checksums"] = JoinChecksums(checksums);
  char text[32];
  std::snprintf(text, sizeof(text), "%.17g", sum_squares);
  meta["sum_squares"] = text;
  return file_->Finish(meta);
}

StatusOr<StagedUpdate> StagedStore::Read(const std::string& update_id) const {
  const std::string path = Path(update_id);
  if (!env_->Exists(path)) return DataLoss("staged slice of " + update_id + " is missing (" + path + ")");
  auto file = ReadSafetensors(path, env_);
  if (!file.ok()) return DataLoss("staged slice of " + update_id + ": " + file.status().message());
  if (Meta(file->metadata, "format") != kStagedFormat) {
    return DataLoss("staged file " + path + " has format '" + Meta(file->metadata, "format") + "', want " +
                    kStagedFormat);
  }
  if (Meta(file->metadata, "update_id") != update_id) {
    return DataLoss("staged file " + path + " holds '" + Meta(file->metadata, "update_id") + "', not " + update_id);
  }
  if (Meta(file->metadata, "slice_begin") != std::to_string(slice_.slice_begin) ||
      Meta(file->metadata, "slice_elements") != std::to_string(slice_.slice_elements)) {
    return DataLoss("staged file " + path + " belongs to another slice");
  }
  StagedUpdate u;
  u.update_id = update_id;
  u.client_id = Meta(file->metadata, "client");
  u.record = nlohmann::json::parse(Meta(file->metadata, "record"), nullptr, false);
  if (!HasRecordScalars(u.record)) return DataLoss("staged file " + path + ": bad stage record");
  const std::string count = Meta(file->metadata, "frames");
  if (count != std::to_string(file->tensors.size())) {
    return DataLoss("staged file " + path + " holds " + std::to_string(file->tensors.size()) +
                    " tensors, its header says " + count + " frames");
  }
  u.frames.resize(file->tensors.size());
  for (auto& [name, t] : file->tensors) {
    const std::string prefix = "frame.";
    size_t i = u.frames.size();
    if (name.rfind(prefix, 0) == 0 && name.size() > prefix.size() && name.size() <= prefix.size() + 9 &&
        name.find_first_not_of("0123456789", prefix.size()) == std::string::npos) {
      i = std::stoul(name.substr(prefix.size()));
    }
    if (i >= u.frames.size() || !u.frames[i].empty() || t.dtype != DType::kU8 || FrameName(i) != name) {
      return DataLoss("staged file " + path + ": unexpected tensor " + name);
    }
    u.frames[i] = std::move(t.data);
  }
  for (const std::string& f : u.frames) {
    auto h = Codec::PeekHeader(f);
    if (!h.ok()) return DataLoss("staged file " + path + ": " + h.status().message());
    u.checksums.push_back(h->checksum);
    u.bytes += static_cast<int64_t>(f.size());
  }
  return u;
}

StatusOr<std::vector<StagedUpdate>> StagedStore::Index() const {
  ASSIGN_OR_RETURN(auto names, env_->ListDir(dir_));
  std::vector<StagedUpdate> out;
  const std::string suffix = kSuffix;
  for (const std::string& name : names) {
    const std::string path = JoinPath(dir_, name);
    if (name.find(".tmp.") != std::string::npos) {  // a write that never finished
      env_->RemoveFile(path).IgnoreError();
      continue;
    }
    if (name.size() < suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    auto index = ReadSafetensorsIndex(path);
    if (!index.ok()) {
      LOG(ERROR) << "staged file " << path << " is unreadable: " << index.status().ToString();
      continue;
    }
    StagedUpdate u;
    u.update_id = Meta(index->metadata, "update_id");
    u.client_id = Meta(index->metadata, "client");
    u.record = nlohmann::json::parse(Meta(index->metadata, "record"), nullptr, false);
    if (u.update_id.empty() || !HasRecordScalars(u.record) || Path(u.update_id) != path) {
      LOG(ERROR) << "staged file " << path << " has bad metadata";
      continue;
    }
    for (const SafetensorsEntry& e : index->entries) u.bytes += static_cast<int64_t>(e.bytes);
    if (!index->metadata.count("checksums")) {
      // Written before the checksums were kept: read them from the frames, once.
      auto full = Read(u.update_id);
      if (!full.ok()) {
        LOG(ERROR) << full.status().ToString();
        continue;
      }
      u.checksums = std::move(full->checksums);
    } else if (!ParseChecksums(Meta(index->metadata, "checksums"), index->entries.size(), &u.checksums)) {
      LOG(ERROR) << "staged file " << path << " has bad checksums metadata";
      continue;
    }
    u.sum_squares = ParseSumSquares(Meta(index->metadata, "sum_squares"));
    out.push_back(std::move(u));
  }
  return out;
}

void StagedStore::Remove(const std::string& update_id) const { env_->RemoveFile(Path(update_id)).IgnoreError(); }

std::string StagedStore::Detach(const std::string& update_id) const {
  const std::string from = Path(update_id);
  const std::string to = from + ".tmp.expired";
  Status moved = env_->Rename(from, to);
  if (!moved.ok()) {
    LOG(WARNING) << "detaching staged " << update_id << ": " << moved.ToString();
    env_->RemoveFile(from).IgnoreError();  // nothing can stage under the name meanwhile: the caller holds the lock
    return "";
  }
  return to;
}

void StagedStore::Discard(const std::string& detached_path) const {
  if (!detached_path.empty()) env_->RemoveFile(detached_path).IgnoreError();
}

}  // namespace fedps
