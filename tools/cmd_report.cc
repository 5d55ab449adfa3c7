// fedps-ctl report RUN_DIR [RUN_DIR ...] [--out FILE]: a self-contained report.html from
// run folders alone (tools/report.h, docs/demo.md).
#include <cstdio>
#include <memory>

#include "tools/commands.h"
#include "tools/report.h"

namespace fedps::tools {

void AddReportCommands(CLI::App& root, CommandList& commands) {
  auto args = std::make_shared<ReportOptions>();
  auto* cmd = root.add_subcommand(
      "report", "Write report.html (plots by gnuplot, embedded) from run folders: evaluator, clients, shards, baseline");
  cmd->add_option("run_dirs", args->run_dirs, "Run folders (read recursively; several are shown together)")
      ->required();
  cmd->add_option("-o,--out", args->out, "Output file (default: <first run folder>/report.html)");
  cmd->add_option("--gnuplot", args->gnuplot, "gnuplot executable (default: $FEDPS_GNUPLOT, else gnuplot on PATH)");
  cmd->add_option("--title", args->title, "Report title")->capture_default_str();
  commands.push_back({cmd, [args]() -> Status {
                        ASSIGN_OR_RETURN(std::string out, WriteReport(*args));
                        std::printf("%s\n", out.c_str());
                        return Status::Ok();
                      }});
}

}  // namespace fedps::tools
