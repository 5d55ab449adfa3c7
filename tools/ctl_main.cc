// fedps-ctl: build a corpus and prepare data, train the centralised baseline, evaluate
// and export checkpoints, inspect and operate a running federation, write reports.
#include <cstdio>
#include <iostream>

#include "common/logging.h"
#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"fedps-ctl: data preparation, training, evaluation and operation of fedps runs"};
  app.require_subcommand(1);
  // Every option's --help line shows its default (subcommands inherit this).
  app.option_defaults()->always_capture_default();
  bool verbose = false;
  app.add_flag("-v,--verbose", verbose, "Verbose logs");
  fedps::tools::CommandList commands;
  fedps::tools::AddDataCommands(app, commands);
  fedps::tools::AddTrainCommands(app, commands);
  fedps::tools::AddOpsCommands(app, commands);
  fedps::tools::AddDemoCommands(app, commands);
  fedps::tools::AddShardCommands(app, commands);
  fedps::tools::AddCorpusCommands(app, commands);
  fedps::tools::AddReportCommands(app, commands);
  fedps::tools::AddTlsCommands(app, commands);
  CLI11_PARSE(app, argc, argv);
  fedps::InitLogging(argv[0], verbose);
  for (auto& command : commands) {
    if (!command.app->parsed()) continue;
    fedps::Status status = command.run();
    if (!status.ok()) {
      std::cerr << "fedps-ctl " << command.app->get_name() << ": error: " << status.message() << "\n";
      return 1;
    }
    return 0;
  }
  std::cerr << app.help();
  return 1;
}
