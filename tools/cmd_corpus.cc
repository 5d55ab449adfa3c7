// fedps-ctl corpus commands: `corpus build` (the default multi-domain text corpus from
// Debian packages; see tools/corpus.h and docs/corpus.md).
//
// A thin layer: binds the options, calls BuildCorpus, prints a per-domain summary to
// stdout (progress lines and skipped sources go to stderr).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tools/commands.h"
#include "tools/corpus.h"

namespace fedps::tools {
namespace {

struct CorpusBuildArgs {
  CorpusBuildOptions options;
  double max_mb_per_domain = 4.0;
  bool list = false;
};

std::string KindName(SourceKind k) {
  switch (k) {
    case SourceKind::kFiles: return "files";
    case SourceKind::kManPages: return "man pages (groff)";
    case SourceKind::kSword: return "SWORD zText";
    case SourceKind::kDictd: return "dictd";
    case SourceKind::kJargon: return "Jargon File";
    case SourceKind::kWordNet: return "WordNet";
    case SourceKind::kRData: return "R data";
  }
  return "?";
}

void PrintRows(const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> width;
  for (const auto& r : rows) {
    width.resize(std::max(width.size(), r.size()), 0);
    for (size_t c = 0; c < r.size(); ++c) width[c] = std::max(width[c], r[c].size());
  }
  for (const auto& r : rows) {
    std::string line;
    for (size_t c = 0; c < r.size(); ++c) {
      line += r[c];
      if (c + 1 < r.size()) line += std::string(width[c] - r[c].size() + 2, ' ');
    }
    std::printf("%s\n", line.c_str());
  }
}

Status RunCorpusBuild(CorpusBuildArgs& args) {
  if (args.list) {
    std::vector<std::vector<std::string>> rows = {{"source", "domain", "default", "reader", "licence"}};
    for (const CorpusSource& s : CorpusSources()) {
      rows.push_back({s.id, s.domain, s.in_default ? "yes" : "no", KindName(s.kind), s.licence});
    }
    PrintRows(rows);
    return Status::Ok();
  }
  if (args.options.out_dir.empty()) return InvalidArgument("--out DIR is required (or --list)");
  args.options.max_bytes_per_domain = static_cast<int64_t>(args.max_mb_per_domain * 1e6);
  auto start = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(CorpusReport report, BuildCorpus(args.options));
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::map<std::string, std::pair<int64_t, int64_t>> per_domain;  // bytes, documents
  std::vector<std::string> order;
  for (const SourceReport& s : report.sources) {
    if (!per_domain.count(s.domain)) order.push_back(s.domain);
    per_domain[s.domain].first += s.bytes;
    per_domain[s.domain].second += s.documents;
  }
  std::printf("corpus %s built in %.1f s: %zu sources, %zu unavailable\n", args.options.out_dir.c_str(), secs,
              report.sources.size(), report.unavailable.size());
  std::vector<std::vector<std::string>> rows = {{"domain", "MB", "documents", "sources", ""}};
  for (const std::string& d : order) {
    std::string ids;
    for (const SourceReport& s : report.sources)
      if (s.domain == d) ids += (ids.empty() ? "" : ",") + s.id;
    char mb[32];
    std::snprintf(mb, sizeof mb, "%.2f", static_cast<double>(per_domain[d].first) / 1e6);
    rows.push_back({d, mb, std::to_string(per_domain[d].second), ids, d == report.held_out_domain ? "(held out)" : ""});
  }
  PrintRows(rows);
  return Status::Ok();
}

}  // namespace

void AddCorpusCommands(CLI::App& root, CommandList& commands) {
  CLI::App* corpus = root.add_subcommand("corpus", "The default text corpus (see `corpus build --help`)");
  corpus->require_subcommand(1);
  auto a = std::make_shared<CorpusBuildArgs>();
  CLI::App* build = corpus->add_subcommand(
      "build",
      "Build the default multi-domain corpus from Debian packages (apt-get download + dpkg -x + converters): "
      "DIR/<domain>/<source>.jsonl for `prepare`, each package's COPYRIGHT-<package> beside it, and "
      "DIR/corpus.json. See docs/corpus.md.");
  build->add_option("--out", a->options.out_dir,
                    "Output folder (replaced whole at the end; must be new, empty or an earlier corpus)");
  build->add_option("--sources", a->options.sources, "Comma-separated source ids (default: the default set; --list)")
      ->delimiter(',');
  build->add_option("--cache", a->options.cache_dir, "Where .deb files, unpacked trees and rendered pages are kept")
      ->capture_default_str();
  build->add_option("--max-mb-per-domain", a->max_mb_per_domain,
                    "Text per domain in MB, shared by its sources (0: everything)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1e6));
  build->add_option("--held-out", a->options.held_out_domain,
                    "Domain marked held out (out-of-domain evaluation) in corpus.json; \"\" for none")
      ->capture_default_str();
  build->add_flag("--force", a->options.force, "Replace a non-empty --out that holds no corpus.json");
  build->add_flag("--list", a->list, "List the known sources and exit");
  commands.push_back({build, [a] { return RunCorpusBuild(*a); }});
}

}  // namespace fedps::tools
