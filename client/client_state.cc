#include "client/client_state.h"

#include <sys/statvfs.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>

#include "common/sha256.h"
#include "model/safetensors.h"

namespace fedps {
namespace {

constexpr int kStateFormat = 2;
constexpr char kPendingFile[] = "pending.bin";
constexpr char kOptimizerFile[] = "optimizer.safetensors";
constexpr char kPendingMagic[4] = {'F', 'P', 'S', 'P'};

void PutU64(std::string* out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

bool GetU64(std::string_view in, size_t* at, uint64_t* v) {
  if (in.size() - *at < 8) return false;
  uint64_t r = 0;
  for (int i = 0; i < 8; ++i) r |= uint64_t(static_cast<unsigned char>(in[*at + i])) << (8 * i);
  *at += 8;
  *v = r;
  return true;
}

// "FPSP", u64 frame count, then per frame: u64 shard, u64 frame index, u64 length, bytes.
// As pieces to write one after another: the small headers live in `*headers` (sized up
// front, so the views into it stay valid), the frames are viewed where they are.
std::vector<std::string_view> FramePieces(const PendingUpdate& p, std::string* headers) {
  uint64_t count = 0;
  for (const auto& s : p.shards) count += s.frames.size();
  headers->clear();
  headers->reserve(12 + 24 * count);
  headers->append(kPendingMagic, 4);
  PutU64(headers, count);
  std::vector<std::string_view> pieces = {std::string_view(*headers)};
  for (const auto& s : p.shards) {
    for (size_t i = 0; i < s.frames.size(); ++i) {
      const size_t at = headers->size();
      PutU64(headers, static_cast<uint64_t>(s.shard));
      PutU64(headers, i);
      PutU64(headers, s.frames[i].size());
      pieces.push_back(std::string_view(*headers).substr(at, 24));
      pieces.push_back(s.frames[i]);
    }
  }
  return pieces;
}

Status ParseFrames(std::string_view in, PendingUpdate* p, const std::string& path) {
  auto bad = [&](const std::string& what) { return DataLoss("pending update " + path + ": " + what); };
  if (in.size() < 12 || std::memcmp(in.data(), kPendingMagic, 4) != 0) return bad("bad magic");
  size_t at = 4;
  uint64_t count = 0;
  if (!GetU64(in, &at, &count)) return bad("truncated");
  std::map<int, PendingShard*> by_shard;
  for (auto& s : p->shards) by_shard[s.shard] = &s;
  for (uint64_t k = 0; k < count; ++k) {
    uint64_t shard = 0, index = 0, len = 0;
    if (!GetU64(in, &at, &shard) || !GetU64(in, &at, &index) || !GetU64(in, &at, &len)) return bad("truncated");
    auto it = by_shard.find(static_cast<int>(shard));
    if (it == by_shard.end() || shard > 1u << 20) return bad("frame of unknown shard " + std::to_string(shard));
    if (index != it->second->frames.size()) return bad("frames out of order");
    if (in.size() - at < len) return bad("truncated frame");
    it->second->frames.emplace_back(in.substr(at, len));
    at += len;
  }
  if (at != in.size()) return bad("trailing bytes");
  return Status::Ok();
}

nlohmann::json PendingToJson(const PendingUpdate& p) {
  nlohmann::json shards = nlohmann::json::array();
  for (const auto& s : p.shards) {
    shards.push_back({{"shard", s.shard},
                      {"slice_begin", s.slice_begin},
                      {"slice_elements", s.slice_elements},
                      {"frame_elements", s.frame_elements},
                      {"frames", s.frames.size()}});
  }
  return {{"update_id", p.update_id},       {"client_epoch", p.client_epoch},
          {"counter", p.counter},           {"base_version", p.base_version},
          {"pulled_versions", p.pulled_versions}, {"tokens", p.tokens},
          {"local_steps", p.local_steps},   {"codec", p.codec},
          {"info", p.info},                 {"shards", shards}};
}

StatusOr<PendingUpdate> PendingFromJson(const nlohmann::json& j) {
  try {
    PendingUpdate p;
    p.update_id = j.at("update_id").get<std::string>();
    p.client_epoch = j.at("client_epoch").get<int64_t>();
    p.counter = j.at("counter").get<int64_t>();
    p.base_version = j.at("base_version").get<int64_t>();
    p.pulled_versions = j.at("pulled_versions").get<std::vector<int64_t>>();
    p.tokens = j.at("tokens").get<int64_t>();
    p.local_steps = j.at("local_steps").get<int64_t>();
    p.codec = j.at("codec").get<std::string>();
    p.info = j.value("info", nlohmann::json::object());
    for (const auto& s : j.at("shards")) {
      PendingShard ps;
      ps.shard = s.at("shard").get<int>();
      ps.slice_begin = s.at("slice_begin").get<int64_t>();
      ps.slice_elements = s.at("slice_elements").get<int64_t>();
      ps.frame_elements = s.at("frame_elements").get<int64_t>();
      p.shards.push_back(std::move(ps));
    }
    return p;
  } catch (const std::exception& e) {
    return DataLoss(std::string("pending update record: ") + e.what());
  }
}

}  // namespace

ClientState CopyWithoutPending(const ClientState& s) {
  ClientState out;
  out.next_counter = s.next_counter;
  out.trainer_step = s.trainer_step;
  out.loader = s.loader;
  out.totals = s.totals;
  return out;
}

StatusOr<std::unique_ptr<ClientStateStore>> ClientStateStore::Open(const std::string& dir, Env* env) {
  ASSIGN_OR_RETURN(std::unique_ptr<FolderLock> lock, FolderLock::Acquire(dir, "fedps-client state"));
  return std::unique_ptr<ClientStateStore>(new ClientStateStore(dir, env, std::move(lock)));
}

StatusOr<ClientState> ClientStateStore::Load() {
  const std::string state_path = Path("state.json");
  if (!env_->Exists(state_path)) return NotFound("no client state in " + dir_);
  ASSIGN_OR_RETURN(std::string text, env_->ReadFile(state_path));
  ClientState s;
  std::string pending_sha;
  try {
    nlohmann::json j = nlohmann::json::parse(text);
    const int format = j.at("format").get<int>();
    if (format != kStateFormat) {
      return DataLoss(state_path + ": state format " + std::to_string(format) + " (this fedps reads " +
                      std::to_string(kStateFormat) + "); finish that client with the fedps that wrote it, or "
                      "remove the folder to start it afresh");
    }
    s.next_counter = j.at("next_counter").get<int64_t>();
    s.trainer_step = j.at("trainer_step").get<int64_t>();
    s.totals = j.value("totals", nlohmann::json::object());
    if (j.contains("loader") && !j["loader"].is_null()) {
      ASSIGN_OR_RETURN(LoaderState ls, LoaderState::FromJson(j["loader"]));
      s.loader = ls;
    }
    if (j.contains("pending") && !j["pending"].is_null()) {
      ASSIGN_OR_RETURN(PendingUpdate p, PendingFromJson(j["pending"]));
      s.pending = std::move(p);
      pending_sha = j.at("pending_sha256").get<std::string>();
    }
  } catch (const std::exception& e) {
    return DataLoss(state_path + ": " + e.what());
  }
  pending_sha256_.clear();
  pending_update_id_.clear();
  if (s.pending) {
    ASSIGN_OR_RETURN(std::string bytes, env_->ReadFile(Path(kPendingFile)));
    if (Sha256Hex(bytes) != pending_sha) {
      return DataLoss("pending update " + Path(kPendingFile) + ": sha256 differs from state.json");
    }
    RETURN_IF_ERROR(ParseFrames(bytes, &*s.pending, Path(kPendingFile)));
    pending_sha256_ = pending_sha;
    pending_update_id_ = s.pending->update_id;
  }
  return s;
}

Status ClientStateStore::Save(const ClientState& state) {
  if (state.pending && state.pending->update_id != pending_update_id_) {
    if (!pending_update_id_.empty()) {
      return FailedPrecondition("client state: update " + state.pending->update_id + " while " + pending_update_id_ +
                                " is still pending");
    }
    // state.json names no pending update now, so pending.bin may be replaced. Written from
    // the frames where they are: no second copy of the update in memory.
    std::string headers;
    const std::vector<std::string_view> pieces = FramePieces(*state.pending, &headers);
    RETURN_IF_ERROR(env_->WriteFileAtomic(Path(kPendingFile), pieces));
    pending_sha256_ = Sha256Hex(pieces);
  }
  nlohmann::json j = {{"format", kStateFormat},
                      {"next_counter", state.next_counter},
                      {"trainer_step", state.trainer_step},
                      {"loader", state.loader ? state.loader->ToJson() : nlohmann::json(nullptr)},
                      {"totals", state.totals},
                      {"pending", state.pending ? PendingToJson(*state.pending) : nlohmann::json(nullptr)},
                      {"pending_sha256", state.pending ? pending_sha256_ : std::string()}};
  RETURN_IF_ERROR(env_->WriteFileAtomic(Path("state.json"), j.dump(2) + "\n"));
  pending_update_id_ = state.pending ? state.pending->update_id : std::string();
  if (!state.pending) {
    pending_sha256_.clear();
    if (env_->Exists(Path(kPendingFile))) {
      Status rm = env_->RemoveFile(Path(kPendingFile));
      if (!rm.ok()) LOG(WARNING) << "client state: " << rm.message();
    }
  }
  return Status::Ok();
}

Status ClientStateStore::SaveOptimizer(const std::vector<std::pair<std::string, torch::Tensor>>& tensors) {
  return SaveTensors(Path(kOptimizerFile), tensors);
}

StatusOr<std::vector<std::pair<std::string, torch::Tensor>>> ClientStateStore::LoadOptimizer(torch::Device device) {
  if (!env_->Exists(Path(kOptimizerFile))) return NotFound("no optimizer state in " + dir_);
  return LoadTensors(Path(kOptimizerFile), nullptr, device);
}

StatusOr<int64_t> ClientStateStore::FreeBytes() const {
  struct statvfs st {};
  if (::statvfs(dir_.c_str(), &st) != 0) {
    return Unavailable("cannot read free space of " + dir_ + ": " + std::strerror(errno));
  }
  return static_cast<int64_t>(st.f_bavail) * static_cast<int64_t>(st.f_frsize);
}

}  // namespace fedps
