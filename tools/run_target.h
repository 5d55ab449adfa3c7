// Which running federation a fedps-ctl command talks to: `--config RUN.toml` (Redis
// address, password and run id from [ps] and [run]) or `--redis HOST:PORT --run ID`.
#pragma once

#include <memory>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>

#include "common/config.h"
#include "common/status.h"
#include "ps/registry.h"

namespace fedps::tools {

struct RunTarget {
  std::string config;
  std::string redis;
  std::string run;
  std::string password;
};

void AddRunTargetOptions(CLI::App* cmd, RunTarget& target);

// The run's registry, and its config when --config was given.
struct ConnectedRun {
  std::unique_ptr<Registry> registry;
  std::optional<RunConfig> config;
  std::string run_id;
};

StatusOr<ConnectedRun> ConnectRun(const RunTarget& target);

}  // namespace fedps::tools
