// fedps-ctl's subcommands. Each tools/cmd_*.cc adds its subcommands to the root
// CLI11 app and returns, per subcommand, the function that runs it. main() parses
// the command line, runs the one chosen and turns a failed Status into one
// readable line on stderr and exit code 1.
#pragma once

#include <functional>
#include <vector>

#include <CLI/CLI.hpp>

#include "common/status.h"

namespace fedps::tools {

struct Command {
  CLI::App* app;                // the subcommand (checked with `*app` after parsing)
  std::function<Status()> run;  // runs it; options were bound to captured state
};
using CommandList = std::vector<Command>;

// tools/cmd_data.cc: tokenizer train, prepare, partition (and later corpus build).
void AddDataCommands(CLI::App& root, CommandList& commands);
// tools/cmd_train.cc: train (centralised baseline), eval, export, generate.
void AddTrainCommands(CLI::App& root, CommandList& commands);
// tools/cmd_corpus.cc: corpus build (the default corpus from Debian packages).
void AddCorpusCommands(CLI::App& root, CommandList& commands);
// tools/cmd_ops.cc: status, members, shards, updates, watch (a running federation).
void AddOpsCommands(CLI::App& root, CommandList& commands);
// tools/cmd_report.cc: report (report.html from run folders).
void AddReportCommands(CLI::App& root, CommandList& commands);
// tools/cmd_shards.cc: checkpoint, pull-model (talk to a running federation's shards).
void AddShardCommands(CLI::App& root, CommandList& commands);

// tools/cmd_tls.cc: tls init, tls issue, tls revoke (certificates for mutual TLS).
void AddTlsCommands(CLI::App& root, CommandList& commands);

// tools/cmd_demo.cc: demo (runs scripts/demo.sh against this build).
void AddDemoCommands(CLI::App& root, CommandList& commands);

}  // namespace fedps::tools
