// fedps-ctl checkpoint | pull-model: commands that talk to a running federation's shards
// directly (over their Thrift endpoints), found through the Redis shard directory.
//
//   checkpoint   asks every shard of the directory to write a checkpoint now
//                (docs/protocol.md §8, reason "operator") and prints one row per shard:
//                version, path on the shard's host, duration. A dead or unreachable shard
//                is a row too, and the command fails with one line naming it.
//   pull-model   assembles the global model from the shards' slices: every shard's slice
//                is pulled losslessly (fp32 codec, all frames of one pinned snapshot,
//                §2; SNAPSHOT_EXPIRED restarts that shard's pull), the slices are checked
//                to tile the run's layout exactly, and the model is saved as a regular
//                fedps checkpoint folder (model/checkpoint.h: `fedps-ctl eval / export /
//                generate` work on it; step = the lowest shard version, state.json lists
//                every shard's version) and, with --hf, also as a Hugging Face folder.
//
// Both find the run like `fedps-ctl status` does: --config RUN.toml, or --redis/--run. The
// run identity (model config, layout hash, tokenizer sha256) comes from the registry; the
// tokenizer file (config data.tokenizer / data.prepared, or --tokenizer) must match it.
// Shards are contacted in parallel, one thread and one ShardChannel per shard.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <limits>
#include <span>
#include <thread>

#include "common/config.h"
#include "common/env.h"
#include "common/sha256.h"
#include "compression/codec.h"
#include "model/checkpoint.h"
#include "model/decoder.h"
#include "model/hf_export.h"
#include "model/layout.h"
#include "model/presets.h"
#include "ps/registry.h"
#include "ps/shard_channel.h"
#include "ps/tls_flags.h"
#include "tools/commands.h"
#include "tools/run_target.h"

namespace fedps::tools {
namespace {

constexpr const char* kCaller = "fedps-ctl";

// ---- the run and its registry --------------------------------------------------------------

StatusOr<RunIdentity> RunOf(Registry& r, const std::string& run_id) {
  auto run = r.GetRun();
  if (!run.ok() && run.status().code() == StatusCode::kNotFound) {
    return FailedPrecondition("run \"" + run_id +
                              "\" is not initialised in this Redis (no shard has started)");
  }
  return run;
}

// "host:port" -> host, port.
StatusOr<std::pair<std::string, int>> SplitAddress(const std::string& address, int shard) {
  auto colon = address.rfind(':');
  int port = 0;
  if (colon != std::string::npos) {
    try {
      port = std::stoi(address.substr(colon + 1));
    } catch (const std::exception&) {
      port = 0;
    }
  }
  if (colon == std::string::npos || colon == 0 || port <= 0 || port > 65535) {
    return DataLoss("shard " + std::to_string(shard) + " has a malformed address \"" + address +
                    "\" in the directory");
  }
  return std::make_pair(address.substr(0, colon), port);
}

// The directory entries for indices 0 .. num_shards - 1; a missing index is an error.
StatusOr<std::vector<ShardStatus>> Directory(Registry& r, int num_shards) {
  ASSIGN_OR_RETURN(std::vector<ShardStatus> all, r.Shards());
  std::vector<ShardStatus> out(static_cast<size_t>(num_shards));
  std::vector<bool> seen(static_cast<size_t>(num_shards), false);
  for (auto& s : all) {
    if (s.info.index < 0 || s.info.index >= num_shards) continue;
    out[s.info.index] = s;
    seen[s.info.index] = true;
  }
  std::string missing;
  for (int i = 0; i < num_shards; ++i) {
    if (!seen[i]) missing += (missing.empty() ? "" : ", ") + std::to_string(i);
  }
  if (!missing.empty()) {
    return FailedPrecondition("shard" +
                              std::string(missing.find(',') == std::string::npos ? " " : "s ") +
                              missing + " never registered in the directory (the run has " +
                              std::to_string(num_shards) + " shards)");
  }
  return out;
}

// A Status message on one line (transport errors may carry newlines).
std::string OneLine(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  std::replace(s.begin(), s.end(), '\r', ' ');
  return s;
}

// Runs fn(i) for i in [0, n) on one thread each, returns the per-index Status.
template <typename Fn>
std::vector<Status> ForEachShard(int n, Fn fn) {
  std::vector<Status> results(static_cast<size_t>(n));
  std::vector<std::thread> workers;
  workers.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    workers.emplace_back([&results, &fn, i] {
      try {
        results[i] = fn(i);
      } catch (const std::exception& e) {
        results[i] = Internal(std::string("shard worker: ") + e.what());
      }
    });
  }
  for (auto& w : workers) w.join();
  return results;
}

// The overall error for failed shards: one line naming each.
Status ShardsFailed(const std::string& what, const std::vector<std::string>& failures,
                    StatusCode code) {
  std::string msg = what + " failed on " + std::to_string(failures.size()) +
                    (failures.size() == 1 ? " shard: " : " shards: ");
  for (size_t i = 0; i < failures.size(); ++i) msg += (i ? "; " : "") + failures[i];
  return Status(code, msg);
}

// ---- checkpoint -----------------------------------------------------------------------------

struct CheckpointArgs {
  RunTarget target;
  TlsOptions tls;  // the operator's certificate: only it may checkpoint under mutual TLS
  bool json = false;
  double timeout_s = 600;
};

// The channels' TLS: null for plaintext (loopback addresses only, checked at connect).
StatusOr<std::shared_ptr<TlsSocketFactory>> ChannelTls(const TlsOptions& tls) {
  if (!tls.mutual()) {
    RETURN_IF_ERROR(CheckTls(tls, "127.0.0.1", ""));
    return std::shared_ptr<TlsSocketFactory>();
  }
  RETURN_IF_ERROR(CheckTls(tls, "", ""));
  return TlsSocketFactory::Create(tls, /*server=*/false);
}

struct CheckpointRow {
  int index = 0;
  std::string address;
  bool ok = false;
  int64_t version = -1;
  int64_t optimizer_steps = 0;
  std::string path;
  int64_t duration_ms = 0;
  std::string error;
};

Status RunCheckpoint(const CheckpointArgs& a) {
  if (!(a.timeout_s > 0)) return InvalidArgument("--timeout must be > 0");
  ASSIGN_OR_RETURN(ConnectedRun c, ConnectRun(a.target));
  ASSIGN_OR_RETURN(RunIdentity run, RunOf(*c.registry, c.run_id));
  ASSIGN_OR_RETURN(std::vector<ShardStatus> dir, Directory(*c.registry, run.num_shards));
  ASSIGN_OR_RETURN(std::shared_ptr<TlsSocketFactory> tls, ChannelTls(a.tls));
  std::vector<CheckpointRow> rows(dir.size());
  auto results = ForEachShard(static_cast<int>(dir.size()), [&](int i) -> Status {
    const ShardStatus& s = dir[i];
    CheckpointRow& row = rows[i];
    row.index = i;
    row.address = s.info.address;
    if (!s.alive) return Unavailable("lease expired (the shard is dead or cut off from Redis)");
    ASSIGN_OR_RETURN(auto hp, SplitAddress(s.info.address, i));
    ShardChannelOptions o;
    o.host = hp.first;
    o.port = hp.second;
    o.call_timeout = std::chrono::milliseconds(static_cast<int64_t>(a.timeout_s * 1000));
    o.tls = tls;
    ShardChannel ch(o);
    rpc::CheckpointRequest req;
    req.header = MakeHeader(c.run_id, run.layout_hash, i, s.epoch, kCaller);
    req.reason = "operator";
    const auto start = std::chrono::steady_clock::now();
    ASSIGN_OR_RETURN(rpc::CheckpointResponse r, ch.Checkpoint(req));
    row.ok = true;
    row.version = r.version;
    row.optimizer_steps = r.optimizer_steps;
    row.path = r.path;
    row.duration_ms = r.duration_ms > 0 ? r.duration_ms
                                        : std::chrono::duration_cast<std::chrono::milliseconds>(
                                              std::chrono::steady_clock::now() - start)
                                              .count();
    return Status::Ok();
  });
  std::vector<std::string> failures;
  StatusCode code = StatusCode::kUnavailable;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (results[i].ok()) continue;
    rows[i].error = OneLine(results[i].message());
    if (results[i].code() != StatusCode::kUnavailable) code = results[i].code();
    failures.push_back("shard " + std::to_string(i) + " (" + rows[i].address +
                       "): " + rows[i].error);
  }
  if (a.json) {
    nlohmann::json j = {
        {"run", c.run_id}, {"ok", failures.empty()}, {"shards", nlohmann::json::array()}};
    for (const auto& r : rows) {
      nlohmann::json s = {{"index", r.index}, {"address", r.address}, {"ok", r.ok}};
      if (r.ok) {
        s["version"] = r.version;
        s["optimizer_steps"] = r.optimizer_steps;
        s["path"] = r.path;
        s["duration_ms"] = r.duration_ms;
      } else {
        s["error"] = r.error;
      }
      j["shards"].push_back(s);
    }
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("%-5s %-21s %8s %8s  %s\n", "shard", "address", "version", "ms", "path");
    for (const auto& r : rows) {
      if (r.ok) {
        std::printf("%-5d %-21s %8ld %8ld  %s\n", r.index, r.address.c_str(), long(r.version),
                    long(r.duration_ms), r.path.c_str());
      } else {
        std::printf("%-5d %-21s %8s %8s  FAILED: %s\n", r.index, r.address.c_str(), "-", "-",
                    r.error.c_str());
      }
    }
  }
  std::fflush(stdout);
  if (!failures.empty()) return ShardsFailed("checkpoint", failures, code);
  return Status::Ok();
}

// ---- pull-model -----------------------------------------------------------------------------

struct PullModelArgs {
  RunTarget target;
  TlsOptions tls;
  std::string out;
  std::string hf;
  std::string tokenizer;
  int64_t version_min = -1;
  double wait_s = 60;
  int64_t keep = 0;
  bool force = false;
  bool json = false;
};

struct PulledShard {
  int64_t version = -1;
  int64_t begin = 0;
  int64_t elements = 0;
  int64_t frames = 0;
  int64_t bytes = 0;
  int restarts = 0;
};

// Pulls shard `i`'s whole slice (one pinned snapshot, fp32) into flat[begin, begin + n).
// Retries while the shard is starting / recovering, on SNAPSHOT_EXPIRED (from frame 0) and
// on a few transport errors; everything else fails at once.
Status PullOneShard(int i, const ShardStatus& entry, const RunIdentity& run,
                    const std::string& run_id, const SliceRange& expected, int64_t version_min,
                    std::chrono::steady_clock::time_point deadline, std::vector<float>& flat,
                    std::shared_ptr<TlsSocketFactory> tls, PulledShard* out) {
  ASSIGN_OR_RETURN(auto hp, SplitAddress(entry.info.address, i));
  ShardChannelOptions o;
  o.host = hp.first;
  o.port = hp.second;
  o.tls = std::move(tls);
  o.connect_timeout = std::chrono::milliseconds(2000);
  ShardChannel ch(o);
  CodecOptions co;
  co.kind = CodecKind::kFp32;
  co.threads = 1;
  ASSIGN_OR_RETURN(std::unique_ptr<Codec> codec, Codec::Create(co));
  const int64_t n = expected.size();
  std::span<float> dest(flat.data() + expected.begin, static_cast<size_t>(n));
  int transport_failures = 0;
  auto past_deadline = [&] { return std::chrono::steady_clock::now() >= deadline; };
  // After a kUnavailable: a transport failure (no shard answer) is retried twice, a shard's
  // own UNAVAILABLE (busy, not serving, below min_version) until the deadline.
  auto transient = [&](const Status& s) -> Status {
    const ShardCallError& e = ch.last_error();
    if (!e.code && ++transport_failures >= 3) return s;
    if (past_deadline()) return DeadlineExceeded("gave up after --wait-s: " + s.message());
    int64_t ms =
        e.code && e.retry_after_ms ? std::clamp<int64_t>(*e.retry_after_ms, 50, 2000) : 200;
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return Status::Ok();
  };
  for (;;) {
    auto st = ch.GetStatus();
    if (!st.ok()) {
      if (st.status().code() != StatusCode::kUnavailable) return st.status();
      RETURN_IF_ERROR(transient(st.status()));
      continue;
    }
    transport_failures = 0;
    if (st->run_id != run_id || st->layout_hash != run.layout_hash || st->shard_index != i ||
        st->num_shards != run.num_shards) {
      return FailedPrecondition(
          "the process at " + ch.address() + " is shard " + std::to_string(st->shard_index) + "/" +
          std::to_string(st->num_shards) + " of run \"" + st->run_id + "\" layout " +
          st->layout_hash.substr(0, 12) + ", not shard " + std::to_string(i) + "/" +
          std::to_string(run.num_shards) + " of run \"" + run_id + "\" layout " +
          run.layout_hash.substr(0, 12));
    }
    if (st->slice_begin != expected.begin || st->slice_elements != n) {
      return FailedPrecondition("serves [" + std::to_string(st->slice_begin) + ", +" +
                                std::to_string(st->slice_elements) +
                                ") but the layout's partition says [" +
                                std::to_string(expected.begin) + ", +" + std::to_string(n) + ")");
    }
    if (st->state == rpc::ShardState::HALTED)
      return DataLoss("the shard is HALTED (operator needed; see its log)");
    if (st->state != rpc::ShardState::SERVING) {
      if (past_deadline())
        return DeadlineExceeded("not serving (still starting or recovering) after --wait-s");
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    if (std::find(st->codecs.begin(), st->codecs.end(), "fp32") == st->codecs.end()) {
      return FailedPrecondition("the shard does not offer the fp32 codec for pulls");
    }
    const int64_t E = st->frame_elements;
    if (E < 1 || static_cast<uint64_t>(E) > kMaxFrameElements) {
      return DataLoss("the shard announces frame_elements " + std::to_string(E));
    }
    const int64_t total_frames = std::max<int64_t>(1, (n + E - 1) / E);

    rpc::PullRequest req;
    req.header = MakeHeader(run_id, run.layout_hash, i, entry.epoch, kCaller);
    req.codec = "fp32";
    req.frame_index = 0;
    if (version_min >= 0) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      req.__set_min_version(version_min);
      req.__set_wait_ms(static_cast<int32_t>(std::clamp<int64_t>(left.count(), 1, 30000)));
    }
    int64_t version = -1;
    int64_t bytes = 0;
    bool restart = false;
    for (int64_t k = 0; k < total_frames && !restart; ++k) {
      req.frame_index = k;
      if (k > 0) {
        req.__set_version(version);
        req.__isset.min_version = false;
        req.__isset.wait_ms = false;
      }
      for (;;) {
        auto r = ch.Pull(req);
        if (r.ok()) {
          if (k == 0) version = r->version;
          if (r->version != version || r->frame_index != k || r->total_frames != total_frames ||
              r->slice_elements != n || r->frame_elements != E) {
            return DataLoss("answered frame " + std::to_string(r->frame_index) + "/" +
                            std::to_string(r->total_frames) + " of version " +
                            std::to_string(r->version) + " to a request for frame " +
                            std::to_string(k) + "/" + std::to_string(total_frames) +
                            " of version " + std::to_string(version));
          }
          auto header = Codec::PeekHeader(r->frame);
          if (!header.ok()) return header.status().WithContext("frame " + std::to_string(k));
          const uint64_t want_count = static_cast<uint64_t>(std::min(E, n - k * E));
          if (header->kind != CodecKind::kFp32 || header->offset != static_cast<uint64_t>(k * E) ||
              header->count != want_count) {
            return DataLoss("frame " + std::to_string(k) + " is not the fp32 frame [" +
                            std::to_string(k * E) + ", +" + std::to_string(want_count) +
                            ") it should be");
          }
          RETURN_IF_ERROR(
              codec->DecodeFrame(r->frame, dest).WithContext("frame " + std::to_string(k)));
          bytes += static_cast<int64_t>(r->frame.size());
          break;
        }
        if (ch.last_error().code && *ch.last_error().code == rpc::ErrorCode::SNAPSHOT_EXPIRED) {
          if (++out->restarts > 20) return r.status().WithContext("snapshot kept expiring");
          restart = true;
          break;
        }
        if (r.status().code() == StatusCode::kUnavailable) {
          if (k == 0 && version_min >= 0 && ch.last_error().code && past_deadline()) {
            return DeadlineExceeded("did not reach version " + std::to_string(version_min) +
                                    " within --wait-s (" + r.status().message() + ")");
          }
          RETURN_IF_ERROR(transient(r.status()));
          if (k == 0 && version_min >= 0) {
            auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            req.__set_wait_ms(static_cast<int32_t>(std::clamp<int64_t>(left.count(), 1, 30000)));
          }
          continue;
        }
        return r.status();
      }
    }
    if (restart) continue;
    out->version = version;
    out->begin = expected.begin;
    out->elements = n;
    out->frames = total_frames;
    out->bytes = bytes;
    return Status::Ok();
  }
}

// The tokenizer file for pull-model: --tokenizer, else the config's, checked against the run.
StatusOr<std::string> TokenizerFor(const PullModelArgs& a, const ConnectedRun& c,
                                   const RunIdentity& run) {
  std::string path = a.tokenizer;
  if (path.empty() && c.config) {
    path = c.config->data.tokenizer.empty() ? JoinPath(c.config->data.prepared, "tokenizer.model")
                                            : c.config->data.tokenizer;
  }
  if (path.empty())
    return InvalidArgument(
        "say where the run's tokenizer is: --config RUN.toml or --tokenizer FILE");
  if (!Env::Default()->Exists(path)) return NotFound("tokenizer " + path + " does not exist");
  ASSIGN_OR_RETURN(std::string sha, Sha256File(path));
  if (sha != run.tokenizer_sha256) {
    return FailedPrecondition("tokenizer " + path + " has sha256 " + sha.substr(0, 16) +
                              "... but run \"" + c.run_id + "\" uses " +
                              run.tokenizer_sha256.substr(0, 16) + "...");
  }
  return path;
}

Status RunPullModel(const PullModelArgs& a) {
  if (a.out.empty()) return InvalidArgument("--out is required");
  if (!(a.wait_s > 0)) return InvalidArgument("--wait-s must be > 0");
  if (!a.hf.empty() && !a.force && Env::Default()->Exists(a.hf)) {
    auto names = Env::Default()->ListDir(a.hf);
    if (!names.ok() || !names->empty()) {
      return AlreadyExists("--hf " + a.hf +
                           " exists and is not empty (pass --force to replace it)");
    }
  }
  ASSIGN_OR_RETURN(ConnectedRun c, ConnectRun(a.target));
  ASSIGN_OR_RETURN(RunIdentity run, RunOf(*c.registry, c.run_id));

  // The model and its layout, as the run pinned them.
  auto mc = ModelConfig::FromJson(run.model_config);
  if (!mc.ok())
    return DataLoss("the run's model config in Redis is unusable: " + mc.status().message());
  const ParamLayout layout = ParamLayout::ForModel(*mc);
  if (layout.hash() != run.layout_hash) {
    return DataLoss("the run's model config gives layout " + layout.hash().substr(0, 12) +
                    " but the run records " + run.layout_hash.substr(0, 12));
  }
  ASSIGN_OR_RETURN(std::string tokenizer_path, TokenizerFor(a, c, run));
  if (run.num_shards < 1)
    return DataLoss("the run records " + std::to_string(run.num_shards) + " shards");
  ASSIGN_OR_RETURN(std::vector<SliceRange> partition, layout.Partition(run.num_shards));
  ASSIGN_OR_RETURN(std::vector<ShardStatus> dir, Directory(*c.registry, run.num_shards));

  // The directory's slices must be the partition, hence tile [0, total) exactly.
  for (int i = 0; i < run.num_shards; ++i) {
    const ShardInfo& s = dir[i].info;
    if (s.slice_begin != partition[i].begin || s.slice_end != partition[i].end) {
      return DataLoss(
          "shard " + std::to_string(i) + " is registered for [" + std::to_string(s.slice_begin) +
          ", " + std::to_string(s.slice_end) + ") but the layout's partition gives it [" +
          std::to_string(partition[i].begin) + ", " + std::to_string(partition[i].end) + ")");
    }
  }
  std::vector<std::string> failures;
  for (int i = 0; i < run.num_shards; ++i) {
    if (!dir[i].alive) {
      failures.push_back("shard " + std::to_string(i) + " (" + dir[i].info.address +
                         "): lease expired (the shard is dead or cut off from Redis)");
    }
  }
  if (!failures.empty()) return ShardsFailed("pull", failures, StatusCode::kUnavailable);

  std::vector<float> flat(static_cast<size_t>(layout.total_numel()),
                          std::numeric_limits<float>::quiet_NaN());
  std::vector<PulledShard> pulled(static_cast<size_t>(run.num_shards));
  const auto start = std::chrono::steady_clock::now();
  const auto deadline = start + std::chrono::milliseconds(static_cast<int64_t>(a.wait_s * 1000));
  ASSIGN_OR_RETURN(std::shared_ptr<TlsSocketFactory> tls, ChannelTls(a.tls));
  auto results = ForEachShard(run.num_shards, [&](int i) {
    return PullOneShard(i, dir[i], run, c.run_id, partition[i], a.version_min, deadline, flat, tls,
                        &pulled[i]);
  });
  StatusCode code = StatusCode::kUnavailable;
  for (int i = 0; i < run.num_shards; ++i) {
    if (results[i].ok()) continue;
    if (results[i].code() != StatusCode::kUnavailable) code = results[i].code();
    failures.push_back("shard " + std::to_string(i) + " (" + dir[i].info.address +
                       "): " + OneLine(results[i].message()));
  }
  if (!failures.empty()) return ShardsFailed("pull", failures, code);
  const double pull_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  // Every element came from exactly one slice (the partition is contiguous and sorted);
  // check the pulled ranges independently, and that nothing is left unwritten.
  int64_t next = 0;
  for (const auto& p : pulled) {
    if (p.begin != next) {
      return DataLoss("the pulled slices do not tile the layout: element " + std::to_string(next) +
                      (p.begin > next ? " is missing" : " is covered twice"));
    }
    next = p.begin + p.elements;
  }
  if (next != layout.total_numel()) {
    return DataLoss("the pulled slices cover " + std::to_string(next) + " of " +
                    std::to_string(layout.total_numel()) + " elements");
  }
  for (size_t j = 0; j < flat.size(); ++j) {
    if (!std::isfinite(flat[j])) {
      return DataLoss("parameter element " + std::to_string(j) + " is not finite after the pull");
    }
  }

  int64_t vmin = std::numeric_limits<int64_t>::max(), vmax = -1;
  nlohmann::json versions = nlohmann::json::array();
  for (int i = 0; i < run.num_shards; ++i) {
    vmin = std::min(vmin, pulled[i].version);
    vmax = std::max(vmax, pulled[i].version);
    versions.push_back({{"shard", i},
                        {"address", dir[i].info.address},
                        {"version", pulled[i].version},
                        {"slice_begin", pulled[i].begin},
                        {"slice_end", pulled[i].begin + pulled[i].elements}});
  }
  auto global_seq = c.registry->GlobalSeq();

  // The model on the CPU, its flat vector replaced by the pulled one.
  ASSIGN_OR_RETURN(std::unique_ptr<Model> model, Model::Create(*mc, torch::kCPU, 0));
  {
    torch::NoGradGuard no_grad;
    torch::Tensor src = torch::from_blob(flat.data(), {layout.total_numel()}, torch::kFloat32);
    model->flat_params().copy_(src);
  }
  CheckpointSaveOptions so;
  so.step = vmin;
  so.state = {{"source", "shards"},
              {"run_id", c.run_id},
              {"layout_hash", run.layout_hash},
              {"min_version", vmin},
              {"max_version", vmax},
              {"shard_versions", versions},
              {"pulled_ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::system_clock::now().time_since_epoch())
                                .count()}};
  if (global_seq.ok()) so.state["global_seq"] = *global_seq;
  so.tokenizer_path = tokenizer_path;
  so.tokenizer_sha256 = run.tokenizer_sha256;
  so.keep = a.keep > 0 ? a.keep : std::numeric_limits<int64_t>::max();
  ASSIGN_OR_RETURN(std::string path, SaveCheckpoint(a.out, *model, so));
  if (!a.hf.empty())
    RETURN_IF_ERROR(ExportHuggingFace(*model, tokenizer_path, a.hf, a.force).WithContext("--hf"));

  std::string list;
  for (int i = 0; i < run.num_shards; ++i) {
    list += (i ? ", " : "") + std::string("shard ") + std::to_string(i) + " v" +
            std::to_string(pulled[i].version);
  }
  std::fprintf(stderr, "[pull-model] run %s: %s (%.2fM parameters in %.1f s)\n", c.run_id.c_str(),
               list.c_str(), double(layout.total_numel()) / 1e6, pull_s);
  if (vmin != vmax) {
    std::fprintf(stderr,
                 "[pull-model] note: the slices come from versions %ld..%ld (shards apply updates "
                 "independently); "
                 "the checkpoint's step is the lowest\n",
                 long(vmin), long(vmax));
  }
  std::fprintf(stderr, "[pull-model] wrote %s (step %ld)%s%s\n", path.c_str(), long(vmin),
               a.hf.empty() ? "" : " and Hugging Face folder ", a.hf.c_str());
  if (a.json) {
    nlohmann::json j = {{"run", c.run_id},
                        {"checkpoint", path},
                        {"step", vmin},
                        {"min_version", vmin},
                        {"max_version", vmax},
                        {"shards", versions},
                        {"parameters", layout.total_numel()},
                        {"seconds", pull_s}};
    if (!a.hf.empty()) j["hf"] = a.hf;
    if (global_seq.ok()) j["global_seq"] = *global_seq;
    std::cout << j.dump(2) << "\n";
  }
  return Status::Ok();
}

}  // namespace

void AddShardCommands(CLI::App& root, CommandList& commands) {
  {
    auto a = std::make_shared<CheckpointArgs>();
    auto* cmd = root.add_subcommand("checkpoint",
                                    "Ask every shard of a running federation to checkpoint now");
    AddRunTargetOptions(cmd, a->target);
    AddTlsFlags(*cmd, &a->tls, /*with_crl=*/false);
    cmd->add_flag("--json", a->json, "Print JSON");
    cmd->add_option("--timeout", a->timeout_s, "Seconds to wait for one shard's checkpoint")
        ->capture_default_str();
    commands.push_back({cmd, [a] { return RunCheckpoint(*a); }});
  }
  {
    auto a = std::make_shared<PullModelArgs>();
    auto* cmd = root.add_subcommand("pull-model",
                                    "Assemble the global model from a running federation's shards "
                                    "into a checkpoint folder (and a Hugging Face one)");
    AddRunTargetOptions(cmd, a->target);
    AddTlsFlags(*cmd, &a->tls, /*with_crl=*/false);
    cmd->add_option(
           "-o,--out", a->out,
           "Checkpoints root to write step-<version>/ under (eval/export/generate take it)")
        ->required();
    cmd->add_option("--hf", a->hf, "Also export a Hugging Face LlamaForCausalLM folder here");
    cmd->add_flag("--force", a->force, "With --hf: replace an existing non-empty folder");
    cmd->add_option("--tokenizer", a->tokenizer,
                    "The run's tokenizer.model (default: the config's data.tokenizer or "
                    "data.prepared/tokenizer.model)");
    cmd->add_option("--version-min", a->version_min, "Wait until every shard reached this version")
        ->default_str("none: the versions the shards have");
    cmd->add_option("--wait-s", a->wait_s,
                    "Seconds to wait for shards that are starting or behind --version-min")
        ->capture_default_str();
    cmd->add_option("--keep", a->keep, "Keep only the newest N checkpoints under --out (0: all)")
        ->capture_default_str();
    cmd->add_flag("--json", a->json, "Print a JSON summary on stdout");
    commands.push_back({cmd, [a] { return RunPullModel(*a); }});
  }
}

}  // namespace fedps::tools
