// Run configuration: TOML files under configs/ parsed into Options structs.
//
// This is the one place that reads TOML. Every field has a default (written
// beside it); a key that is unknown, of the wrong type or impossible is an error
// that names the key and the file. Relative paths in a config are resolved
// against the current working folder, like paths on the command line.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

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
  // Whose steps the schedule counts: local (this process's own optimizer steps) or
  // federation (a client starts each cycle at the federation's committed inner steps,
  // FederationScheduleStep in model/trainer.h; train.steps then counts all clients' steps).
  std::string schedule_clock = "local";
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
  // LM head + loss fused, this many tokens at a time (model/lm_head_loss.h; the full logits
  // never exist); 0: the logits, then cross_entropy.
  int64_t loss_chunk_rows = 0;
};

// [compression]: how updates and model slices travel (compression/codec.h).
struct CompressionOptions {
  std::string codec = "bf16";   // fp32 (lossless), bf16, int8 (blockwise absmax), topk (sparse, push only)
  int64_t zstd_level = 1;       // 1 measured best for pseudo-gradients (docs/compression.md)
  int64_t threads = 0;          // encode/decode threads (0: cores, at most 4)
  int64_t int8_block = 256;     // values per int8 scale
  double topk_density = 0.01;   // topk: the fraction of each frame's values sent
  bool error_feedback = true;   // clients carry the coding error into their next update
};

// [ps]: the parameter-server shards and the Redis registry they share with clients.
struct PsOptions {
  int64_t num_shards = 2;            // slices of the flat model, one fedps-shard each
  std::string redis = "127.0.0.1:6379";  // host:port of the Redis registry
  std::string redis_password = "";   // AUTH password ("" = none)
  std::string host = "127.0.0.1";    // address shards listen on and advertise
  int64_t base_port = 7700;          // shard i listens on base_port + i (0: any free port)
  int64_t frame_elements = 1 << 20;  // values per transfer frame (4 MiB of fp32)
  std::string staleness = "polynomial";  // constant, polynomial (1+s)^-a, hinge
  double staleness_a = 0.5;
  double staleness_b = 4;            // hinge: full weight up to this staleness
  int64_t max_staleness = 64;        // older updates are refused (-1: no limit)
  std::string optimizer = "delayed_nesterov";  // sgd, nesterov, delayed_nesterov, adam
  double outer_lr = 0;               // 0: the optimizer's default (sgd 1.0, nesterov 0.7, adam 1e-3)
  double momentum = 0.9;
  int64_t dn_period = 4;             // delayed Nesterov: momentum step every N arrivals
  double dn_gradient_scale = -1;     // delayed Nesterov: plain part lr * c * g per arrival (-1: c = 1/dn_period)
  int64_t outer_warmup_steps = 0;    // outer lr ramps linearly over this many outer steps (0: off)
  int64_t buffer_size = 1;           // FedBuff: updates aggregated per outer step
  bool weight_by_tokens = false;     // scale each update by tokens / reference_tokens
  int64_t reference_tokens = 0;      // 0: the first update's tokens
  int64_t checkpoint_every = 20;     // applied updates between shard checkpoints (0: on demand)
  int64_t shard_lease_ms = 5000;     // a shard's directory entry expires without heartbeats
  int64_t stage_ttl_ms = 600000;     // staged, uncommitted slices expire after this
  int64_t snapshot_ttl_ms = 30000;   // pinned pull snapshots are kept this long after use
  // Shards and clients that cannot reach Redis (at start, joining) wait this long for it,
  // with a progress line every few seconds, then exit with an error (0: wait forever).
  int64_t redis_wait_ms = 600000;
  // async: shards apply every update as it commits, weighted by staleness. sync: synchronous
  // rounds (ps/rounds.h): every round's clients train from the round's base version, the
  // shards average its pseudo-gradients by tokens and take one outer step per round.
  std::string mode = "async";
  // sync: updates a round waits for; 0 = the members live when the round opens.
  int64_t round_clients = 0;
  // sync: a round still open this long after its first update was committed closes without
  // the clients that did not commit (their late updates are refused).
  int64_t round_timeout_ms = 600000;
  // Update norm bound (docs/security.md): a shard refuses an update (BAD_REQUEST, before it
  // is staged, so it is never committed) whose norm on the shard's slice exceeds
  // norm_bound_factor x the median slice norm of the last norm_bound_window updates it
  // applied; it holds once norm_bound_warmup of them are known. false: off.
  bool norm_bound = true;
  double norm_bound_factor = 10;
  int64_t norm_bound_window = 50;
  int64_t norm_bound_warmup = 5;
};

// [client]: a federation member (fedps-client).
struct ClientOptions {
  int64_t local_steps = 50;          // inner steps per update (H)
  double local_time_s = 0;           // > 0: train for this long instead (fast clients do more)
  int64_t max_updates = 0;           // stop after this many pushed updates (0: until stopped)
  int64_t lease_ms = 10000;          // membership lease; expires without heartbeats
  int64_t heartbeat_ms = 2000;
  int64_t retry_initial_ms = 200;    // backoff when a shard or Redis is unavailable
  int64_t retry_max_ms = 5000;
  double throttle = 1.0;             // > 1: sleep so each step takes this many times longer (tests, demo)
  int64_t eval_every_versions = 10;  // evaluator mode: evaluate every N global versions
  // Updates in flight while the next one trains (docs/client.md): 1 = encode, push and
  // commit update n (and pull the next model) in the background while n+1 trains; 0 = one
  // after the other.
  int64_t pipeline_depth = 1;
  // Write the inner optimizer's moments to the state folder every N updates (and on a
  // clean stop); 0 = never (a restarted client starts with fresh moments).
  int64_t optimizer_save_every = 10;
  // Refuse to start a cycle unless the state folder's file system has this much free space
  // beyond what the cycle will write (docs/client.md gives the bound).
  int64_t min_free_disk_mb = 256;
  // Connections per shard that push frames of one update, and pull frames of a snapshot,
  // at once (interleaved), so that a link's round-trip time is paid once per `streams`
  // frames.
  int64_t streams_per_shard = 2;
  // Zero the inner AdamW moments and step counts each time a pulled model is loaded, so
  // every update's inner optimizer starts fresh (false: the moments carry across updates).
  bool reset_inner_optimizer = false;
};

// [limits]: what one shard accepts from the network before and while it commits memory,
// disk or a thread to it (docs/security.md). Each refusal names the limit it hit.
struct LimitsOptions {
  int64_t max_connections = 256;        // open RPC connections per shard; more are closed at accept
  int64_t idle_timeout_ms = 300000;     // a connection that starts no request for this long is closed
  int64_t read_timeout_ms = 60000;      // a request must arrive in full this long after its first byte
  int64_t max_message_bytes = 512 << 20;  // largest RPC message; a larger one is read away and refused (BAD_REQUEST)
  int64_t receiving_updates = 16;       // updates being received at once, all clients (beyond: UNAVAILABLE)
  int64_t receiving_updates_per_client = 4;
  // Frames held in memory for one client's updates being received; keep it above one
  // encoded slice (slice values x codec bytes), or no update of that size can arrive.
  int64_t receiving_bytes_per_client = int64_t{16} << 30;
  int64_t receive_timeout_ms = 120000;  // a partly received update idle this long is dropped
  int64_t staged_updates = 1024;        // staged, uncommitted updates, all clients
  int64_t staged_bytes = int64_t{256} << 30;  // their frames on disk, all clients
  int64_t staged_updates_per_client = 16;
  int64_t staged_bytes_per_client = int64_t{32} << 30;
};

struct RunConfig {
  std::string path;  // the file it came from ("" for defaults)
  RunOptions run;
  ModelOptions model;
  TokenizerOptions tokenizer;
  DataOptions data;
  TrainOptions train;
  CompressionOptions compression;
  PsOptions ps;
  ClientOptions client;
  LimitsOptions limits;
};

// The [ps] options every shard and client of a run must share because they decide how an
// update is weighted, refused or applied: staleness (function, a, b, max_staleness) and the
// outer optimizer (optimizer, outer_lr, momentum, dn_period, dn_gradient_scale,
// outer_warmup_steps, buffer_size, weight_by_tokens, reference_tokens) and the mode (mode,
// round_clients, round_timeout_ms). Part of the run's
// identity in the registry (ps/registry.h).
nlohmann::json PsApplyConfig(const PsOptions& ps);

// "a,b,,c" -> {"a", "b", "c"} (config lists such as data.domains).
std::vector<std::string> SplitCommaList(const std::string& list);

// Parses and validates a config file.
StatusOr<RunConfig> LoadConfig(const std::string& path);
// Parses TOML text; `origin` names it in errors.
StatusOr<RunConfig> ParseConfig(const std::string& toml_text, const std::string& origin);

}  // namespace fedps
