// Checkpoints of a training run: everything needed to continue bit for bit.
//
// A checkpoint is a folder <root>/step-<NNNNNNNN>/ holding
//   model.safetensors      fp32 parameters under their layout (= Hugging Face) names
//   optimizer.safetensors  AdamW moments and step counts (absent for weights-only)
//   tokenizer.model        a copy, so a checkpoint exports and evaluates on its own
//   state.json             global step, tokens, loader state, run extras
//   meta.json              format, model config, layout hash, tokenizer sha256 and the
//                          sha256 of every other file; written last
// It is written under a temporary name and renamed into place, then <root>/latest
// (a one-line file) is replaced atomically, then old checkpoints beyond `keep`
// are removed. A reader verifies every checksum in meta.json before using a byte,
// so a torn or corrupted checkpoint is refused (DataLoss) and never used.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "common/env.h"
#include "common/status.h"
#include "model/decoder.h"
#include "model/presets.h"

namespace fedps {

struct CheckpointContents {
  std::string path;                    // the step folder
  ModelConfig model_config;
  std::string layout_hash;
  std::string tokenizer_sha256;
  int64_t step = 0;
  nlohmann::json state;                // state.json
  std::map<std::string, torch::Tensor> params;     // name -> CPU fp32
  std::map<std::string, torch::Tensor> optimizer;  // empty when weights-only
  std::string tokenizer_path() const { return path + "/tokenizer.model"; }
};

struct CheckpointSaveOptions {
  int64_t step = 0;
  nlohmann::json state = nlohmann::json::object();  // loader state, tokens, extras
  std::vector<std::pair<std::string, torch::Tensor>> optimizer;  // may be empty
  std::string tokenizer_path;          // copied beside the weights
  std::string tokenizer_sha256;
  int64_t keep = 2;                    // newest checkpoints kept under root
};

// Writes <root>/step-<step>/ and updates <root>/latest; returns the folder.
StatusOr<std::string> SaveCheckpoint(const std::string& root, Model& model,
                                     const CheckpointSaveOptions& opts, Env* env = Env::Default());

// Loads and verifies a step folder, or a root (then its `latest`).
StatusOr<CheckpointContents> LoadCheckpoint(const std::string& path, bool with_optimizer = true,
                                            Env* env = Env::Default());

// The newest checkpoint under root that verifies; corrupt ones are skipped with a
// warning. NotFound when there is none.
StatusOr<std::string> LatestValidCheckpoint(const std::string& root, Env* env = Env::Default());

// Builds a model on `device` from a loaded checkpoint's config and weights.
StatusOr<std::unique_ptr<Model>> ModelFromCheckpoint(const CheckpointContents& ckpt, torch::Device device);

}  // namespace fedps
