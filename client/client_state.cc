#include "client/client_state.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>

#include "common/sha256.h"
#include "model/safetensors.h"

namespace fedps {
namespace {

constexpr int kStateFormat = 1;
constexpr char kPendingMagic[4] = {'F', 'P', 'S', 'P'};

std::string GenName(const char* stem, int64_t gen, const char* ext) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s-%08lld%s", stem, static_cast<long long>(gen), ext);
  return buf;
}

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
std::string SerializeFrames(const PendingUpdate& p) {
  std::string out(kPendingMagic, 4);
  uint64_t count = 0;
  for (const auto& s : p.shards) count += s.frames.size();
  PutU64(&out, count);
  for (const auto& s : p.shards) {
    for (size_t i = 0; i < s.frames.size(); ++i) {
      PutU64(&out, static_cast<uint64_t>(s.shard));
      PutU64(&out, i);
      PutU64(&out, s.frames[i].size());
      out += s.frames[i];
    }
  }
  return out;
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

StatusOr<std::unique_ptr<ClientStateStore>> ClientStateStore::Open(const std::string& dir, Env* env) {
  RETURN_IF_ERROR(env->CreateDirs(dir));
  std::string lock_path = JoinPath(dir, "LOCK");
  int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return Unavailable("cannot open " + lock_path + ": " + std::strerror(errno));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    ::close(fd);
    if (err == EWOULDBLOCK) {
      return FailedPrecondition("state folder " + dir + " is in use by another fedps-client process");
    }
    return Unavailable("cannot lock " + lock_path + ": " + std::strerror(err));
  }
  return std::unique_ptr<ClientStateStore>(new ClientStateStore(dir, env, fd));
}

ClientStateStore::~ClientStateStore() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the flock
}

StatusOr<ClientState> ClientStateStore::Load() {
  const std::string state_path = Path("state.json");
  if (!env_->Exists(state_path)) return NotFound("no client state in " + dir_);
  ASSIGN_OR_RETURN(std::string text, env_->ReadFile(state_path));
  ClientState s;
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
    if (j.at("format").get<int>() != kStateFormat) {
      return DataLoss(state_path + ": unknown format " + j.at("format").dump());
    }
    generation_ = j.at("generation").get<int64_t>();
    s.next_counter = j.at("next_counter").get<int64_t>();
    s.trainer_step = j.at("trainer_step").get<int64_t>();
    s.totals = j.value("totals", nlohmann::json::object());
    optimizer_file_ = j.at("files").value("optimizer", "");
    residuals_file_ = j.at("files").value("residuals", "");
    pending_file_ = j.at("files").value("pending", "");
    pending_sha256_ = j.at("files").value("pending_sha256", "");
    if (j.contains("loader") && !j["loader"].is_null()) {
      ASSIGN_OR_RETURN(LoaderState ls, LoaderState::FromJson(j["loader"]));
      s.loader = ls;
    }
    if (j.contains("pending") && !j["pending"].is_null()) {
      ASSIGN_OR_RETURN(PendingUpdate p, PendingFromJson(j["pending"]));
      s.pending = std::move(p);
    }
  } catch (const std::exception& e) {
    return DataLoss(state_path + ": " + e.what());
  }
  if (!optimizer_file_.empty()) {
    auto t = LoadTensors(Path(optimizer_file_));
    if (!t.ok()) return DataLoss(t.status().message());
    s.optimizer = std::move(t).value();
  }
  if (!residuals_file_.empty()) {
    auto t = LoadTensors(Path(residuals_file_));
    if (!t.ok()) return DataLoss(t.status().message());
    for (auto& [name, tensor] : *t) {
      bool before = name.rfind("residual_before.", 0) == 0;
      if (!before && name.rfind("residual.", 0) != 0) continue;
      size_t index = 0;
      try {
        index = std::stoul(name.substr(name.find('.') + 1));
      } catch (const std::exception&) {
        index = SIZE_MAX;
      }
      if (index > 4096) return DataLoss(residuals_file_ + ": bad tensor name " + name);
      auto& vec = before ? s.residuals_before : s.residuals;
      if (vec.size() <= index) vec.resize(index + 1);
      torch::Tensor f = tensor.to(torch::kFloat32).contiguous();
      vec[index].assign(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
    }
  }
  if (s.pending) {
    if (pending_file_.empty()) return DataLoss(state_path + ": pending update without frames file");
    ASSIGN_OR_RETURN(std::string bytes, env_->ReadFile(Path(pending_file_)));
    if (Sha256Hex(bytes) != pending_sha256_) {
      return DataLoss("pending update " + Path(pending_file_) + ": sha256 differs from state.json");
    }
    RETURN_IF_ERROR(ParseFrames(bytes, &*s.pending, Path(pending_file_)));
    pending_update_id_ = s.pending->update_id;
  }
  return s;
}

Status ClientStateStore::Save(const ClientState& state, StateWrite what) {
  const int64_t gen = generation_ + 1;
  std::string optimizer_file = optimizer_file_, residuals_file = residuals_file_;
  std::string pending_file = pending_file_, pending_sha = pending_sha256_;
  if (what.optimizer || optimizer_file.empty()) {
    if (state.optimizer.empty()) {
      optimizer_file.clear();
    } else {
      optimizer_file = GenName("optimizer", gen, ".safetensors");
      RETURN_IF_ERROR(SaveTensors(Path(optimizer_file), state.optimizer));
    }
  }
  if (what.residuals || residuals_file.empty()) {
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    auto add = [&](const char* stem, const std::vector<std::vector<float>>& vecs) {
      for (size_t i = 0; i < vecs.size(); ++i) {
        if (vecs[i].empty()) continue;
        auto* data = const_cast<float*>(vecs[i].data());  // from_blob wants non-const; only read
        tensors.emplace_back(std::string(stem) + "." + std::to_string(i),
                             torch::from_blob(data, {static_cast<int64_t>(vecs[i].size())}, torch::kFloat32));
      }
    };
    add("residual", state.residuals);
    if (state.pending) add("residual_before", state.residuals_before);
    if (tensors.empty()) {
      residuals_file.clear();
    } else {
      residuals_file = GenName("residuals", gen, ".safetensors");
      RETURN_IF_ERROR(SaveTensors(Path(residuals_file), tensors));
    }
  }
  std::string pending_id;
  if (!state.pending) {
    pending_file.clear();
    pending_sha.clear();
  } else if (state.pending->update_id != pending_update_id_ || pending_file.empty()) {
    std::string bytes = SerializeFrames(*state.pending);
    pending_file = GenName("pending", gen, ".bin");
    pending_sha = Sha256Hex(bytes);
    RETURN_IF_ERROR(env_->WriteFileAtomic(Path(pending_file), bytes));
  }
  if (state.pending) pending_id = state.pending->update_id;

  nlohmann::json files = {{"optimizer", optimizer_file},
                          {"residuals", residuals_file},
                          {"pending", pending_file},
                          {"pending_sha256", pending_sha}};
  nlohmann::json j = {{"format", kStateFormat},
                      {"generation", gen},
                      {"next_counter", state.next_counter},
                      {"trainer_step", state.trainer_step},
                      {"loader", state.loader ? state.loader->ToJson() : nlohmann::json(nullptr)},
                      {"totals", state.totals},
                      {"pending", state.pending ? PendingToJson(*state.pending) : nlohmann::json(nullptr)},
                      {"files", files}};
  RETURN_IF_ERROR(env_->WriteFileAtomic(Path("state.json"), j.dump(2) + "\n"));
  generation_ = gen;
  optimizer_file_ = optimizer_file;
  residuals_file_ = residuals_file;
  pending_file_ = pending_file;
  pending_sha256_ = pending_sha;
  pending_update_id_ = pending_id;
  return RemoveUnreferenced();
}

Status ClientStateStore::RemoveUnreferenced() {
  ASSIGN_OR_RETURN(std::vector<std::string> names, env_->ListDir(dir_));
  for (const auto& name : names) {
    bool ours = name.rfind("optimizer-", 0) == 0 || name.rfind("residuals-", 0) == 0 ||
                name.rfind("pending-", 0) == 0;
    if (!ours || name == optimizer_file_ || name == residuals_file_ || name == pending_file_) continue;
    // Leftovers of older generations (or of a crash mid-save): never named by state.json.
    Status s = env_->RemoveFile(Path(name));
    if (!s.ok()) LOG(WARNING) << "client state: cannot remove " << name << ": " << s.message();
  }
  return Status::Ok();
}

}  // namespace fedps
