#include "common/config.h"

#include <functional>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>
#include <toml++/toml.h>

#include "common/env.h"

namespace fedps {
namespace {

// Binds one TOML key to one Options field, with a type check.
using Setter = std::function<Status(const toml::node&, const std::string& where)>;

Setter Bind(std::string* field) {
  return [field](const toml::node& n, const std::string& where) -> Status {
    if (!n.is_string()) return InvalidArgument(where + " must be a string");
    *field = n.as_string()->get();
    return Status::Ok();
  };
}
Setter Bind(int64_t* field) {
  return [field](const toml::node& n, const std::string& where) -> Status {
    if (!n.is_integer()) return InvalidArgument(where + " must be an integer");
    *field = n.as_integer()->get();
    return Status::Ok();
  };
}
Setter Bind(uint64_t* field) {
  return [field](const toml::node& n, const std::string& where) -> Status {
    if (!n.is_integer() || n.as_integer()->get() < 0)
      return InvalidArgument(where + " must be a non-negative integer");
    *field = static_cast<uint64_t>(n.as_integer()->get());
    return Status::Ok();
  };
}
Setter Bind(double* field) {
  return [field](const toml::node& n, const std::string& where) -> Status {
    if (n.is_floating_point()) {
      *field = n.as_floating_point()->get();
    } else if (n.is_integer()) {
      *field = static_cast<double>(n.as_integer()->get());
    } else {
      return InvalidArgument(where + " must be a number");
    }
    return Status::Ok();
  };
}
Setter Bind(bool* field) {
  return [field](const toml::node& n, const std::string& where) -> Status {
    if (!n.is_boolean()) return InvalidArgument(where + " must be true or false");
    *field = n.as_boolean()->get();
    return Status::Ok();
  };
}
// tie_embeddings: a boolean in TOML, -1 ("from the preset") when absent.
Setter BindTristate(int* field) {
  return [field](const toml::node& n, const std::string& where) -> Status {
    if (!n.is_boolean()) return InvalidArgument(where + " must be true or false");
    *field = n.as_boolean()->get() ? 1 : 0;
    return Status::Ok();
  };
}

using Section = std::map<std::string, Setter>;

std::map<std::string, Section> Schema(RunConfig& c) {
  std::map<std::string, Section> s;
  s["run"] = {{"id", Bind(&c.run.id)}, {"dir", Bind(&c.run.dir)}, {"seed", Bind(&c.run.seed)}};
  auto& m = c.model;
  s["model"] = {{"preset", Bind(&m.preset)},         {"vocab_size", Bind(&m.vocab_size)},
                {"d_model", Bind(&m.d_model)},       {"n_layers", Bind(&m.n_layers)},
                {"n_heads", Bind(&m.n_heads)},       {"n_kv_heads", Bind(&m.n_kv_heads)},
                {"ffn_hidden", Bind(&m.ffn_hidden)}, {"max_seq_len", Bind(&m.max_seq_len)},
                {"rope_theta", Bind(&m.rope_theta)}, {"norm_eps", Bind(&m.norm_eps)},
                {"tie_embeddings", BindTristate(&m.tie_embeddings)},
                {"init_std", Bind(&m.init_std)}};
  s["tokenizer"] = {{"vocab_size", Bind(&c.tokenizer.vocab_size)},
                    {"max_training_bytes", Bind(&c.tokenizer.max_training_bytes)}};
  s["data"] = {{"prepared", Bind(&c.data.prepared)},
               {"tokenizer", Bind(&c.data.tokenizer)},
               {"domains", Bind(&c.data.domains)}};
  auto& t = c.train;
  s["train"] = {{"device", Bind(&t.device)},
                {"seq_len", Bind(&t.seq_len)},
                {"micro_batch", Bind(&t.micro_batch)},
                {"grad_accum", Bind(&t.grad_accum)},
                {"steps", Bind(&t.steps)},
                {"time_budget_s", Bind(&t.time_budget_s)},
                {"lr", Bind(&t.lr)},
                {"min_lr_ratio", Bind(&t.min_lr_ratio)},
                {"warmup_steps", Bind(&t.warmup_steps)},
                {"schedule", Bind(&t.schedule)},
                {"schedule_clock", Bind(&t.schedule_clock)},
                {"decay_fraction", Bind(&t.decay_fraction)},
                {"weight_decay", Bind(&t.weight_decay)},
                {"beta1", Bind(&t.beta1)},
                {"beta2", Bind(&t.beta2)},
                {"eps", Bind(&t.eps)},
                {"grad_clip", Bind(&t.grad_clip)},
                {"log_every", Bind(&t.log_every)},
                {"eval_every", Bind(&t.eval_every)},
                {"eval_batches", Bind(&t.eval_batches)},
                {"checkpoint_every", Bind(&t.checkpoint_every)},
                {"keep_checkpoints", Bind(&t.keep_checkpoints)},
                {"bf16", Bind(&t.bf16)},
                {"threads", Bind(&t.threads)},
                {"loss_chunk_rows", Bind(&t.loss_chunk_rows)}};
  auto& z = c.compression;
  s["compression"] = {{"codec", Bind(&z.codec)},
                      {"zstd_level", Bind(&z.zstd_level)},
                      {"threads", Bind(&z.threads)},
                      {"int8_block", Bind(&z.int8_block)},
                      {"topk_density", Bind(&z.topk_density)},
                      {"error_feedback", Bind(&z.error_feedback)}};
  auto& p = c.ps;
  s["ps"] = {{"num_shards", Bind(&p.num_shards)},
             {"redis", Bind(&p.redis)},
             {"redis_password", Bind(&p.redis_password)},
             {"host", Bind(&p.host)},
             {"base_port", Bind(&p.base_port)},
             {"frame_elements", Bind(&p.frame_elements)},
             {"staleness", Bind(&p.staleness)},
             {"staleness_a", Bind(&p.staleness_a)},
             {"staleness_b", Bind(&p.staleness_b)},
             {"max_staleness", Bind(&p.max_staleness)},
             {"optimizer", Bind(&p.optimizer)},
             {"outer_lr", Bind(&p.outer_lr)},
             {"momentum", Bind(&p.momentum)},
             {"dn_period", Bind(&p.dn_period)},
             {"dn_gradient_scale", Bind(&p.dn_gradient_scale)},
             {"outer_warmup_steps", Bind(&p.outer_warmup_steps)},
             {"buffer_size", Bind(&p.buffer_size)},
             {"weight_by_tokens", Bind(&p.weight_by_tokens)},
             {"reference_tokens", Bind(&p.reference_tokens)},
             {"checkpoint_every", Bind(&p.checkpoint_every)},
             {"shard_lease_ms", Bind(&p.shard_lease_ms)},
             {"stage_ttl_ms", Bind(&p.stage_ttl_ms)},
             {"snapshot_ttl_ms", Bind(&p.snapshot_ttl_ms)},
             {"redis_wait_ms", Bind(&p.redis_wait_ms)},
             {"mode", Bind(&p.mode)},
             {"round_clients", Bind(&p.round_clients)},
             {"round_timeout_ms", Bind(&p.round_timeout_ms)},
             {"norm_bound", Bind(&p.norm_bound)},
             {"norm_bound_factor", Bind(&p.norm_bound_factor)},
             {"norm_bound_window", Bind(&p.norm_bound_window)},
             {"norm_bound_warmup", Bind(&p.norm_bound_warmup)}};
  auto& k = c.client;
  s["client"] = {{"local_steps", Bind(&k.local_steps)},
                 {"local_time_s", Bind(&k.local_time_s)},
                 {"max_updates", Bind(&k.max_updates)},
                 {"lease_ms", Bind(&k.lease_ms)},
                 {"heartbeat_ms", Bind(&k.heartbeat_ms)},
                 {"retry_initial_ms", Bind(&k.retry_initial_ms)},
                 {"retry_max_ms", Bind(&k.retry_max_ms)},
                 {"throttle", Bind(&k.throttle)},
                 {"eval_every_versions", Bind(&k.eval_every_versions)},
                 {"pipeline_depth", Bind(&k.pipeline_depth)},
                 {"optimizer_save_every", Bind(&k.optimizer_save_every)},
                 {"min_free_disk_mb", Bind(&k.min_free_disk_mb)},
                 {"streams_per_shard", Bind(&k.streams_per_shard)},
                 {"reset_inner_optimizer", Bind(&k.reset_inner_optimizer)}};
  auto& l = c.limits;
  s["limits"] = {{"max_connections", Bind(&l.max_connections)},
                 {"idle_timeout_ms", Bind(&l.idle_timeout_ms)},
                 {"read_timeout_ms", Bind(&l.read_timeout_ms)},
                 {"max_message_bytes", Bind(&l.max_message_bytes)},
                 {"receiving_updates", Bind(&l.receiving_updates)},
                 {"receiving_updates_per_client", Bind(&l.receiving_updates_per_client)},
                 {"receiving_bytes_per_client", Bind(&l.receiving_bytes_per_client)},
                 {"receive_timeout_ms", Bind(&l.receive_timeout_ms)},
                 {"staged_updates", Bind(&l.staged_updates)},
                 {"staged_bytes", Bind(&l.staged_bytes)},
                 {"staged_updates_per_client", Bind(&l.staged_updates_per_client)},
                 {"staged_bytes_per_client", Bind(&l.staged_bytes_per_client)}};
  return s;
}

Status Validate(const RunConfig& c, const std::string& origin) {
  auto bad = [&](const std::string& key, const std::string& why) {
    return InvalidArgument(origin + ": " + key + " " + why);
  };
  if (c.run.id.empty()) return bad("run.id", "must not be empty");
  for (char ch : c.run.id) {
    if (!(std::isalnum(static_cast<unsigned char>(ch)) || ch == '-' || ch == '_' || ch == '.'))
      return bad("run.id", "may hold only letters, digits, '-', '_' and '.'");
  }
  if (c.run.dir.empty()) return bad("run.dir", "must not be empty");
  const auto& m = c.model;
  for (auto [key, v] : {std::pair{"vocab_size", m.vocab_size}, {"d_model", m.d_model},
                        {"n_layers", m.n_layers}, {"n_heads", m.n_heads},
                        {"n_kv_heads", m.n_kv_heads}, {"ffn_hidden", m.ffn_hidden},
                        {"max_seq_len", m.max_seq_len}}) {
    if (v < 0) return bad(std::string("model.") + key, "must be >= 0 (0 = from the preset)");
  }
  if (m.rope_theta < 0) return bad("model.rope_theta", "must be > 0");
  if (m.norm_eps < 0) return bad("model.norm_eps", "must be > 0");
  if (!(m.init_std > 0)) return bad("model.init_std", "must be > 0");
  if (c.tokenizer.vocab_size < 64 || c.tokenizer.vocab_size > (1 << 20))
    return bad("tokenizer.vocab_size", "must be in [64, 1048576]");
  if (c.tokenizer.max_training_bytes < 1024) return bad("tokenizer.max_training_bytes", "must be >= 1024");
  const auto& t = c.train;
  if (t.seq_len < 2) return bad("train.seq_len", "must be >= 2");
  if (t.micro_batch < 1) return bad("train.micro_batch", "must be >= 1");
  if (t.grad_accum < 1) return bad("train.grad_accum", "must be >= 1");
  if (t.steps < 1) return bad("train.steps", "must be >= 1");
  if (t.time_budget_s < 0) return bad("train.time_budget_s", "must be >= 0");
  if (!(t.lr > 0)) return bad("train.lr", "must be > 0");
  if (t.min_lr_ratio < 0 || t.min_lr_ratio > 1) return bad("train.min_lr_ratio", "must be in [0, 1]");
  if (t.warmup_steps < 0) return bad("train.warmup_steps", "must be >= 0");
  if (t.schedule != "cosine" && t.schedule != "wsd" && t.schedule != "constant")
    return bad("train.schedule", "must be one of cosine, wsd, constant (got \"" + t.schedule + "\")");
  if (t.schedule_clock != "local" && t.schedule_clock != "federation")
    return bad("train.schedule_clock", "must be local or federation (got \"" + t.schedule_clock + "\")");
  if (t.schedule_clock == "federation" && c.client.local_time_s > 0)
    return bad("train.schedule_clock",
               "federation counts client.local_steps per update; it needs client.local_time_s = 0");
  if (t.decay_fraction < 0 || t.decay_fraction > 1) return bad("train.decay_fraction", "must be in [0, 1]");
  if (t.weight_decay < 0) return bad("train.weight_decay", "must be >= 0");
  if (t.beta1 < 0 || t.beta1 >= 1) return bad("train.beta1", "must be in [0, 1)");
  if (t.beta2 < 0 || t.beta2 >= 1) return bad("train.beta2", "must be in [0, 1)");
  if (!(t.eps > 0)) return bad("train.eps", "must be > 0");
  if (t.grad_clip < 0) return bad("train.grad_clip", "must be >= 0");
  if (t.log_every < 1) return bad("train.log_every", "must be >= 1");
  if (t.eval_every < 0) return bad("train.eval_every", "must be >= 0");
  if (t.eval_batches < 1) return bad("train.eval_batches", "must be >= 1");
  if (t.checkpoint_every < 0) return bad("train.checkpoint_every", "must be >= 0");
  if (t.keep_checkpoints < 1) return bad("train.keep_checkpoints", "must be >= 1");
  if (t.threads < 0) return bad("train.threads", "must be >= 0");
  if (t.loss_chunk_rows < 0) return bad("train.loss_chunk_rows", "must be >= 0 (0: unfused)");
  if (t.device != "auto" && t.device != "cpu" && t.device.rfind("cuda", 0) != 0)
    return bad("train.device", "must be auto, cpu, cuda or cuda:N (got \"" + t.device + "\")");
  const auto& z = c.compression;
  if (z.codec != "fp32" && z.codec != "bf16" && z.codec != "int8" && z.codec != "topk")
    return bad("compression.codec", "must be one of fp32, bf16, int8, topk (got \"" + z.codec + "\")");
  if (!(z.topk_density > 0 && z.topk_density <= 1)) return bad("compression.topk_density", "must be in (0, 1]");
  if (z.zstd_level < 1 || z.zstd_level > 19) return bad("compression.zstd_level", "must be in [1, 19]");
  if (z.threads < 0) return bad("compression.threads", "must be >= 0");
  if (z.int8_block < 1 || z.int8_block > 65536) return bad("compression.int8_block", "must be in [1, 65536]");
  const auto& p = c.ps;
  if (p.num_shards < 1 || p.num_shards > 256) return bad("ps.num_shards", "must be in [1, 256]");
  if (p.redis.find(':') == std::string::npos && p.redis.rfind("unix:", 0) != 0)
    return bad("ps.redis", "must be host:port or unix:/path (got \"" + p.redis + "\")");
  if (p.base_port < 0 || p.base_port > 65535) return bad("ps.base_port", "must be in [0, 65535]");
  if (p.frame_elements < 1024 || p.frame_elements > (1 << 26))
    return bad("ps.frame_elements", "must be in [1024, 67108864]");
  if (p.staleness != "constant" && p.staleness != "polynomial" && p.staleness != "hinge")
    return bad("ps.staleness", "must be one of constant, polynomial, hinge (got \"" + p.staleness + "\")");
  if (p.staleness_a < 0) return bad("ps.staleness_a", "must be >= 0");
  if (p.staleness_b < 0) return bad("ps.staleness_b", "must be >= 0");
  if (p.max_staleness < -1) return bad("ps.max_staleness", "must be >= 0 (or -1: no limit)");
  if (p.optimizer != "sgd" && p.optimizer != "nesterov" && p.optimizer != "delayed_nesterov" && p.optimizer != "adam")
    return bad("ps.optimizer", "must be one of sgd, nesterov, delayed_nesterov, adam (got \"" + p.optimizer + "\")");
  if (p.outer_lr < 0) return bad("ps.outer_lr", "must be >= 0 (0: the optimizer's default)");
  if (p.momentum < 0 || p.momentum >= 1) return bad("ps.momentum", "must be in [0, 1)");
  if (p.dn_period < 1) return bad("ps.dn_period", "must be >= 1");
  if (!(p.dn_gradient_scale == -1 || (p.dn_gradient_scale >= 0 && p.dn_gradient_scale <= 1)))
    return bad("ps.dn_gradient_scale", "must be in [0, 1] (or -1: 1/dn_period)");
  if (p.outer_warmup_steps < 0) return bad("ps.outer_warmup_steps", "must be >= 0");
  if (p.buffer_size < 1) return bad("ps.buffer_size", "must be >= 1");
  if (p.reference_tokens < 0) return bad("ps.reference_tokens", "must be >= 0");
  if (p.checkpoint_every < 0) return bad("ps.checkpoint_every", "must be >= 0");
  for (auto [key, v] : {std::pair{"shard_lease_ms", p.shard_lease_ms}, {"stage_ttl_ms", p.stage_ttl_ms},
                        {"snapshot_ttl_ms", p.snapshot_ttl_ms}}) {
    if (v < 100) return bad(std::string("ps.") + key, "must be >= 100");
  }
  if (p.mode != "async" && p.mode != "sync")
    return bad("ps.mode", "must be async or sync (got \"" + p.mode + "\")");
  if (p.round_clients < 0) return bad("ps.round_clients", "must be >= 0 (0: the members live at round open)");
  if (p.round_timeout_ms < 100) return bad("ps.round_timeout_ms", "must be >= 100");
  if (!(p.norm_bound_factor > 1 && p.norm_bound_factor <= 1e6))
    return bad("ps.norm_bound_factor", "must be in (1, 1e6] (ps.norm_bound = false turns the bound off)");
  if (p.norm_bound_window < 1 || p.norm_bound_window > 10000)
    return bad("ps.norm_bound_window", "must be in [1, 10000]");
  if (p.norm_bound_warmup < 1 || p.norm_bound_warmup > p.norm_bound_window)
    return bad("ps.norm_bound_warmup", "must be in [1, ps.norm_bound_window]");
  if (p.mode == "sync" && p.buffer_size != 1)
    return bad("ps.buffer_size", "must be 1 with ps.mode = sync (a round is already one outer step on its mean)");
  if (p.mode == "sync" && p.weight_by_tokens)
    return bad("ps.weight_by_tokens", "must be false with ps.mode = sync (a round averages its updates by tokens)");
  if (p.mode == "sync" && c.client.pipeline_depth != 0)
    return bad("client.pipeline_depth",
               "must be 0 with ps.mode = sync (every round trains from the round's base version)");
  const auto& k = c.client;
  if (k.local_steps < 1) return bad("client.local_steps", "must be >= 1");
  if (k.local_time_s < 0) return bad("client.local_time_s", "must be >= 0");
  if (k.max_updates < 0) return bad("client.max_updates", "must be >= 0");
  if (k.lease_ms < 100) return bad("client.lease_ms", "must be >= 100");
  if (k.heartbeat_ms < 10 || k.heartbeat_ms * 2 > k.lease_ms)
    return bad("client.heartbeat_ms", "must be >= 10 and at most half of client.lease_ms");
  if (k.retry_initial_ms < 1 || k.retry_max_ms < k.retry_initial_ms)
    return bad("client.retry_max_ms", "must be >= client.retry_initial_ms >= 1");
  if (k.throttle < 1) return bad("client.throttle", "must be >= 1");
  // The timeout hierarchy (docs/fault-tolerance.md, "Timeouts"): beats well inside a lease,
  // backoff shorter than a lease, staged slices and pinned snapshots outliving a client's
  // lease and backoff, so that a client that rejoins finds them.
  if (p.redis_wait_ms < 0) return bad("ps.redis_wait_ms", "must be >= 0 (0: wait forever)");
  if (k.retry_max_ms >= k.lease_ms)
    return bad("client.retry_max_ms", "must be below client.lease_ms (a backoff must not outlast the lease)");
  if (p.stage_ttl_ms <= k.lease_ms + k.retry_max_ms)
    return bad("ps.stage_ttl_ms", "must exceed client.lease_ms + client.retry_max_ms (" +
                                      std::to_string(k.lease_ms + k.retry_max_ms) +
                                      " ms): a staged slice must outlive a client that rejoins");
  if (p.snapshot_ttl_ms <= k.retry_max_ms)
    return bad("ps.snapshot_ttl_ms", "must exceed client.retry_max_ms (" + std::to_string(k.retry_max_ms) +
                                         " ms): a pinned snapshot must outlive a pull's backoff");
  if (k.eval_every_versions < 1) return bad("client.eval_every_versions", "must be >= 1");
  if (k.pipeline_depth < 0 || k.pipeline_depth > 1) return bad("client.pipeline_depth", "must be 0 or 1");
  if (k.optimizer_save_every < 0) return bad("client.optimizer_save_every", "must be >= 0");
  if (k.min_free_disk_mb < 0) return bad("client.min_free_disk_mb", "must be >= 0");
  if (k.streams_per_shard < 1 || k.streams_per_shard > 16) return bad("client.streams_per_shard", "must be 1..16");
  const auto& l = c.limits;
  for (auto [key, v] : {std::pair{"max_connections", l.max_connections},
                        {"receiving_updates", l.receiving_updates},
                        {"receiving_updates_per_client", l.receiving_updates_per_client},
                        {"staged_updates", l.staged_updates},
                        {"staged_updates_per_client", l.staged_updates_per_client}}) {
    if (v < 1 || v > 1000000) return bad(std::string("limits.") + key, "must be in [1, 1000000]");
  }
  for (auto [key, v] : {std::pair{"idle_timeout_ms", l.idle_timeout_ms}, {"read_timeout_ms", l.read_timeout_ms},
                        {"receive_timeout_ms", l.receive_timeout_ms}}) {
    if (v < 100 || v > 86400000) return bad(std::string("limits.") + key, "must be in [100, 86400000] ms");
  }
  // Thrift sizes messages with int32, and a push carries at least one frame of a few MB.
  if (l.max_message_bytes < (1 << 20) || l.max_message_bytes > (int64_t{1} << 31) - 1)
    return bad("limits.max_message_bytes", "must be in [1 MiB, 2 GiB - 1]");
  for (auto [key, v] : {std::pair{"receiving_bytes_per_client", l.receiving_bytes_per_client},
                        {"staged_bytes", l.staged_bytes},
                        {"staged_bytes_per_client", l.staged_bytes_per_client}}) {
    if (v < (1 << 20)) return bad(std::string("limits.") + key, "must be >= 1 MiB");
  }
  return Status::Ok();
}

}  // namespace

StatusOr<RunConfig> ParseConfig(const std::string& toml_text, const std::string& origin) {
  RunConfig config;
  config.path = origin;
  toml::table root;
  try {
    root = toml::parse(toml_text, origin);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << origin << ":" << e.source().begin.line << ":" << e.source().begin.column << ": "
       << e.description();
    return InvalidArgument(os.str());
  }
  auto schema = Schema(config);
  for (const auto& [section_key, section_node] : root) {
    std::string section(section_key.str());
    auto it = schema.find(section);
    if (it == schema.end()) {
      std::string known;
      for (const auto& [name, unused] : schema) known += (known.empty() ? "" : ", ") + name;
      return InvalidArgument(origin + ": unknown section [" + section + "] (known: " + known + ")");
    }
    if (!section_node.is_table())
      return InvalidArgument(origin + ": " + section + " must be a [" + section + "] table");
    for (const auto& [key_name, value] : *section_node.as_table()) {
      std::string key(key_name.str());
      std::string where = origin + ": " + section + "." + key;
      if (auto line = value.source().begin.line; line > 0) {
        where = origin + ":" + std::to_string(line) + ": " + section + "." + key;
      }
      auto setter = it->second.find(key);
      if (setter == it->second.end()) {
        return InvalidArgument(origin + ": unknown key " + section + "." + key);
      }
      RETURN_IF_ERROR(setter->second(value, where));
    }
  }
  RETURN_IF_ERROR(Validate(config, origin));
  return config;
}

std::vector<std::string> SplitCommaList(const std::string& list) {
  std::vector<std::string> out;
  std::stringstream in(list);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

nlohmann::json PsApplyConfig(const PsOptions& ps) {
  return {{"staleness", ps.staleness},
          {"staleness_a", ps.staleness_a},
          {"staleness_b", ps.staleness_b},
          {"max_staleness", ps.max_staleness},
          {"optimizer", ps.optimizer},
          {"outer_lr", ps.outer_lr},
          {"momentum", ps.momentum},
          {"dn_period", ps.dn_period},
          {"dn_gradient_scale", ps.dn_gradient_scale},
          {"outer_warmup_steps", ps.outer_warmup_steps},
          {"buffer_size", ps.buffer_size},
          {"weight_by_tokens", ps.weight_by_tokens},
          {"reference_tokens", ps.reference_tokens},
          {"mode", ps.mode},
          {"round_clients", ps.round_clients},
          {"round_timeout_ms", ps.round_timeout_ms}};
}

StatusOr<RunConfig> LoadConfig(const std::string& path) {
  auto text = Env::Default()->ReadFile(path);
  if (!text.ok()) return InvalidArgument("cannot read config: " + text.status().message());
  return ParseConfig(*text, path);
}

}  // namespace fedps
