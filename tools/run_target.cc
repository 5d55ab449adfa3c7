#include "tools/run_target.h"

namespace fedps::tools {

void AddRunTargetOptions(CLI::App* cmd, RunTarget& t) {
  cmd->add_option("-c,--config", t.config, "Run config (TOML): takes [ps] redis and [run] id from it");
  cmd->add_option("--redis", t.redis, "Redis host:port (overrides the config)");
  cmd->add_option("--run", t.run, "Run id (overrides the config)");
  cmd->add_option("--password", t.password, "Redis password (overrides the config)");
}

StatusOr<ConnectedRun> ConnectRun(const RunTarget& t) {
  ConnectedRun c;
  RegistryOptions o;
  std::string redis = t.redis;
  o.run_id = t.run;
  o.password = t.password;
  if (!t.config.empty()) {
    ASSIGN_OR_RETURN(RunConfig cfg, LoadConfig(t.config));
    if (redis.empty()) redis = cfg.ps.redis;
    if (o.run_id.empty()) o.run_id = cfg.run.id;
    if (o.password.empty()) o.password = cfg.ps.redis_password;
    c.config = std::move(cfg);
  }
  if (redis.empty() || o.run_id.empty()) {
    return InvalidArgument("say which run: --config FILE, or --redis HOST:PORT and --run ID");
  }
  auto colon = redis.rfind(':');
  int port = 0;
  if (colon != std::string::npos) {
    try {
      size_t used = 0;
      port = std::stoi(redis.substr(colon + 1), &used);
      if (used != redis.size() - colon - 1) port = 0;
    } catch (const std::exception&) {
      port = 0;
    }
  }
  if (port <= 0 || port > 65535) return InvalidArgument("--redis must be host:port (got \"" + redis + "\")");
  o.host = redis.substr(0, colon);
  o.port = port;
  o.connect_timeout = std::chrono::milliseconds(1500);
  c.run_id = o.run_id;
  ASSIGN_OR_RETURN(c.registry, Registry::Connect(o));
  return c;
}

}  // namespace fedps::tools
