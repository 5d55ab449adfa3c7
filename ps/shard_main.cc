// fedps-shard: one parameter-server shard of a fedps run (docs/protocol.md).
//
//   fedps-shard --config FILE --shard I [--port P] [--dir DIR] [--init CKPT]
//
// Start-up: load the config; resolve the model config against the run's tokenizer; cut
// the flat layout into [ps] num_shards slices; put the run identity into Redis (InitRun:
// a process with another model / tokenizer / codec / shard count refuses to start,
// naming the field); start the ShardCore (newest valid checkpoint, else the initial model
// - the seed-deterministic Model::Create(config, cpu, run.seed), or --init's weights -
// then replay of the commit log) and the RPC server, registered in the shard directory.
// Redis unreachable at start: wait up to ps.redis_wait_ms with a progress line. A lapsed
// directory lease (Redis away) is reclaimed by itself (ps/shard_membership.h); when another
// live process owns the shard, exit 1 naming it.
// SIGTERM / SIGINT: drain (apply what is committed, checkpoint), stop, exit 0.
// Exit 1 with one "fedps-shard: error: ..." line when it cannot start.
#include <csignal>
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>

#include "common/config.h"
#include "common/logging.h"
#include "common/metrics_log.h"
#include "model/checkpoint.h"
#include "model/decoder.h"
#include "model/layout.h"
#include "model/presets.h"
#include "model/tokenizer.h"
#include "ps/redis_wait.h"
#include "ps/registry.h"
#include "ps/shard_core.h"
#include "ps/shard_server.h"
#include "ps/tls_flags.h"

namespace fedps {
namespace {

struct Args {
  std::string config;
  int shard = -1;
  int port = -1;
  std::string dir;
  std::string init;
  TlsOptions tls;
};

// A stop signal is pending (main blocks SIGTERM / SIGINT; they stay pending until sigwait).
bool StopRequested() {
  sigset_t pending;
  return sigpending(&pending) == 0 && (sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1);
}

StatusOr<RegistryOptions> RegistryFromConfig(const RunConfig& cfg) {
  RegistryOptions r;
  const std::string& addr = cfg.ps.redis;
  size_t colon = addr.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == addr.size()) {
    return InvalidArgument("ps.redis '" + addr + "' is not host:port");
  }
  r.host = addr.substr(0, colon);
  try {
    r.port = std::stoi(addr.substr(colon + 1));
  } catch (const std::exception&) {
    return InvalidArgument("ps.redis '" + addr + "': bad port");
  }
  r.password = cfg.ps.redis_password;
  r.run_id = cfg.run.id;
  // Longer than any shard's own expiry: shards release their marks themselves.
  r.staged_ttl = std::chrono::milliseconds(std::max<int64_t>(2 * cfg.ps.stage_ttl_ms, 60000));
  return r;
}

// The slice [begin, end) of the initial model.
StatusOr<std::vector<float>> InitialSlice(const RunConfig& cfg, const ModelConfig& mc, const ParamLayout& layout,
                                          const std::string& init, SliceRange range) {
  std::vector<float> out(static_cast<size_t>(range.size()));
  if (init.empty()) {
    LOG(INFO) << "building the initial model (seed " << cfg.run.seed << ") for slice [" << range.begin << ", "
              << range.end << ")";
    ASSIGN_OR_RETURN(auto model, Model::Create(mc, torch::kCPU, cfg.run.seed));
    torch::Tensor flat = model->flat_params().contiguous();
    std::memcpy(out.data(), flat.data_ptr<float>() + range.begin, out.size() * sizeof(float));
    return out;
  }
  ASSIGN_OR_RETURN(CheckpointContents ck, LoadCheckpoint(init, /*with_optimizer=*/false));
  if (ck.layout_hash != layout.hash()) {
    return FailedPrecondition("--init " + init + " has layout " + ck.layout_hash + ", the run has " + layout.hash());
  }
  for (const ParamEntry& e : layout.entries()) {
    int64_t lo = std::max(e.offset, range.begin), hi = std::min(e.offset + e.numel, range.end);
    if (lo >= hi) continue;
    auto it = ck.params.find(e.name);
    if (it == ck.params.end()) return DataLoss("--init " + init + " lacks " + e.name);
    torch::Tensor t = it->second.to(torch::kFloat32).contiguous().view({-1});
    if (t.numel() != e.numel) return DataLoss("--init " + init + ": " + e.name + " has the wrong size");
    std::memcpy(out.data() + (lo - range.begin), t.data_ptr<float>() + (lo - e.offset),
                static_cast<size_t>(hi - lo) * sizeof(float));
  }
  return out;
}

Status Run(const Args& args, const sigset_t& signals) {
  ASSIGN_OR_RETURN(RunConfig cfg, LoadConfig(args.config));
  if (args.shard < 0 || args.shard >= cfg.ps.num_shards) {
    return InvalidArgument("--shard " + std::to_string(args.shard) + " not in [0, " +
                           std::to_string(cfg.ps.num_shards) + ") (ps.num_shards)");
  }
  const std::string tokenizer_path =
      cfg.data.tokenizer.empty() ? JoinPath(cfg.data.prepared, "tokenizer.model") : cfg.data.tokenizer;
  ASSIGN_OR_RETURN(auto tokenizer, Tokenizer::Load(tokenizer_path));
  ASSIGN_OR_RETURN(ModelConfig mc, ResolveModelConfig(cfg.model, tokenizer->vocab_size()));
  ParamLayout layout = ParamLayout::ForModel(mc);
  ASSIGN_OR_RETURN(auto slices, layout.Partition(static_cast<int>(cfg.ps.num_shards)));
  const SliceRange range = slices[static_cast<size_t>(args.shard)];

  ASSIGN_OR_RETURN(RegistryOptions ropts, RegistryFromConfig(cfg));
  {
    ASSIGN_OR_RETURN(auto registry,
                     ConnectWaitingForRedis(ropts, std::chrono::milliseconds(cfg.ps.redis_wait_ms), StopRequested));
    RunIdentity id;
    id.model_preset = mc.preset;
    id.model_config = mc.ToJson();
    id.layout_hash = layout.hash();
    id.tokenizer_sha256 = tokenizer->sha256();
    id.codec = cfg.compression.codec;
    id.num_shards = static_cast<int>(cfg.ps.num_shards);
    id.apply_config = PsApplyConfig(cfg.ps);
    auto stored = registry->InitRun(id);
    if (!stored.ok()) return stored.status().WithContext("run '" + cfg.run.id + "' in Redis " + cfg.ps.redis);
  }

  const std::string shard_name = "shard-" + std::to_string(args.shard);
  const std::string dir = args.dir.empty() ? JoinPath(cfg.run.dir, shard_name) : args.dir;
  ASSIGN_OR_RETURN(auto metrics, MetricsLog::Open(JoinPath(JoinPath(cfg.run.dir, shard_name), "metrics.jsonl"),
                                                  shard_name));

  ShardCoreOptions co;
  co.run_id = cfg.run.id;
  co.layout_hash = layout.hash();
  co.shard_index = args.shard;
  co.num_shards = static_cast<int>(cfg.ps.num_shards);
  co.slice_begin = range.begin;
  co.slice_elements = range.size();
  co.dir = dir;
  co.ps = cfg.ps;
  co.compression = cfg.compression;
  co.registry = ropts;
  co.metrics = metrics.get();
  const LimitsOptions& lim = cfg.limits;
  co.max_receiving = static_cast<int>(lim.receiving_updates);
  co.max_receiving_per_client = static_cast<int>(lim.receiving_updates_per_client);
  co.max_receiving_bytes_per_client = lim.receiving_bytes_per_client;
  co.receive_timeout_ms = lim.receive_timeout_ms;
  co.max_staged = static_cast<int>(lim.staged_updates);
  co.max_staged_bytes = lim.staged_bytes;
  co.max_staged_per_client = static_cast<int>(lim.staged_updates_per_client);
  co.max_staged_bytes_per_client = lim.staged_bytes_per_client;
  const std::string init = args.init;
  co.init_slice = [&cfg, &mc, &layout, init, range] { return InitialSlice(cfg, mc, layout, init, range); };
  ASSIGN_OR_RETURN(auto core, ShardCore::Create(co));
  RETURN_IF_ERROR(core->Start());

  ShardServerOptions so;
  so.host = cfg.ps.host;
  so.port = args.port >= 0 ? args.port : (cfg.ps.base_port > 0 ? static_cast<int>(cfg.ps.base_port) + args.shard : 0);
  so.lease_ms = cfg.ps.shard_lease_ms;
  so.limits.max_connections = static_cast<int>(lim.max_connections);
  so.limits.idle_timeout_ms = lim.idle_timeout_ms;
  so.limits.read_timeout_ms = lim.read_timeout_ms;
  so.limits.max_message_bytes = lim.max_message_bytes;
  so.registry = ropts;
  so.tls = args.tls;
  ShardServer server(core.get(), so);
  RETURN_IF_ERROR(server.Start());
  // One line on stdout for scripts and tests: where to reach this shard.
  std::printf("fedps-shard %d listening on %s epoch %lld slice [%lld, %lld) dir %s\n", args.shard,
              server.address().c_str(), static_cast<long long>(server.epoch()), static_cast<long long>(range.begin),
              static_cast<long long>(range.end), dir.c_str());
  std::fflush(stdout);
  metrics->Write("shard_start", {{"address", server.address()},
                                 {"epoch", server.epoch()},
                                 {"slice_begin", range.begin},
                                 {"slice_end", range.end}})
      .IgnoreError();

  // Wait for a stop signal, or for another live process to take the shard over.
  const timespec poll{0, 250 * 1000 * 1000};
  int sig = -1;
  while (sig < 0) {
    sig = sigtimedwait(&signals, nullptr, &poll);
    if (sig < 0 && !server.lost().ok()) {
      Status lost = server.lost();
      server.Stop();
      metrics->Write("shard_lost", {{"message", lost.message()}}).IgnoreError();
      return lost.WithContext("exiting: this process no longer owns the shard");
    }
  }
  LOG(INFO) << "signal " << sig << ": draining";
  Status drained = core->Drain();
  if (!drained.ok()) LOG(WARNING) << "drain: " << drained.ToString();
  server.Stop();
  CoreStatus st = core->GetStatus();
  metrics->Write("shard_stop", {{"version", st.version}, {"checkpoint_version", st.checkpoint_version}})
      .IgnoreError();
  {
    auto registry = Registry::Connect(ropts);
    if (registry.ok()) {
      (*registry)
          ->AddEvent("shard_stopped", {{"shard", args.shard}, {"version", st.version}, {"epoch", server.epoch()}})
          .status()
          .IgnoreError();
    }
  }
  LOG(INFO) << "stopped at version " << st.version;
  return Status::Ok();
}

}  // namespace
}  // namespace fedps

int main(int argc, char** argv) {
  // Block the stop signals in every thread (threads inherit the mask); main waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  CLI::App app{"fedps-shard: one parameter-server shard of a fedps run (docs/protocol.md)"};
  app.option_defaults()->always_capture_default();  // --help shows every default
  fedps::Args args;
  bool verbose = false;
  app.add_option("--config", args.config, "Run config (TOML): [run], [model], [data], [ps], [compression]")
      ->required();
  app.add_option("--shard", args.shard, "Shard index in [0, ps.num_shards)")->required()->default_str("");
  app.add_option("--port", args.port, "Port to listen on (0: any free port)")->default_str("ps.base_port + shard");
  app.add_option("--dir", args.dir, "Shard folder for staged updates and checkpoints (default: <run.dir>/shard-<i>)");
  app.add_option("--init", args.init,
                 "Baseline checkpoint folder (model.safetensors by layout names) to start from instead of the "
                 "seed's initial model; used only when the shard has no checkpoint yet");
  fedps::AddTlsFlags(app, &args.tls, /*with_crl=*/true);
  app.add_flag("-v,--verbose", verbose, "Verbose logs");
  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "fedps-shard: error: " << e.what() << " (see --help)\n";
    return 1;
  }
  fedps::InitLogging(argv[0], verbose);
  fedps::Status s = fedps::Run(args, signals);
  if (!s.ok()) {
    std::cerr << "fedps-shard: error: " << s.message() << "\n";
    return 1;
  }
  return 0;
}
