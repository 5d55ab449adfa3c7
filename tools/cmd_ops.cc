// fedps-ctl status | members | shards | updates | watch: what a running
// federation looks like, read from its Redis registry. Human tables by default,
// `--json` for scripts (schema in docs/status-json.md).
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <thread>

#include "common/config.h"
#include "ps/registry.h"
#include "tools/commands.h"
#include "tools/run_target.h"

namespace fedps::tools {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string Age(int64_t ms) {
  if (ms <= 0) return "-";
  char buf[32];
  double s = static_cast<double>(NowMs() - ms) / 1000.0;
  if (s < 0) s = 0;
  if (s < 120) std::snprintf(buf, sizeof buf, "%.1fs", s);
  else if (s < 7200) std::snprintf(buf, sizeof buf, "%.0fm", s / 60);
  else std::snprintf(buf, sizeof buf, "%.1fh", s / 3600);
  return buf;
}

std::string Bytes(int64_t b) {
  char buf[32];
  double v = static_cast<double>(b);
  if (v >= 1e9) std::snprintf(buf, sizeof buf, "%.2f GB", v / 1e9);
  else if (v >= 1e6) std::snprintf(buf, sizeof buf, "%.1f MB", v / 1e6);
  else if (v >= 1e3) std::snprintf(buf, sizeof buf, "%.1f kB", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%ld B", static_cast<long>(b));
  return buf;
}

nlohmann::json ShardJson(const ShardStatus& s) {
  return {{"index", s.info.index},
          {"address", s.info.address},
          {"slice_begin", s.info.slice_begin},
          {"slice_end", s.info.slice_end},
          {"pid", s.info.pid},
          {"epoch", s.epoch},
          {"alive", s.alive},
          {"lease_remaining_ms", s.lease_remaining_ms},
          {"last_heartbeat_ms", s.last_heartbeat_ms},
          {"version", s.stats.version},
          {"applied_updates", s.stats.applied_updates},
          {"bytes_in", s.stats.bytes_in},
          {"bytes_out", s.stats.bytes_out},
          {"last_checkpoint_version", s.stats.last_checkpoint_version},
          {"last_checkpoint_ms", s.stats.last_checkpoint_ms},
          {"norm_refused", s.stats.norm_refused},
          {"norm_median", s.stats.norm_median}};
}

nlohmann::json MemberJson(const Member& m, const std::string& state) {
  nlohmann::json j = {{"name", m.name},
                      {"state", state},
                      {"epoch", m.epoch},
                      {"host", m.host},
                      {"domains", m.data_domains},
                      {"joined_ms", m.joined_ms},
                      {"last_heartbeat_ms", m.last_heartbeat_ms},
                      {"lease_ms", m.lease_ms},
                      {"lease_remaining_ms", m.lease_remaining_ms},
                      {"stats", m.stats}};
  if (!m.end_reason.empty()) {
    j["end_reason"] = m.end_reason;
    j["ended_ms"] = m.ended_ms;
  }
  return j;
}

nlohmann::json UpdateJson(const CommittedUpdate& u) {
  nlohmann::json j = {{"seq", u.seq},       {"update_id", u.update_id}, {"client", u.client},
                      {"epoch", u.epoch},   {"committed_ms", u.committed_ms}, {"meta", u.meta}};
  if (u.meta.contains("base_version") && u.meta["base_version"].is_number_integer()) {
    j["staleness"] = u.seq - 1 - u.meta["base_version"].get<int64_t>();
  }
  return j;
}

template <typename T>
T StatOr(const nlohmann::json& stats, const char* key, T fallback) {
  if (stats.is_object() && stats.contains(key) && stats[key].is_number()) return stats[key].get<T>();
  return fallback;
}

// Everything `status` shows, as JSON (the --json output and the source of the tables).
StatusOr<nlohmann::json> Snapshot(Registry& r, int64_t events) {
  nlohmann::json j;
  auto run = r.GetRun();
  if (run.ok()) {
    j["run"] = {{"model_preset", run->model_preset}, {"layout_hash", run->layout_hash},
                {"tokenizer_sha256", run->tokenizer_sha256}, {"codec", run->codec},
                {"num_shards", run->num_shards}, {"created_ms", run->created_ms}};
  } else if (run.status().code() == StatusCode::kNotFound) {
    j["run"] = nullptr;
  } else {
    return run.status();
  }
  ASSIGN_OR_RETURN(int64_t seq, r.GlobalSeq());
  j["global_seq"] = seq;
  ASSIGN_OR_RETURN(auto shards, r.Shards());
  j["shards"] = nlohmann::json::array();
  for (const auto& s : shards) j["shards"].push_back(ShardJson(s));
  ASSIGN_OR_RETURN(auto members, r.Members());
  ASSIGN_OR_RETURN(auto past, r.PastMembers(50));
  j["clients"] = nlohmann::json::array();
  for (const auto& m : members) j["clients"].push_back(MemberJson(m, "live"));
  for (const auto& m : past) j["clients"].push_back(MemberJson(m, m.end_reason));
  ASSIGN_OR_RETURN(auto refusals, r.RefusalCounts());
  j["refusals"] = refusals;
  ASSIGN_OR_RETURN(auto evs, r.RecentEvents(events));
  j["events"] = nlohmann::json::array();
  for (const auto& e : evs) j["events"].push_back({{"id", e.id}, {"ms", e.ms}, {"type", e.type}, {"data", e.data}});
  return j;
}

// "norm med" is the median slice norm the shard's update norm bound is a multiple of;
// "norm ref" the updates it refused for their norm (docs/security.md, "Update norm bound").
void PrintShards(const nlohmann::json& shards) {
  std::printf("%-5s %-21s %-5s %-6s %8s %8s %10s %10s %8s %8s %9s %8s\n", "shard", "address", "epoch", "alive",
              "version", "applied", "bytes in", "bytes out", "ckpt", "beat", "norm med", "norm ref");
  for (const auto& s : shards) {
    const double median = s["norm_median"].get<double>();
    char norm[32] = "-";
    if (median > 0) std::snprintf(norm, sizeof norm, "%.3g", median);
    std::printf("%-5d %-21s %-5ld %-6s %8ld %8ld %10s %10s %8ld %8s %9s %8ld\n", s["index"].get<int>(),
                s["address"].get<std::string>().c_str(), long(s["epoch"].get<int64_t>()), s["alive"].get<bool>() ? "yes" : "NO",
                long(s["version"].get<int64_t>()), long(s["applied_updates"].get<int64_t>()),
                Bytes(s["bytes_in"].get<int64_t>()).c_str(), Bytes(s["bytes_out"].get<int64_t>()).c_str(),
                long(s["last_checkpoint_version"].get<int64_t>()), Age(s["last_heartbeat_ms"].get<int64_t>()).c_str(),
                norm, long(s["norm_refused"].get<int64_t>()));
  }
}

void PrintClients(const nlohmann::json& clients) {
  std::printf("%-16s %-8s %-5s %-18s %7s %8s %9s %10s %8s\n", "client", "state", "epoch", "domains", "lease",
              "updates", "staleness", "tok/s", "beat");
  for (const auto& c : clients) {
    std::string domains;
    for (const auto& d : c["domains"]) domains += (domains.empty() ? "" : ",") + d.get<std::string>();
    const auto& st = c["stats"];
    char lease[32] = "-";
    if (c["state"] == "live") std::snprintf(lease, sizeof lease, "%.1fs", c["lease_remaining_ms"].get<int64_t>() / 1000.0);
    std::printf("%-16s %-8s %-5ld %-18s %7s %8ld %9.2f %10.0f %8s\n", c["name"].get<std::string>().c_str(),
                c["state"].get<std::string>().c_str(), long(c["epoch"].get<int64_t>()), domains.substr(0, 18).c_str(), lease,
                long(StatOr<int64_t>(st, "updates", 0)), StatOr<double>(st, "mean_staleness", 0.0),
                StatOr<double>(st, "tokens_per_s", 0.0), Age(c["last_heartbeat_ms"].get<int64_t>()).c_str());
  }
}

void PrintEvents(const nlohmann::json& events) {
  for (const auto& e : events) {
    std::printf("  %8s ago  %-16s %s\n", Age(e["ms"].get<int64_t>()).c_str(), e["type"].get<std::string>().c_str(),
                e["data"].dump().substr(0, 100).c_str());
  }
}

void PrintStatus(const nlohmann::json& j, const std::string& run_id) {
  std::printf("run %s", run_id.c_str());
  if (!j["run"].is_null()) {
    std::printf("  model %s  codec %s  shards %d  layout %s", j["run"]["model_preset"].get<std::string>().c_str(),
                j["run"]["codec"].get<std::string>().c_str(), j["run"]["num_shards"].get<int>(),
                j["run"]["layout_hash"].get<std::string>().substr(0, 12).c_str());
  } else {
    std::printf("  (not initialised yet: no shard has started)");
  }
  std::printf("\nglobal version %ld\n\n", long(j["global_seq"].get<int64_t>()));
  PrintShards(j["shards"]);
  std::printf("\n");
  PrintClients(j["clients"]);
  if (!j["refusals"].empty()) std::printf("\nrefusals: %s\n", j["refusals"].dump().c_str());
  std::printf("\nrecent events\n");
  PrintEvents(j["events"]);
}

struct StatusArgs {
  RunTarget target;
  bool json = false;
  int64_t events = 10;
};

struct WatchArgs {
  RunTarget target;
  double interval = 2.0;
  int64_t count = 0;
};

struct UpdatesArgs {
  RunTarget target;
  bool json = false;
  int64_t last = 20;
};

volatile std::sig_atomic_t g_stop = 0;

}  // namespace

void AddOpsCommands(CLI::App& root, CommandList& commands) {
  {
    auto a = std::make_shared<StatusArgs>();
    auto* cmd = root.add_subcommand("status", "A running federation: run, global version, shards, clients, recent events");
    AddRunTargetOptions(cmd, a->target);
    cmd->add_flag("--json", a->json, "Print JSON (schema: docs/status-json.md)");
    cmd->add_option("--events", a->events, "Recent events to show");
    commands.push_back({cmd, [a]() -> Status {
                          ASSIGN_OR_RETURN(ConnectedRun c, ConnectRun(a->target));
                          Registry* r = c.registry.get();
                          ASSIGN_OR_RETURN(nlohmann::json j, Snapshot(*r, a->events));
                          if (a->json) {
                            std::cout << j.dump(2) << "\n";
                          } else {
                            PrintStatus(j, c.run_id);
                          }
                          return Status::Ok();
                        }});
  }
  {
    auto a = std::make_shared<StatusArgs>();
    auto* cmd = root.add_subcommand("members", "Clients: live members with leases, and past ones (left, expired)");
    AddRunTargetOptions(cmd, a->target);
    cmd->add_flag("--json", a->json, "Print JSON");
    commands.push_back({cmd, [a]() -> Status {
                          ASSIGN_OR_RETURN(ConnectedRun c, ConnectRun(a->target));
                          Registry* r = c.registry.get();
                          ASSIGN_OR_RETURN(nlohmann::json j, Snapshot(*r, 0));
                          if (a->json) std::cout << j["clients"].dump(2) << "\n";
                          else PrintClients(j["clients"]);
                          return Status::Ok();
                        }});
  }
  {
    auto a = std::make_shared<StatusArgs>();
    auto* cmd = root.add_subcommand("shards", "The shard directory: addresses, epochs, versions, traffic, checkpoints");
    AddRunTargetOptions(cmd, a->target);
    cmd->add_flag("--json", a->json, "Print JSON");
    commands.push_back({cmd, [a]() -> Status {
                          ASSIGN_OR_RETURN(ConnectedRun c, ConnectRun(a->target));
                          Registry* r = c.registry.get();
                          ASSIGN_OR_RETURN(nlohmann::json j, Snapshot(*r, 0));
                          if (a->json) std::cout << j["shards"].dump(2) << "\n";
                          else PrintShards(j["shards"]);
                          return Status::Ok();
                        }});
  }
  {
    auto a = std::make_shared<UpdatesArgs>();
    auto* cmd = root.add_subcommand("updates", "The newest committed updates in global order, with their staleness");
    AddRunTargetOptions(cmd, a->target);
    cmd->add_flag("--json", a->json, "Print JSON");
    cmd->add_option("-n,--last", a->last, "How many");
    commands.push_back({cmd, [a]() -> Status {
                          if (a->last < 1) return InvalidArgument("--last must be >= 1");
                          ASSIGN_OR_RETURN(ConnectedRun c, ConnectRun(a->target));
                          Registry* r = c.registry.get();
                          ASSIGN_OR_RETURN(int64_t seq, r->GlobalSeq());
                          ASSIGN_OR_RETURN(auto ups, r->CommittedAfter(std::max<int64_t>(0, seq - a->last), a->last));
                          nlohmann::json out = nlohmann::json::array();
                          for (const auto& u : ups) out.push_back(UpdateJson(u));
                          if (a->json) {
                            std::cout << out.dump(2) << "\n";
                            return Status::Ok();
                          }
                          std::printf("%6s %-28s %-14s %9s %10s %7s %8s\n", "seq", "update", "client", "staleness", "tokens",
                                      "steps", "age");
                          for (const auto& u : out) {
                            const auto& m = u["meta"];
                            std::printf("%6ld %-28s %-14s %9s %10ld %7ld %8s\n", long(u["seq"].get<int64_t>()),
                                        u["update_id"].get<std::string>().substr(0, 28).c_str(),
                                        u["client"].get<std::string>().substr(0, 14).c_str(),
                                        u.contains("staleness") ? std::to_string(u["staleness"].get<int64_t>()).c_str() : "-",
                                        long(StatOr<int64_t>(m, "tokens", 0)), long(StatOr<int64_t>(m, "local_steps", 0)),
                                        Age(u["committed_ms"].get<int64_t>()).c_str());
                          }
                          return Status::Ok();
                        }});
  }
  {
    auto a = std::make_shared<WatchArgs>();
    auto* cmd = root.add_subcommand("watch", "Live view of status, refreshed until Ctrl-C");
    AddRunTargetOptions(cmd, a->target);
    cmd->add_option("-i,--interval", a->interval, "Seconds between refreshes");
    cmd->add_option("--count", a->count, "Stop after this many refreshes (0: until Ctrl-C)");
    commands.push_back({cmd, [a]() -> Status {
                          if (!(a->interval > 0)) return InvalidArgument("--interval must be > 0");
                          ASSIGN_OR_RETURN(ConnectedRun c, ConnectRun(a->target));
                          Registry* r = c.registry.get();
                          std::signal(SIGINT, [](int) { g_stop = 1; });
                          const std::string& run_id = c.run_id;
                          const bool tty = ::isatty(STDOUT_FILENO);
                          for (int64_t i = 0; !g_stop && (a->count == 0 || i < a->count); ++i) {
                            auto j = Snapshot(*r, 8);
                            if (tty) std::printf("\033[H\033[2J");
                            if (j.ok()) PrintStatus(*j, run_id);
                            else std::printf("registry unavailable: %s (retrying)\n", j.status().message().c_str());
                            std::fflush(stdout);
                            if (a->count != 0 && i + 1 == a->count) break;
                            std::this_thread::sleep_for(std::chrono::milliseconds(static_cast<int64_t>(a->interval * 1000)));
                          }
                          return Status::Ok();
                        }});
  }
}

}  // namespace fedps::tools
