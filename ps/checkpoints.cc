// CheckpointStore: see the header.
#include "ps/checkpoints.h"

#include <glog/logging.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>

#include "common/safetensors.h"
#include "common/sha256.h"

namespace fedps {

namespace {

constexpr const char* kCheckpointFormat = "fedps-shard-checkpoint-1";
constexpr const char* kTmpPrefix = ".tmp-";
constexpr const char* kOldPrefix = ".old-";

std::string Name(int64_t version) {
  char name[32];
  std::snprintf(name, sizeof(name), "v-%012" PRId64, version);
  return name;
}

StatusOr<int64_t> JsonInt(const nlohmann::json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer()) {
    return DataLoss(std::string("missing integer '") + key + "'");
  }
  return j[key].get<int64_t>();
}

}  // namespace

CheckpointStore::CheckpointStore(std::string root, CheckpointIdentity identity, int keep, Env* env)
    : root_(std::move(root)), id_(std::move(identity)), keep_(keep), env_(env) {}

std::string CheckpointStore::FolderOf(int64_t version) const { return JoinPath(root_, Name(version)); }

std::vector<std::string> CheckpointStore::Folders() const {
  std::vector<std::string> out;
  auto names = env_->ListDir(root_);
  if (!names.ok()) return out;
  for (const std::string& n : *names) {
    if (n.size() == 14 && n.rfind("v-", 0) == 0 &&
        std::all_of(n.begin() + 2, n.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      out.push_back(n);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

Status CheckpointStore::Recover() {
  RETURN_IF_ERROR(env_->CreateDirs(root_));
  ASSIGN_OR_RETURN(auto names, env_->ListDir(root_));
  for (const std::string& n : names) {
    const std::string path = JoinPath(root_, n);
    if (n.rfind(kTmpPrefix, 0) == 0) {
      RETURN_IF_ERROR(env_->RemoveAll(path));
    } else if (n.rfind(kOldPrefix, 0) == 0) {
      const std::string original = JoinPath(root_, n.substr(std::strlen(kOldPrefix)));
      if (env_->Exists(original)) {
        RETURN_IF_ERROR(env_->RemoveAll(path));
      } else {
        RETURN_IF_ERROR(env_->Rename(path, original));
      }
    }
  }
  return Status::Ok();
}

StatusOr<std::string> CheckpointStore::Write(const CheckpointView& view, const std::string& reason) {
  const std::string name = Name(view.version);
  const std::string folder = JoinPath(root_, name);
  const std::string tmp = JoinPath(root_, kTmpPrefix + name);
  env_->RemoveAll(tmp).IgnoreError();
  RETURN_IF_ERROR(env_->CreateDirs(tmp));

  std::vector<std::pair<std::string, TensorRef>> tensors;
  auto add = [&](const std::string& n, std::span<const float> data) {
    TensorRef t;
    t.dtype = DType::kF32;
    t.shape = {static_cast<int64_t>(data.size())};
    t.data = data.data();
    t.bytes = data.size() * sizeof(float);
    tensors.emplace_back(n, t);
  };
  add("slice", view.slice);
  for (const auto& [n, data] : view.optimizer_tensors) add("optimizer." + n, data);
  RETURN_IF_ERROR(
      WriteSafetensors(JoinPath(tmp, "slice.safetensors"), tensors, {{"version", std::to_string(view.version)}}, env_));
  nlohmann::json state = {{"format", kCheckpointFormat},
                          {"version", view.version},
                          {"run_id", id_.run_id},
                          {"layout_hash", id_.layout_hash},
                          {"shard_index", id_.shard_index},
                          {"num_shards", id_.num_shards},
                          {"slice_begin", id_.slice_begin},
                          {"slice_elements", id_.slice_elements},
                          {"optimizer_name", id_.optimizer_name},
                          {"optimizer", view.optimizer_json},
                          {"reference_tokens", view.reference_tokens},
                          {"applied_updates", view.applied_updates},
                          {"skipped_updates", view.skipped_updates},
                          {"last_update_id", view.last_update_id},
                          {"last_chain", view.last_chain},
                          {"reason", reason},
                          {"wall_ms", env_->clock()->WallMicros() / 1000}};
  RETURN_IF_ERROR(env_->WriteFileAtomic(JoinPath(tmp, "state.json"), state.dump(2)));
  nlohmann::json meta = {{"format", kCheckpointFormat}, {"version", view.version}, {"files", nlohmann::json::object()}};
  for (const char* f : {"slice.safetensors", "state.json"}) {
    ASSIGN_OR_RETURN(std::string sha, Sha256File(JoinPath(tmp, f)));
    meta["files"][f] = sha;
  }
  RETURN_IF_ERROR(env_->WriteFileAtomic(JoinPath(tmp, "meta.json"), meta.dump(2)));
  const std::string aside = JoinPath(root_, kOldPrefix + name);
  const bool replace = env_->Exists(folder);
  if (replace) {
    RETURN_IF_ERROR(env_->RemoveAll(aside));
    RETURN_IF_ERROR(env_->Rename(folder, aside));
  }
  RETURN_IF_ERROR(env_->Rename(tmp, folder));
  RETURN_IF_ERROR(env_->SyncDir(root_));
  if (replace) {
    Status removed = env_->RemoveAll(aside);
    if (!removed.ok()) LOG(WARNING) << "removing the replaced checkpoint: " << removed.ToString();
  }
  return folder;
}

StatusOr<LoadedCheckpoint> CheckpointStore::Load(const std::string& folder) const {
  ASSIGN_OR_RETURN(std::string meta_text, env_->ReadFile(JoinPath(folder, "meta.json")));
  auto meta = nlohmann::json::parse(meta_text, nullptr, false);
  if (!meta.is_object() || !meta.contains("files") || !meta["files"].is_object()) {
    return DataLoss(folder + ": bad meta.json");
  }
  for (const char* f : {"slice.safetensors", "state.json"}) {
    if (!meta["files"].contains(f) || !meta["files"][f].is_string()) return DataLoss(folder + ": meta.json lacks " + f);
    ASSIGN_OR_RETURN(std::string sha, Sha256File(JoinPath(folder, f)));
    if (sha != meta["files"][f].get<std::string>()) return DataLoss(folder + "/" + f + ": checksum mismatch");
  }
  ASSIGN_OR_RETURN(std::string state_text, env_->ReadFile(JoinPath(folder, "state.json")));
  auto state = nlohmann::json::parse(state_text, nullptr, false);
  if (!state.is_object()) return DataLoss(folder + ": bad state.json");
  LoadedCheckpoint out;
  out.folder = folder;
  ASSIGN_OR_RETURN(out.version, JsonInt(state, "version"));
  // A checkpoint of another run / layout / slice is not a damaged file: refuse to start.
  auto same = [&](const char* k, const nlohmann::json& want) -> Status {
    if (!state.contains(k) || state[k] != want) {
      return FailedPrecondition(folder + ": " + k + " is " + (state.contains(k) ? state[k].dump() : "absent") +
                                ", this shard runs with " + want.dump() + " (wrong --dir?)");
    }
    return Status::Ok();
  };
  RETURN_IF_ERROR(same("run_id", id_.run_id));
  RETURN_IF_ERROR(same("layout_hash", id_.layout_hash));
  RETURN_IF_ERROR(same("shard_index", id_.shard_index));
  RETURN_IF_ERROR(same("slice_begin", id_.slice_begin));
  RETURN_IF_ERROR(same("slice_elements", id_.slice_elements));
  RETURN_IF_ERROR(same("optimizer_name", id_.optimizer_name));

  ASSIGN_OR_RETURN(auto file, ReadSafetensors(JoinPath(folder, "slice.safetensors"), env_));
  const TensorBytes* slice = file.Find("slice");
  if (slice == nullptr || slice->dtype != DType::kF32 || slice->numel() != id_.slice_elements) {
    return DataLoss(folder + ": no F32 'slice' of " + std::to_string(id_.slice_elements) + " values");
  }
  out.slice.resize(static_cast<size_t>(id_.slice_elements));
  std::memcpy(out.slice.data(), slice->data.data(), slice->data.size());
  const std::string prefix = "optimizer.";
  for (const auto& [n, t] : file.tensors) {
    if (n.rfind(prefix, 0) != 0) continue;
    if (t.dtype != DType::kF32) return DataLoss(folder + ": " + n + " is not F32");
    std::vector<float> v(static_cast<size_t>(t.numel()));
    std::memcpy(v.data(), t.data.data(), t.data.size());
    out.optimizer_tensors.emplace_back(n.substr(prefix.size()), std::move(v));
  }
  out.optimizer_json = state.contains("optimizer") ? state["optimizer"] : nlohmann::json();
  out.reference_tokens = state.value("reference_tokens", int64_t{0});
  out.applied_updates = state.value("applied_updates", int64_t{0});
  out.skipped_updates = state.value("skipped_updates", int64_t{0});
  out.last_update_id = state.value("last_update_id", std::string());
  out.last_chain = state.value("last_chain", std::string());
  out.wall_ms = state.value("wall_ms", int64_t{0});
  return out;
}

StatusOr<std::optional<LoadedCheckpoint>> CheckpointStore::LoadNewest() const {
  std::vector<std::string> folders = Folders();
  for (auto it = folders.rbegin(); it != folders.rend(); ++it) {
    const std::string folder = JoinPath(root_, *it);
    auto loaded = Load(folder);
    if (loaded.ok()) return std::optional<LoadedCheckpoint>(std::move(loaded).value());
    if (loaded.status().code() == StatusCode::kFailedPrecondition) return loaded.status();
    LOG(WARNING) << "skipping checkpoint " << folder << ": " << loaded.status().ToString();
  }
  if (!folders.empty()) {
    // Checkpoints exist but none verifies: starting from the initial model would silently
    // lose every update before the replayable log. The operator decides.
    return DataLoss("no checkpoint under " + root_ + " verifies");
  }
  return std::optional<LoadedCheckpoint>();
}

int64_t CheckpointStore::Prune() {
  std::vector<std::string> folders = Folders();
  while (static_cast<int>(folders.size()) > keep_) {
    Status s = env_->RemoveAll(JoinPath(root_, folders.front()));
    if (!s.ok()) LOG(WARNING) << "pruning checkpoints: " << s.ToString();
    folders.erase(folders.begin());
  }
  return folders.empty() ? -1 : std::stoll(folders.front().substr(2));
}

}  // namespace fedps
