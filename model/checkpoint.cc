#include "model/checkpoint.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "common/sha256.h"
#include "model/layout.h"
#include "model/safetensors.h"

namespace fedps {
namespace {

constexpr int kCheckpointFormat = 1;
constexpr const char* kPrefix = "step-";

std::string StepName(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%s%08ld", kPrefix, static_cast<long>(step));
  return buf;
}

bool IsStepName(const std::string& name) {
  if (name.rfind(kPrefix, 0) != 0 || name.size() <= 5) return false;
  return std::all_of(name.begin() + 5, name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

StatusOr<nlohmann::json> ReadJson(const std::string& path, Env* env) {
  ASSIGN_OR_RETURN(std::string text, env->ReadFile(path));
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return DataLoss(path + " is not a JSON object");
  return j;
}

// Reads meta.json and checks the sha256 of every file it lists.
StatusOr<nlohmann::json> VerifyFolder(const std::string& dir, Env* env) {
  std::string meta_path = JoinPath(dir, "meta.json");
  if (!env->Exists(meta_path)) return DataLoss("checkpoint " + dir + " has no meta.json (incomplete write?)");
  ASSIGN_OR_RETURN(nlohmann::json meta, ReadJson(meta_path, env));
  if (meta.value("format", 0) != kCheckpointFormat) {
    return DataLoss("checkpoint " + dir + " has an unknown format " + meta.value("format", nlohmann::json()).dump());
  }
  if (!meta.contains("files") || !meta["files"].is_object()) return DataLoss("checkpoint " + dir + ": meta.json lacks files");
  for (const char* required : {"model.safetensors", "state.json", "tokenizer.model"}) {
    if (!meta["files"].contains(required)) return DataLoss("checkpoint " + dir + ": meta.json does not list " + required);
  }
  for (const auto& [name, hash] : meta["files"].items()) {
    if (name.find('/') != std::string::npos || name.empty() || name[0] == '.') {
      return DataLoss("checkpoint " + dir + ": bad file name in meta.json: " + name);
    }
    auto actual = Sha256File(JoinPath(dir, name));
    if (!actual.ok()) return DataLoss("checkpoint " + dir + ": " + actual.status().message());
    if (!hash.is_string() || *actual != hash.get<std::string>()) {
      return DataLoss("checkpoint " + dir + ": checksum of " + name + " does not match meta.json (corrupted)");
    }
  }
  return meta;
}

Status CopyFile(const std::string& from, const std::string& to, Env* env) {
  ASSIGN_OR_RETURN(std::string bytes, env->ReadFile(from));
  return env->WriteFileAtomic(to, bytes);
}

}  // namespace

StatusOr<std::string> SaveCheckpoint(const std::string& root, Model& model, const CheckpointSaveOptions& opts,
                                     Env* env) {
  if (opts.tokenizer_path.empty()) return InvalidArgument("a checkpoint needs the tokenizer path");
  RETURN_IF_ERROR(env->CreateDirs(root));
  const std::string name = StepName(opts.step);
  const std::string final_dir = JoinPath(root, name);
  const std::string tmp_dir = JoinPath(root, "." + name + ".tmp-" + std::to_string(::getpid()));
  (void)env->RemoveAll(tmp_dir);
  RETURN_IF_ERROR(env->CreateDirs(tmp_dir));

  auto write_all = [&]() -> Status {
    nlohmann::json files = nlohmann::json::object();
    const ModelConfig& config = model.config();
    std::map<std::string, std::string> st_meta = {{"format", "fedps"}, {"layout_hash", model.layout().hash()}};
    RETURN_IF_ERROR(SaveTensors(JoinPath(tmp_dir, "model.safetensors"), model.NamedParameters(), st_meta));
    if (!opts.optimizer.empty()) {
      RETURN_IF_ERROR(SaveTensors(JoinPath(tmp_dir, "optimizer.safetensors"), opts.optimizer, st_meta));
    }
    RETURN_IF_ERROR(CopyFile(opts.tokenizer_path, JoinPath(tmp_dir, "tokenizer.model"), env));
    nlohmann::json state = opts.state;
    state["step"] = opts.step;
    RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(tmp_dir, "state.json"), state.dump(2) + "\n"));
    for (const char* f : {"model.safetensors", "optimizer.safetensors", "tokenizer.model", "state.json"}) {
      std::string p = JoinPath(tmp_dir, f);
      if (!env->Exists(p)) continue;
      ASSIGN_OR_RETURN(std::string h, Sha256File(p));
      files[f] = h;
    }
    nlohmann::json meta = {{"format", kCheckpointFormat},
                           {"step", opts.step},
                           {"model", config.ToJson()},
                           {"layout_hash", model.layout().hash()},
                           {"tokenizer_sha256", opts.tokenizer_sha256},
                           {"files", files}};
    return env->WriteFileAtomic(JoinPath(tmp_dir, "meta.json"), meta.dump(2) + "\n");
  };
  Status s = write_all();
  if (!s.ok()) {
    (void)env->RemoveAll(tmp_dir);
    return s.WithContext("writing checkpoint " + final_dir);
  }
  // Replace an existing folder of the same step (a resumed run re-saving it).
  if (env->Exists(final_dir)) {
    std::string old = final_dir + ".old-" + std::to_string(::getpid());
    RETURN_IF_ERROR(env->Rename(final_dir, old));
    RETURN_IF_ERROR(env->Rename(tmp_dir, final_dir));
    (void)env->RemoveAll(old);
  } else {
    RETURN_IF_ERROR(env->Rename(tmp_dir, final_dir));
  }
  RETURN_IF_ERROR(env->WriteFileAtomic(JoinPath(root, "latest"), name + "\n"));

  // Keep the newest `keep` checkpoints (by step), never the one just written.
  ASSIGN_OR_RETURN(auto names, env->ListDir(root));
  std::vector<std::string> steps;
  for (const auto& n : names) {
    if (IsStepName(n) && env->IsDirectory(JoinPath(root, n))) steps.push_back(n);
  }
  std::sort(steps.begin(), steps.end());  // zero-padded, so lexical = numeric
  int64_t excess = static_cast<int64_t>(steps.size()) - std::max<int64_t>(1, opts.keep);
  for (int64_t i = 0; i < excess; ++i) {
    if (steps[i] == name) continue;
    Status r = env->RemoveAll(JoinPath(root, steps[i]));
    if (!r.ok()) LOG(WARNING) << "could not remove old checkpoint: " << r.ToString();
  }
  return final_dir;
}

StatusOr<std::string> LatestValidCheckpoint(const std::string& root, Env* env) {
  if (!env->IsDirectory(root)) return NotFound("no checkpoints folder " + root);
  ASSIGN_OR_RETURN(auto names, env->ListDir(root));
  std::vector<std::string> steps;
  for (const auto& n : names) {
    if (IsStepName(n) && env->IsDirectory(JoinPath(root, n))) steps.push_back(n);
  }
  std::sort(steps.rbegin(), steps.rend());
  for (const auto& n : steps) {
    std::string dir = JoinPath(root, n);
    auto meta = VerifyFolder(dir, env);
    if (meta.ok()) return dir;
    LOG(WARNING) << "skipping checkpoint " << dir << ": " << meta.status().message();
  }
  return NotFound("no valid checkpoint under " + root);
}

StatusOr<CheckpointContents> LoadCheckpoint(const std::string& path, bool with_optimizer, Env* env) {
  std::string dir = path;
  if (!env->Exists(JoinPath(path, "meta.json")) && env->Exists(JoinPath(path, "latest"))) {
    ASSIGN_OR_RETURN(std::string latest, env->ReadFile(JoinPath(path, "latest")));
    while (!latest.empty() && (latest.back() == '\n' || latest.back() == ' ')) latest.pop_back();
    if (!IsStepName(latest)) return DataLoss(JoinPath(path, "latest") + " does not name a checkpoint");
    dir = JoinPath(path, latest);
  } else if (!env->IsDirectory(path)) {
    return NotFound("no checkpoint at " + path);
  }
  ASSIGN_OR_RETURN(nlohmann::json meta, VerifyFolder(dir, env));
  CheckpointContents c;
  c.path = dir;
  if (!meta.contains("model")) return DataLoss("checkpoint " + dir + ": meta.json lacks the model config");
  auto config = ModelConfig::FromJson(meta["model"]);
  if (!config.ok()) return DataLoss("checkpoint " + dir + ": " + config.status().message());
  c.model_config = *config;
  c.layout_hash = meta.value("layout_hash", "");
  c.tokenizer_sha256 = meta.value("tokenizer_sha256", "");
  c.step = meta.value("step", int64_t{0});
  ParamLayout layout = ParamLayout::ForModel(c.model_config);
  if (layout.hash() != c.layout_hash) {
    return DataLoss("checkpoint " + dir + ": layout hash " + c.layout_hash + " does not match its model config (" +
                    layout.hash() + ")");
  }
  ASSIGN_OR_RETURN(c.state, ReadJson(JoinPath(dir, "state.json"), env));
  ASSIGN_OR_RETURN(auto params, LoadTensors(JoinPath(dir, "model.safetensors")));
  for (auto& [name, t] : params) c.params[name] = std::move(t);
  for (const auto& e : layout.entries()) {
    auto it = c.params.find(e.name);
    if (it == c.params.end()) return DataLoss("checkpoint " + dir + " lacks parameter " + e.name);
    if (it->second.sizes().vec() != e.shape || it->second.scalar_type() != torch::kFloat32) {
      return DataLoss("checkpoint " + dir + ": parameter " + e.name + " has the wrong shape or dtype");
    }
  }
  if (with_optimizer) {
    std::string opt_path = JoinPath(dir, "optimizer.safetensors");
    if (!env->Exists(opt_path)) return DataLoss("checkpoint " + dir + " holds no optimizer state");
    ASSIGN_OR_RETURN(auto opt, LoadTensors(opt_path));
    for (auto& [name, t] : opt) c.optimizer[name] = std::move(t);
  }
  return c;
}

StatusOr<std::unique_ptr<Model>> ModelFromCheckpoint(const CheckpointContents& ckpt, torch::Device device) {
  ASSIGN_OR_RETURN(auto model, Model::Create(ckpt.model_config, device, /*seed=*/0));
  try {
    torch::NoGradGuard no_grad;
    for (auto& [name, view] : model->NamedParameters()) {
      auto it = ckpt.params.find(name);
      if (it == ckpt.params.end()) return DataLoss("checkpoint " + ckpt.path + " lacks parameter " + name);
      view.copy_(it->second);
    }
  } catch (const std::exception& e) {
    return Internal(std::string("loading weights: ") + e.what());
  }
  return model;
}

}  // namespace fedps
