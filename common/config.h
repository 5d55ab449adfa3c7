// Run configuration: TOML files under configs/ parsed into Options structs.
//
// This is the one place that reads TOML. Every field has a default (written
// beside it); a key that is unknown, of the wrong type or impossible is an error
// that names the key and the file. Relative paths in a config are resolved
// against the current working folder, like paths on the command line.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"

namespace fedps {

struct RunOptions {
  std::string id = "fedps";   // run id (key prefix in Redis, shown by the tools)
  std::string dir = "runs/fedps";  // run folder: metrics.jsonl, checkpoints, reports
  uint64_t seed = 1234;       // seeds model init, data order and every RNG of the run
};

// A model preset plus optional overrides; 0 / negative means "from the preset".
struct ModelOptions {
  std::string preset = "tiny";  // tiny, 20m, 125m, 350m, 1.3b, 3b, 7b
  int64_t vocab_size = 0;       // 0: the tokenizer's size rounded up to a multiple of 64
  int64_t d_model = 0;
  int64_t n_layers = 0;
  int64_t n_heads = 0;
  int64_t n_kv_heads = 0;       // grouped-query attention; n_heads % n_kv_heads == 0
  int64_t ffn_hidden = 0;       // SwiGLU hidden width
  int64_t max_seq_len = 0;
  double rope_theta = 0;
  double norm_eps = 0;
  int tie_embeddings = -1;      // -1: preset, 0: untied, 1: tied
  double init_std = 0.02;       // normal init of weights; output projections scaled by 1/sqrt(2L)
};

struct TokenizerOptions {
  int64_t vocab_size = 4096;        // BPE vocabulary when training a tokenizer
  int64_t max_training_bytes = 20 << 20;  // text sampled to train it
};

struct DataOptions {
  std::string prepared = "data/prepared";  // folder written by `fedps-ctl prepare` (manifest.json)
  std::string tokenizer = "";       // tokenizer.model; "" = <prepared>/tokenizer.model
  std::string domains = "";         // comma-separated domains to train on; "" = all
};

struct TrainOptions {
  std::string device = "auto";  // auto (CUDA when present), cpu, cuda, cuda:N
  int64_t seq_len = 128;        // tokens per training sequence
  int64_t micro_batch = 8;      // sequences per forward/backward
  int64_t grad_accum = 1;       // micro-batches per optimizer step
  int64_t steps = 200;          // total optimizer steps (schedule length)
  double time_budget_s = 0;     // stop after this many seconds (0: no budget)
  double lr = 3e-3;             // peak inner learning rate
  double min_lr_ratio = 0.1;    // final lr = lr * min_lr_ratio
  int64_t warmup_steps = 20;
  std::string schedule = "cosine";  // cosine, wsd (warm-up, stable, decay), constant
  double decay_fraction = 0.2;  // wsd: final fraction of steps spent decaying
  double weight_decay = 0.1;    // AdamW decoupled decay on matrices (not norms)
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double grad_clip = 1.0;       // max global grad norm (0: off)
  int64_t log_every = 10;       // steps between progress lines / metrics records
  int64_t eval_every = 100;     // steps between validation passes (0: only at the end)
  int64_t eval_batches = 16;    // micro-batches per domain per validation pass
  int64_t checkpoint_every = 100;  // steps between checkpoints (0: only at the end)
  int64_t keep_checkpoints = 2;
  bool bf16 = true;             // bf16 autocast on CUDA (CPU always computes in fp32)
  int64_t threads = 0;          // CPU intra-op threads (0: LibTorch's default)
};

struct RunConfig {
  std::string path;  // the file it came from ("" for defaults)
  RunOptions run;
  ModelOptions model;
  TokenizerOptions tokenizer;
  DataOptions data;
  TrainOptions train;
};

// Parses and validates a config file.
StatusOr<RunConfig> LoadConfig(const std::string& path);
// Parses TOML text; `origin` names it in errors.
StatusOr<RunConfig> ParseConfig(const std::string& toml_text, const std::string& origin);

}  // namespace fedps
