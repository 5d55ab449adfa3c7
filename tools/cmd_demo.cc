// fedps-ctl demo: the same federated demo as `make demo` (scripts/demo.sh), for a build
// that is already there. The script orchestrates processes (redis-server, shards,
// clients, the baseline, the report); this command finds it in the source tree this
// binary was built from, points it at this binary's folder and hands the process over.
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "common/env.h"
#include "tools/commands.h"

namespace fedps::tools {
namespace {

struct DemoArgs {
  std::string config = "configs/demo.toml";
  std::string runs;
  std::string data;
  std::string cache;
};

Status RunDemo(const DemoArgs& a) {
  const std::string source = FEDPS_SOURCE_DIR;
  const std::string script = JoinPath(source, "scripts/demo.sh");
  if (!Env::Default()->Exists(script)) {
    return NotFound("the demo script " + script + " is not there (this binary was built from " + source + ")");
  }
  std::error_code ec;
  std::string bin = std::filesystem::read_symlink("/proc/self/exe", ec).parent_path().string();
  if (ec) return Internal("cannot find this binary's folder: " + ec.message());
  std::string config = std::filesystem::absolute(a.config, ec).string();
  std::vector<std::string> argv = {"bash", script, "--config", config, "--bin", bin};
  for (const auto& [flag, value] : {std::pair{"--runs", a.runs}, {"--data", a.data}, {"--cache", a.cache}}) {
    if (value.empty()) continue;
    argv.push_back(flag);
    argv.push_back(std::filesystem::absolute(value, ec).string());
  }
  if (::chdir(source.c_str()) != 0) return Internal("cannot enter " + source + ": " + std::strerror(errno));
  std::vector<char*> cargv;
  for (auto& s : argv) cargv.push_back(s.data());
  cargv.push_back(nullptr);
  ::execvp("bash", cargv.data());
  return Internal(std::string("cannot run bash: ") + std::strerror(errno));
}

}  // namespace

void AddDemoCommands(CLI::App& root, CommandList& commands) {
  auto a = std::make_shared<DemoArgs>();
  auto* cmd = root.add_subcommand(
      "demo", "Run the federated demo (as `make demo`, without the install and build): corpus, clients, report");
  cmd->add_option("-c,--config", a->config, "Demo config (TOML with #@demo settings), e.g. configs/demo-smoke.toml");
  cmd->add_option("--runs", a->runs, "Folder for the run folders (default: runs/demo in the source tree)");
  cmd->add_option("--data", a->data, "Folder for the prepared data (default: data/<config name>)");
  cmd->add_option("--cache", a->cache, "Corpus cache folder (default: cache/corpus)");
  commands.push_back({cmd, [a] { return RunDemo(*a); }});
}

}  // namespace fedps::tools
