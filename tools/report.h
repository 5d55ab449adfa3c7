// `fedps-ctl report`: one self-contained report.html from run folders alone.
//
// A run folder is read recursively for what fedps processes leave behind (docs/demo.md,
// "The report"): every metrics.jsonl (classified by its records as a client, the evaluator,
// a shard or a centralised `fedps-ctl train` run), corpus.json, eval-<label>.json
// (`fedps-ctl eval --json`), samples-<label>.json (`fedps-ctl generate --json`),
// status*.json (`fedps-ctl status --json`), demo-events.jsonl and demo.json (scripts/demo.sh).
// Plots are drawn by gnuplot (pngcairo) and embedded as base64 PNG; the report shows only
// numbers found in those files, and says which sections had no data.
#pragma once

#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"

namespace fedps::tools {

struct ReportOptions {
  std::vector<std::string> run_dirs;
  std::string out;      // "" = <first run dir>/report.html
  std::string gnuplot;  // "" = $FEDPS_GNUPLOT, else `gnuplot` on PATH
  std::string title = "fedps run report";
};

// One process's metrics.jsonl.
struct ProcessLog {
  std::string name;  // client/evaluator name, "shard-0", or the baseline folder's name
  std::string path;
  std::vector<nlohmann::json> records;
};

// Everything the report understands in one run folder.
struct RunRecords {
  std::string dir;
  std::string label;  // shown in titles when several folders are reported together
  std::vector<ProcessLog> clients;     // fedps-client (update records)
  std::vector<ProcessLog> evaluators;  // fedps-client --evaluate (eval records with "version")
  std::vector<ProcessLog> shards;      // fedps-shard
  std::vector<ProcessLog> baselines;   // fedps-ctl train
  std::vector<std::pair<std::string, nlohmann::json>> final_evals;  // eval-<label>.json
  std::vector<std::pair<std::string, nlohmann::json>> samples;      // samples-<label>.json
  std::optional<nlohmann::json> corpus;  // corpus.json
  std::optional<nlohmann::json> status;  // the status*.json with the highest global_seq
  std::vector<nlohmann::json> demo_events;  // demo-events.jsonl
  std::optional<nlohmann::json> demo;       // demo.json
  std::vector<std::string> unrecognised;    // metrics.jsonl files of no known kind
  double t0 = 0;  // earliest record time (Unix seconds): the origin of time axes
};

// Reads one run folder. NotFound when it does not exist or holds nothing the report knows.
StatusOr<RunRecords> LoadRunFolder(const std::string& dir, const std::string& label);

// Classifies a metrics.jsonl by its records: "client", "evaluator", "shard", "baseline"
// or "" (unknown).
std::string ClassifyMetrics(const std::vector<nlohmann::json>& records);

// Token-weighted mean loss of an eval record's "domains" over `domains` (all when empty);
// nullopt when none of them is present.
std::optional<double> MeanDomainLoss(const nlohmann::json& eval, const std::vector<std::string>& domains);

// Count of each staleness value 0..max over the clients' committed updates: rows are
// staleness values, columns clients.
std::vector<std::vector<int64_t>> StalenessTable(const std::vector<ProcessLog>& clients, int64_t* max_staleness);

std::string HtmlEscape(std::string_view s);

// The gnuplot executable (see ReportOptions::gnuplot) after checking that it runs and has
// the pngcairo terminal; FailedPrecondition with what to install otherwise.
StatusOr<std::string> FindGnuplot(const std::string& hint);

// Writes the report; returns its path.
StatusOr<std::string> WriteReport(const ReportOptions& options);

}  // namespace fedps::tools
