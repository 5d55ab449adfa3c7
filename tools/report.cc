// fedps-ctl report: see tools/report.h and docs/demo.md.
#include "tools/report.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <filesystem>
#include <set>
#include <sstream>

#include "common/base64.h"
#include "common/env.h"
#include "common/metrics_log.h"

namespace fedps::tools {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- small helpers ----------------------------------------------------------------------

std::string HtmlEscape(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

namespace {

std::string ShellQuote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

// A string literal for gnuplot (double quotes; backslash and quote escaped).
std::string GpQuote(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n' || c == '\t') {
      out += ' ';
      continue;
    }
    out += c;
  }
  return out + "\"";
}

std::string Fmt(double v, int precision = 3) {
  if (!std::isfinite(v)) return "-";
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", precision, v);
  return buf;
}

std::string Count(double v) {
  char buf[32];
  if (!std::isfinite(v)) return "-";
  if (std::fabs(v) >= 1e9) std::snprintf(buf, sizeof buf, "%.2fG", v / 1e9);
  else if (std::fabs(v) >= 1e6) std::snprintf(buf, sizeof buf, "%.2fM", v / 1e6);
  else if (std::fabs(v) >= 1e4) std::snprintf(buf, sizeof buf, "%.1fk", v / 1e3);
  else std::snprintf(buf, sizeof buf, "%.0f", v);
  return buf;
}

std::string MiB(double bytes) { return Fmt(bytes / (1024.0 * 1024.0), 2); }

double Num(const json& j, const char* key, double dflt = NAN) {
  if (!j.is_object()) return dflt;
  auto it = j.find(key);
  if (it == j.end() || !it->is_number()) return dflt;
  return it->get<double>();
}

std::string Str(const json& j, const char* key, const std::string& dflt = "") {
  if (!j.is_object()) return dflt;
  auto it = j.find(key);
  if (it == j.end() || !it->is_string()) return dflt;
  return it->get<std::string>();
}

std::string ReadOrEmpty(const std::string& path) {
  auto text = Env::Default()->ReadFile(path);
  return text.ok() ? *text : std::string();
}

// eval["domains"][d], or an empty object.
json DomainOf(const json& eval, const std::string& d) {
  if (!eval.is_object() || !eval.contains("domains") || !eval["domains"].is_object()) return json::object();
  return eval["domains"].value(d, json::object());
}

bool Is(const json& r, const char* event) { return Str(r, "event") == event; }

std::vector<json> Events(const ProcessLog& p, const char* event) {
  std::vector<json> out;
  for (const auto& r : p.records) {
    if (Is(r, event)) out.push_back(r);
  }
  return out;
}

StatusOr<json> ReadJson(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, Env::Default()->ReadFile(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgument(path + ": not valid JSON");
  return j;
}

// "eval-federated.json" -> "federated".
std::string LabelOf(const std::string& filename, const std::string& prefix) {
  std::string s = filename.substr(prefix.size());
  if (s.size() > 5) s = s.substr(0, s.size() - 5);
  return s;
}

}  // namespace

std::string ClassifyMetrics(const std::vector<json>& records) {
  bool shard = false, baseline = false, evaluator = false, client = false;
  for (const auto& r : records) {
    std::string ev = Str(r, "event"), src = Str(r, "source");
    if (ev == "apply" || ev == "shard_start" || ev == "stage" || src.rfind("shard-", 0) == 0) shard = true;
    if (ev == "train" || src == "train") baseline = true;
    if ((ev == "start" && Str(r, "mode") == "evaluator") || (ev == "eval" && r.contains("version"))) evaluator = true;
    if (ev == "update" || ev == "update_dropped" || (ev == "start" && r.contains("local_steps"))) client = true;
  }
  if (shard) return "shard";
  if (baseline) return "baseline";
  if (evaluator) return "evaluator";
  if (client) return "client";
  return "";
}

std::optional<double> MeanDomainLoss(const json& eval, const std::vector<std::string>& domains) {
  if (!eval.contains("domains") || !eval["domains"].is_object()) return std::nullopt;
  double sum = 0, weight = 0;
  for (const auto& [name, d] : eval["domains"].items()) {
    if (!domains.empty() && std::find(domains.begin(), domains.end(), name) == domains.end()) continue;
    double loss = Num(d, "loss"), tokens = Num(d, "tokens", 1.0);
    if (!std::isfinite(loss)) continue;
    if (!(tokens > 0)) tokens = 1.0;
    sum += loss * tokens;
    weight += tokens;
  }
  if (weight <= 0) return std::nullopt;
  return sum / weight;
}

std::vector<std::vector<int64_t>> StalenessTable(const std::vector<ProcessLog>& clients, int64_t* max_staleness) {
  int64_t top = -1;
  for (const auto& c : clients) {
    for (const auto& u : Events(c, "update")) top = std::max<int64_t>(top, int64_t(Num(u, "staleness", -1)));
  }
  std::vector<std::vector<int64_t>> table(size_t(top + 1), std::vector<int64_t>(clients.size(), 0));
  for (size_t k = 0; k < clients.size(); ++k) {
    for (const auto& u : Events(clients[k], "update")) {
      double s = Num(u, "staleness", -1);
      if (s >= 0) ++table[size_t(s)][k];
    }
  }
  if (max_staleness) *max_staleness = top;
  return table;
}

StatusOr<RunRecords> LoadRunFolder(const std::string& dir, const std::string& label) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return NotFound("run folder " + dir + " does not exist");
  RunRecords run;
  run.dir = dir;
  run.label = label;
  double t0 = INFINITY;
  int64_t best_seq = -1;
  std::vector<fs::path> files;
  for (auto it = fs::recursive_directory_iterator(dir, fs::directory_options::skip_permission_denied, ec);
       it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (ec) break;
    const std::string name = it->path().filename().string();
    if (it->is_directory(ec)) {
      // Model weights, staged updates and client state are large and hold no records.
      if (name == "checkpoints" || name == "staged" || name == "hf" || name == "redis" || name == "data") {
        it.disable_recursion_pending();
      }
      continue;
    }
    if (it->is_regular_file(ec)) files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& p : files) {
    const std::string path = p.string(), name = p.filename().string();
    if (name == "metrics.jsonl") {
      ASSIGN_OR_RETURN(auto records, ReadMetrics(path));
      if (records.empty()) continue;
      for (const auto& r : records) t0 = std::min(t0, Num(r, "time", INFINITY));
      std::string kind = ClassifyMetrics(records);
      ProcessLog log;
      log.path = path;
      log.records = std::move(records);
      for (const auto& r : log.records) {
        if (Is(r, "start") && r.contains("name") && r["name"].is_string()) {
          log.name = r["name"].get<std::string>();
          break;
        }
      }
      if (log.name.empty()) log.name = kind == "shard" ? Str(log.records.front(), "source") : "";
      if (log.name.empty()) log.name = p.parent_path().filename().string();
      if (kind == "client") run.clients.push_back(std::move(log));
      else if (kind == "evaluator") run.evaluators.push_back(std::move(log));
      else if (kind == "shard") run.shards.push_back(std::move(log));
      else if (kind == "baseline") run.baselines.push_back(std::move(log));
      else run.unrecognised.push_back(path);
    } else if (name == "corpus.json" && !run.corpus) {
      auto j = ReadJson(path);
      if (j.ok()) run.corpus = *j;
    } else if (name.rfind("eval-", 0) == 0 && p.extension() == ".json") {
      auto j = ReadJson(path);
      if (j.ok() && j->is_object()) run.final_evals.push_back({LabelOf(name, "eval-"), *j});
    } else if (name.rfind("samples-", 0) == 0 && p.extension() == ".json") {
      auto j = ReadJson(path);
      if (j.ok() && j->is_object()) run.samples.push_back({LabelOf(name, "samples-"), *j});
    } else if (name.rfind("status", 0) == 0 && p.extension() == ".json") {
      auto j = ReadJson(path);
      if (j.ok() && j->is_object() && j->contains("global_seq")) {
        int64_t seq = int64_t(Num(*j, "global_seq", -1));
        // The latest snapshot wins ties (files are sorted; status-final.json sorts last).
        if (seq >= best_seq) {
          best_seq = seq;
          run.status = *j;
        }
      }
    } else if (name == "demo-events.jsonl") {
      ASSIGN_OR_RETURN(run.demo_events, ReadMetrics(path));
      for (const auto& r : run.demo_events) t0 = std::min(t0, Num(r, "time", INFINITY));
    } else if (name == "demo.json") {
      auto j = ReadJson(path);
      if (j.ok()) run.demo = *j;
    }
  }
  auto by_name = [](const ProcessLog& a, const ProcessLog& b) { return a.name < b.name; };
  std::sort(run.clients.begin(), run.clients.end(), by_name);
  std::sort(run.shards.begin(), run.shards.end(), by_name);
  if (run.clients.empty() && run.evaluators.empty() && run.shards.empty() && run.baselines.empty() &&
      run.final_evals.empty() && !run.corpus) {
    return NotFound("run folder " + dir +
                    " holds no metrics.jsonl, corpus.json or eval-*.json that the report understands");
  }
  run.t0 = std::isfinite(t0) ? t0 : 0;
  return run;
}

// ---- gnuplot ----------------------------------------------------------------------------

namespace {

int RunShell(const std::string& cmd) {
  int rc = std::system(cmd.c_str());
  if (rc == -1) return -1;
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + (WIFSIGNALED(rc) ? WTERMSIG(rc) : 0);
}

std::string Tail(const std::string& text, size_t n = 1500) {
  return text.size() <= n ? text : "..." + text.substr(text.size() - n);
}

}  // namespace

StatusOr<std::string> FindGnuplot(const std::string& hint) {
  std::string exe = hint;
  if (exe.empty()) {
    const char* env = std::getenv("FEDPS_GNUPLOT");
    if (env && *env) exe = env;
  }
  if (exe.empty()) {
    const char* path = std::getenv("PATH");
    std::stringstream in(path ? path : "/usr/bin:/bin");
    std::string d;
    while (std::getline(in, d, ':')) {
      std::string candidate = JoinPath(d.empty() ? "." : d, "gnuplot");
      if (::access(candidate.c_str(), X_OK) == 0) {
        exe = candidate;
        break;
      }
    }
    if (exe.empty()) {
      return FailedPrecondition(
          "gnuplot is not installed; the report draws its plots with it. Install it "
          "(Debian/Ubuntu: apt-get install gnuplot-nox) or name it with --gnuplot / $FEDPS_GNUPLOT");
    }
  } else if (::access(exe.c_str(), X_OK) != 0) {
    return FailedPrecondition("gnuplot " + exe + " is not an executable file");
  }
  char tmpl[] = "/tmp/fedps-gnuplot-XXXXXX";
  int fd = ::mkstemp(tmpl);
  if (fd < 0) return Internal("mkstemp failed");
  ::close(fd);
  int rc = RunShell(ShellQuote(exe) + " -e 'set terminal pngcairo' > " + ShellQuote(tmpl) + " 2>&1");
  std::string out = ReadOrEmpty(tmpl);
  ::unlink(tmpl);
  if (rc != 0 || out.find("unknown or ambiguous terminal") != std::string::npos) {
    return FailedPrecondition("gnuplot " + exe +
                              " cannot draw PNG (no pngcairo terminal); install gnuplot-nox or gnuplot-qt: " +
                              Tail(out, 300));
  }
  return exe;
}

namespace {

struct Series {
  std::string title;
  std::vector<std::vector<double>> rows;  // columns as `using` expects
  std::string spec = "using 1:2 with linespoints pt 7 ps 0.6";
};

struct Plot {
  std::string name;  // file stem
  std::string title, xlabel, ylabel;
  std::vector<Series> series;
  std::string preamble;        // extra gnuplot commands before `plot`
  std::string raw_plot;        // used instead of the series' plot command when set (data in raw_data)
  std::string raw_data;        // written to <name>.dat
  int width = 960, height = 440;
};

class Plotter {
 public:
  Plotter(std::string gnuplot, std::string dir) : gnuplot_(std::move(gnuplot)), dir_(std::move(dir)) {}

  // Draws the plot; returns the PNG bytes.
  StatusOr<std::string> Draw(const Plot& p) {
    Env* env = Env::Default();
    std::ostringstream gp;
    const std::string png = JoinPath(dir_, p.name + ".png");
    gp << "set terminal pngcairo size " << p.width << "," << p.height << " noenhanced font \"sans,10\"\n"
       << "set output " << GpQuote(png) << "\n"
       << "set datafile separator \"\\t\"\n"
       << "set title " << GpQuote(p.title) << "\n"
       << "set xlabel " << GpQuote(p.xlabel) << "\n"
       << "set ylabel " << GpQuote(p.ylabel) << "\n"
       << "set grid\nset key outside right top\nset border 3\nset tics nomirror\n"
       << p.preamble << "\n";
    if (!p.raw_plot.empty()) {
      const std::string data = JoinPath(dir_, p.name + ".dat");
      RETURN_IF_ERROR(env->WriteFileAtomic(data, p.raw_data));
      std::string cmd = p.raw_plot;
      for (size_t pos; (pos = cmd.find("$DATA")) != std::string::npos;) cmd.replace(pos, 5, GpQuote(data));
      gp << cmd << "\n";
    } else {
      std::vector<std::string> parts;
      for (size_t i = 0; i < p.series.size(); ++i) {
        const Series& s = p.series[i];
        if (s.rows.empty()) continue;
        std::ostringstream d;
        d.precision(10);
        for (const auto& row : s.rows) {
          for (size_t c = 0; c < row.size(); ++c) d << (c ? "\t" : "") << row[c];
          d << "\n";
        }
        const std::string file = JoinPath(dir_, p.name + "-" + std::to_string(i) + ".tsv");
        RETURN_IF_ERROR(env->WriteFileAtomic(file, d.str()));
        parts.push_back(GpQuote(file) + " " + s.spec + " title " + GpQuote(s.title));
      }
      if (parts.empty()) return NotFound("no data");
      gp << "plot ";
      for (size_t i = 0; i < parts.size(); ++i) gp << (i ? ", \\\n     " : "") << parts[i];
      gp << "\n";
    }
    const std::string script = JoinPath(dir_, p.name + ".gp"), log = JoinPath(dir_, p.name + ".log");
    RETURN_IF_ERROR(env->WriteFileAtomic(script, gp.str()));
    int rc = RunShell(ShellQuote(gnuplot_) + " " + ShellQuote(script) + " > " + ShellQuote(log) + " 2>&1");
    std::string out = ReadOrEmpty(log);
    if (rc != 0) return Internal("gnuplot failed on " + p.name + " (exit " + std::to_string(rc) + "): " + Tail(out));
    auto bytes = env->ReadFile(png);
    if (!bytes.ok() || bytes->size() < 8 || bytes->compare(1, 3, "PNG") != 0) {
      return Internal("gnuplot wrote no PNG for " + p.name + ": " + Tail(out));
    }
    return *bytes;
  }

 private:
  std::string gnuplot_;
  std::string dir_;
};

// ---- the HTML ---------------------------------------------------------------------------

class Html {
 public:
  void Raw(const std::string& s) { out_ << s; }
  void H2(const std::string& id, const std::string& s) { out_ << "<h2 id=\"" << id << "\">" << HtmlEscape(s) << "</h2>\n"; }
  void P(const std::string& s) { out_ << "<p>" << HtmlEscape(s) << "</p>\n"; }
  void Note(const std::string& s) { out_ << "<p class=\"note\">" << HtmlEscape(s) << "</p>\n"; }
  void Table(const std::vector<std::string>& head, const std::vector<std::vector<std::string>>& rows) {
    out_ << "<table><thead><tr>";
    for (const auto& h : head) out_ << "<th>" << HtmlEscape(h) << "</th>";
    out_ << "</tr></thead><tbody>\n";
    for (const auto& r : rows) {
      out_ << "<tr>";
      for (const auto& c : r) out_ << "<td>" << HtmlEscape(c) << "</td>";
      out_ << "</tr>\n";
    }
    out_ << "</tbody></table>\n";
  }
  std::string str() const { return out_.str(); }

 private:
  std::ostringstream out_;
};

struct Ctx {
  std::vector<RunRecords> runs;
  bool multi = false;
  Plotter* plotter = nullptr;
  Html html;
  int images = 0;
  std::vector<std::string> problems;  // plots that failed, shown at the end

  std::string Label(const RunRecords& r, const std::string& s) const { return multi ? r.label + ": " + s : s; }

  void Image(const Plot& p, const std::string& caption) {
    auto png = plotter->Draw(p);
    if (!png.ok()) {
      if (png.status().code() == StatusCode::kNotFound) {
        html.Note("(" + p.title + ": no data)");
        return;
      }
      problems.push_back(png.status().message());
      html.Note("plot " + p.name + " failed: " + png.status().message());
      return;
    }
    ++images;
    html.Raw("<figure><img alt=\"" + HtmlEscape(p.title) + "\" src=\"data:image/png;base64," + Base64Encode(*png) +
             "\"><figcaption>" + HtmlEscape(caption) + "</figcaption></figure>\n");
  }
};

std::string HeldOut(const RunRecords& r) {
  if (r.corpus && (*r.corpus).contains("held_out_domain") && (*r.corpus)["held_out_domain"].is_string()) {
    return (*r.corpus)["held_out_domain"].get<std::string>();
  }
  if (r.demo) return Str(*r.demo, "held_out_domain");
  return "";
}

std::vector<std::string> DomainsOf(const json& eval) {
  std::vector<std::string> out;
  if (eval.contains("domains") && eval["domains"].is_object()) {
    for (const auto& [name, d] : eval["domains"].items()) out.push_back(name);
  }
  return out;
}

// Lines per domain of the evaluator's eval records against `xkey` ("version" or
// "federation_tokens").
void ValidationPlot(Ctx& c, const std::string& name, const std::string& xkey, const std::string& xlabel) {
  Plot p;
  p.name = name;
  p.title = "Validation loss of the global model per domain (evaluator)";
  p.xlabel = xlabel;
  p.ylabel = "validation loss (nats/token)";
  int style = 0;
  for (const auto& r : c.runs) {
    const std::string held = HeldOut(r);
    for (const auto& ev : r.evaluators) {
      auto evals = Events(ev, "eval");
      std::set<std::string> domains;
      for (const auto& e : evals) {
        for (const auto& d : DomainsOf(e)) domains.insert(d);
      }
      for (const auto& d : domains) {
        Series s;
        s.title = c.Label(r, d + (d == held ? " (held out)" : ""));
        for (const auto& e : evals) {
          double x = Num(e, xkey.c_str());
          double y = Num(DomainOf(e, d), "loss");
          if (std::isfinite(x) && std::isfinite(y)) s.rows.push_back({x, y});
        }
        ++style;
        s.spec = "using 1:2 with linespoints lw 2 pt 7 ps 0.5" + std::string(d == held ? " dt 2" : "");
        p.series.push_back(std::move(s));
      }
    }
  }
  c.Image(p, xkey == "version"
                 ? "One line per domain; the held-out domain (dashed) is never trained on by any client."
                 : "x = tokens of all committed updates up to the evaluated version (federation_tokens).");
}

void SectionLearning(Ctx& c) {
  c.html.H2("learning", "Did it learn? Validation loss of the global model");
  bool any = false;
  for (const auto& r : c.runs) {
    for (const auto& ev : r.evaluators) any = any || !Events(ev, "eval").empty();
  }
  if (!any) {
    c.html.Note("No evaluator records (eval with a version) in the run folders.");
    return;
  }
  ValidationPlot(c, "val_loss_version", "version", "global version (committed updates applied)");
  ValidationPlot(c, "val_loss_tokens", "federation_tokens", "tokens trained by the federation");
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : c.runs) {
    for (const auto& ev : r.evaluators) {
      auto evals = Events(ev, "eval");
      if (evals.empty()) continue;
      const json& first = evals.front();
      const json& last = evals.back();
      for (const auto& d : DomainsOf(last)) {
        double a = Num(DomainOf(first, d), "loss");
        double b = Num(DomainOf(last, d), "loss");
        rows.push_back({c.Label(r, ev.name), d + (d == HeldOut(r) ? " (held out)" : ""),
                        Fmt(Num(first, "version"), 0), Fmt(a), Fmt(Num(last, "version"), 0), Fmt(b), Fmt(b - a)});
      }
    }
  }
  c.html.Table({"evaluator", "domain", "first version", "loss", "last version", "loss", "change"}, rows);
}

void SectionClients(Ctx& c) {
  c.html.H2("clients", "Clients: training loss and throughput");
  bool any = false;
  for (const auto& r : c.runs) any = any || !r.clients.empty();
  if (!any) {
    c.html.Note("No client records (update) in the run folders.");
    return;
  }
  Plot loss, tps;
  loss.name = "client_loss";
  loss.title = "Local training loss per committed update";
  loss.xlabel = "time since the run started (s)";
  loss.ylabel = "mean training loss of the update's local steps";
  tps.name = "client_tps";
  tps.title = "Training throughput per update";
  tps.xlabel = loss.xlabel;
  tps.ylabel = "tokens/s (local training)";
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : c.runs) {
    for (const auto& cl : r.clients) {
      Series l, t;
      l.title = t.title = c.Label(r, cl.name);
      double tokens = 0, tps_sum = 0, stale_sum = 0, sent = 0, fp32 = 0, encoded = 0;
      int64_t n = 0, dropped = 0, starts = 0, ends = 0;
      double throttle = 1;
      std::string domains;
      for (const auto& rec : cl.records) {
        const double t_rel = Num(rec, "time") - r.t0;
        if (Is(rec, "update")) {
          l.rows.push_back({t_rel, Num(rec, "train_loss")});
          t.rows.push_back({t_rel, Num(rec, "tokens_per_s")});
          tokens += Num(rec, "tokens", 0);
          tps_sum += Num(rec, "tokens_per_s", 0);
          stale_sum += Num(rec, "staleness", 0);
          sent += Num(rec, "bytes_sent", 0);
          fp32 += Num(rec, "bytes_fp32", 0);
          encoded += Num(rec, "bytes_encoded", 0);
          ++n;
        } else if (Is(rec, "update_dropped")) {
          ++dropped;
        } else if (Is(rec, "start")) {
          ++starts;
          throttle = Num(rec, "throttle", throttle);
        } else if (Is(rec, "end")) {
          ++ends;
        }
      }
      rows.push_back({c.Label(r, cl.name), Fmt(throttle, 1) + "x", std::to_string(starts), std::to_string(n),
                      std::to_string(dropped), Count(tokens), n ? Count(tps_sum / double(n)) : "-",
                      n ? Fmt(stale_sum / double(n), 2) : "-", MiB(sent), encoded > 0 ? Fmt(fp32 / encoded, 2) + "x" : "-"});
      loss.series.push_back(std::move(l));
      tps.series.push_back(std::move(t));
    }
  }
  c.Image(loss, "Each point is one committed update (mean loss of its local steps on the client's own domain).");
  c.Image(tps, "Local training speed per update; the throttled client runs slower on purpose.");
  c.html.Table({"client", "throttle", "process starts", "updates committed", "dropped", "tokens", "mean tok/s",
                "mean staleness", "MiB pushed", "compression"},
               rows);
}

void SectionMembership(Ctx& c) {
  c.html.H2("membership", "Stragglers and dropouts: membership and staleness");
  bool any = false;
  for (const auto& r : c.runs) any = any || !r.clients.empty();
  if (!any) {
    c.html.Note("No client records in the run folders.");
    return;
  }
  // Timeline: one row per client; a bar per process lifetime (start record to its end
  // record, or to its last record when it has none: killed), a dot per committed update.
  Plot p;
  p.name = "membership";
  p.title = "Membership timeline";
  p.xlabel = "time since the run started (s)";
  p.ylabel = "";
  Series bars, updates, kills, expired, restarts;
  bars.title = "client process alive (start .. end record)";
  bars.spec = "using 1:2:3:(0) with vectors nohead lw 8 lc rgb '#9ecae1'";
  updates.title = "committed update";
  updates.spec = "using 1:2 with points pt 7 ps 0.8 lc rgb '#08519c'";
  kills.title = "killed (kill -9)";
  kills.spec = "using 1:2 with points pt 2 ps 2.5 lw 3 lc rgb '#d62728'";
  restarts.title = "restarted";
  restarts.spec = "using 1:2 with points pt 9 ps 2 lc rgb '#2ca02c'";
  expired.title = "lease expired (registry)";
  expired.spec = "using 1:2 with points pt 1 ps 2.5 lw 2 lc rgb '#ff7f0e'";
  std::ostringstream ytics;
  int row = 0;
  std::vector<std::vector<std::string>> notes;
  for (const auto& r : c.runs) {
    for (const auto& cl : r.clients) {
      const double y = row;
      double seg_start = NAN, last = NAN, throttle = 1;
      bool ended = true;
      for (const auto& rec : cl.records) {
        const double t = Num(rec, "time") - r.t0;
        if (!std::isfinite(t)) continue;
        if (Is(rec, "start")) {
          if (std::isfinite(seg_start)) {
            bars.rows.push_back({seg_start, y, last - seg_start});
            notes.push_back({c.Label(r, cl.name), Fmt(seg_start, 1), Fmt(last, 1), "no end record (process died)"});
          }
          seg_start = t;
          throttle = Num(rec, "throttle", throttle);
          ended = false;
        } else if (Is(rec, "end")) {
          if (std::isfinite(seg_start)) {
            bars.rows.push_back({seg_start, y, t - seg_start});
            notes.push_back({c.Label(r, cl.name), Fmt(seg_start, 1), Fmt(t, 1),
                             std::string("end record") + (rec.value("stopped", false) ? " (stopped)" : "")});
          }
          seg_start = NAN;
          ended = true;
        } else if (Is(rec, "update")) {
          updates.rows.push_back({t, y});
        }
        last = t;
      }
      if (!ended && std::isfinite(seg_start)) {
        bars.rows.push_back({seg_start, y, last - seg_start});
        notes.push_back({c.Label(r, cl.name), Fmt(seg_start, 1), Fmt(last, 1), "no end record"});
      }
      for (const auto& e : r.demo_events) {
        if (Str(e, "client") != cl.name) continue;
        double t = Num(e, "time") - r.t0;
        if (Is(e, "kill")) kills.rows.push_back({t, y});
        if (Is(e, "restart")) restarts.rows.push_back({t, y});
      }
      if (r.status && (*r.status).contains("events") && (*r.status)["events"].is_array()) {
        for (const auto& e : (*r.status)["events"]) {
          if (Str(e, "type") != "expired" || !e.contains("data") || Str(e["data"], "client") != cl.name) continue;
          expired.rows.push_back({Num(e, "ms") / 1000.0 - r.t0, y});
        }
      }
      std::string label = c.Label(r, cl.name) + (throttle > 1 ? " (" + Fmt(throttle, 0) + "x slower)" : "");
      ytics << (row ? ", " : "") << GpQuote(label) << " " << row;
      ++row;
    }
  }
  p.height = std::max(260, 90 + 48 * row);
  p.preamble = "set ytics (" + ytics.str() + ")\nset yrange [-0.7:" + std::to_string(row) +
               "-0.3]\nset key outside below horizontal\nset grid xtics\nset grid noytics";
  p.series = {bars, updates, kills, restarts, expired};
  c.Image(p, "Bars: a client process from its start record to its end record (or to its last record when it "
             "was killed and wrote none). Kill/restart marks come from the demo script's demo-events.jsonl, "
             "lease expiry from the registry's event stream (status snapshot).");

  int64_t top = -1;
  std::vector<ProcessLog> all;
  std::vector<std::string> titles;
  for (const auto& r : c.runs) {
    for (const auto& cl : r.clients) {
      all.push_back(cl);
      titles.push_back(c.Label(r, cl.name));
    }
  }
  auto table = StalenessTable(all, &top);
  if (top >= 0) {
    Plot h;
    h.name = "staleness";
    h.title = "Staleness of committed updates (global versions applied between pull and apply)";
    h.xlabel = "staleness";
    h.ylabel = "committed updates";
    std::ostringstream data;
    for (size_t s = 0; s < table.size(); ++s) {
      data << s;
      for (auto v : table[s]) data << "\t" << v;
      data << "\n";
    }
    h.raw_data = data.str();
    std::ostringstream cmd;
    cmd << "set style data histograms\nset style histogram rowstacked\nset style fill solid 0.85 border -1\n"
        << "set boxwidth 0.8\nset yrange [0:*]\nplot ";
    for (size_t k = 0; k < titles.size(); ++k) {
      cmd << (k ? ", '' " : "$DATA ") << "using " << (k + 2) << (k == 0 ? ":xtic(1)" : "") << " title "
          << GpQuote(titles[k]);
    }
    h.raw_plot = cmd.str();
    c.Image(h, "Stacked by client. Staleness = seq - 1 - base_version at apply time; the shards weight each "
               "update by the staleness function of [ps].");
  } else {
    c.html.Note("No committed updates with a staleness value.");
  }
  if (!notes.empty()) c.html.Table({"client", "process from (s)", "to (s)", "how it ended"}, notes);
}

void SectionCommunication(Ctx& c) {
  c.html.H2("communication", "Communication: bytes pushed vs fp32");
  Plot p;
  p.name = "bytes";
  p.title = "Cumulative bytes of pushed updates";
  p.xlabel = "time since the run started (s)";
  p.ylabel = "MiB (all clients)";
  std::vector<std::vector<std::string>> rows;
  bool any = false;
  for (const auto& r : c.runs) {
    std::vector<std::array<double, 4>> ups;  // time, sent, encoded, fp32
    for (const auto& cl : r.clients) {
      for (const auto& u : Events(cl, "update")) {
        ups.push_back({Num(u, "time") - r.t0, Num(u, "bytes_sent", 0), Num(u, "bytes_encoded", 0), Num(u, "bytes_fp32", 0)});
      }
    }
    if (ups.empty()) continue;
    any = true;
    std::sort(ups.begin(), ups.end());
    Series sent, fp32;
    sent.title = c.Label(r, "sent (compressed, incl. resends)");
    fp32.title = c.Label(r, "the same updates as fp32");
    sent.spec = "using 1:2 with steps lw 2";
    fp32.spec = "using 1:2 with steps lw 2 dt 2";
    double s = 0, e = 0, f = 0;
    for (const auto& u : ups) {
      s += u[1];
      e += u[2];
      f += u[3];
      sent.rows.push_back({u[0], s / 1048576.0});
      fp32.rows.push_back({u[0], f / 1048576.0});
    }
    p.series.push_back(std::move(fp32));
    p.series.push_back(std::move(sent));
    rows.push_back({r.label, std::to_string(ups.size()), MiB(f), MiB(e), MiB(s), e > 0 ? Fmt(f / e, 2) + "x" : "-",
                    s > 0 ? Fmt(f / s, 2) + "x" : "-"});
  }
  if (!any) {
    c.html.Note("No update records with byte counts.");
    return;
  }
  c.Image(p, "fp32 = 4 bytes per parameter of every pushed pseudo-gradient; sent = bytes this client process "
             "put on the wire for its pushes (codec + zstd, including any resends).");
  c.html.Table({"run", "updates", "fp32 MiB", "encoded MiB", "sent MiB", "ratio fp32/encoded", "ratio fp32/sent"},
               rows);
  // Shard-side traffic from the last status snapshot (pulls dominate: the model goes down in fp32).
  std::vector<std::vector<std::string>> shard_rows;
  for (const auto& r : c.runs) {
    if (!r.status || !(*r.status).contains("shards") || !(*r.status)["shards"].is_array()) continue;
    for (const auto& s : (*r.status)["shards"]) {
      shard_rows.push_back({c.Label(r, "shard-" + Fmt(Num(s, "index"), 0)), Fmt(Num(s, "version"), 0),
                            Fmt(Num(s, "applied_updates"), 0), MiB(Num(s, "bytes_in", 0)), MiB(Num(s, "bytes_out", 0))});
    }
  }
  if (!shard_rows.empty()) {
    c.html.P("Shard traffic from the last saved `fedps-ctl status --json` snapshot (bytes out are mostly model pulls):");
    c.html.Table({"shard", "version", "applied updates", "MiB in", "MiB out"}, shard_rows);
  }
}

// The centralised baseline's eval records: x = tokens.
void SectionBaseline(Ctx& c) {
  c.html.H2("baseline", "Federated vs centralised at equal tokens");
  bool any_base = false, any_fed = false;
  for (const auto& r : c.runs) {
    for (const auto& b : r.baselines) any_base = any_base || !Events(b, "eval").empty();
    for (const auto& e : r.evaluators) any_fed = any_fed || !Events(e, "eval").empty();
  }
  if (!any_base) {
    c.html.Note("No centralised baseline (fedps-ctl train metrics with eval records) in the run folders.");
  } else {
    // Compare on the domains the baseline evaluated (its training domains).
    std::vector<std::string> domains;
    for (const auto& r : c.runs) {
      for (const auto& b : r.baselines) {
        for (const auto& e : Events(b, "eval")) {
          for (const auto& d : DomainsOf(e)) {
            if (std::find(domains.begin(), domains.end(), d) == domains.end()) domains.push_back(d);
          }
        }
      }
    }
    std::string joined;
    for (const auto& d : domains) joined += (joined.empty() ? "" : ", ") + d;
    Plot p;
    p.name = "fed_vs_central";
    p.title = "Validation loss vs tokens trained: federated vs centralised";
    p.xlabel = "tokens trained";
    p.ylabel = "mean validation loss over " + std::to_string(domains.size()) + " domains";
    for (const auto& r : c.runs) {
      for (const auto& ev : r.evaluators) {
        Series s;
        s.title = c.Label(r, "federated (global model, " + ev.name + ")");
        s.spec = "using 1:2 with linespoints lw 2 pt 7 ps 0.6";
        for (const auto& e : Events(ev, "eval")) {
          auto m = MeanDomainLoss(e, domains);
          double x = Num(e, "federation_tokens");
          if (m && std::isfinite(x)) s.rows.push_back({x, *m});
        }
        p.series.push_back(std::move(s));
      }
      for (const auto& b : r.baselines) {
        Series s;
        s.title = c.Label(r, b.name == "centralised" ? "centralised (pooled data)" : "centralised (" + b.name + ")");
        s.spec = "using 1:2 with linespoints lw 2 pt 5 ps 0.6";
        for (const auto& e : Events(b, "eval")) {
          auto m = MeanDomainLoss(e, domains);
          double x = Num(e, "tokens");
          if (m && std::isfinite(x)) s.rows.push_back({x, *m});
        }
        p.series.push_back(std::move(s));
      }
    }
    c.Image(p, "Token-weighted mean validation loss over the domains the baseline evaluates during training (" +
                   joined + "): same validation batches for both (train.eval_batches per domain).");
    std::vector<std::vector<std::string>> rows;
    for (const auto& r : c.runs) {
      for (const auto& b : r.baselines) {
        for (const auto& e : Events(b, "end")) {
          rows.push_back({c.Label(r, b.name), Fmt(Num(e, "step"), 0), Count(Num(e, "tokens")), Fmt(Num(e, "seconds"), 1)});
        }
      }
    }
    if (!rows.empty()) c.html.Table({"centralised run", "steps", "tokens", "seconds"}, rows);
  }
  if (!any_fed && !any_base) return;

  // Final numbers per domain: eval-<label>.json when present, else the last eval records.
  struct Final {
    std::string label;
    json eval;
  };
  std::vector<Final> finals;
  std::string held;
  for (const auto& r : c.runs) {
    if (held.empty()) held = HeldOut(r);
    for (const auto& [label, j] : r.final_evals) finals.push_back({c.Label(r, label), j});
    if (r.final_evals.empty()) {
      for (const auto& ev : r.evaluators) {
        auto e = Events(ev, "eval");
        if (!e.empty()) finals.push_back({c.Label(r, "federated (evaluator, version " + Fmt(Num(e.back(), "version"), 0) + ")"), e.back()});
      }
      for (const auto& b : r.baselines) {
        auto e = Events(b, "eval");
        if (!e.empty()) finals.push_back({c.Label(r, "centralised (last eval, step " + Fmt(Num(e.back(), "step"), 0) + ")"), e.back()});
      }
    }
  }
  if (finals.empty()) return;
  c.html.Raw("<h3>Final model, per domain</h3>\n");
  std::vector<std::string> domains;
  for (const auto& f : finals) {
    for (const auto& d : DomainsOf(f.eval)) {
      if (std::find(domains.begin(), domains.end(), d) == domains.end()) domains.push_back(d);
    }
  }
  std::vector<std::string> head = {"domain"};
  for (const auto& f : finals) {
    head.push_back(f.label + " loss");
    head.push_back(f.label + " perplexity");
    head.push_back(f.label + " bits/byte");
  }
  std::vector<std::vector<std::string>> rows;
  std::ostringstream bars;
  for (const auto& d : domains) {
    std::vector<std::string> row = {d + (d == held ? " (held out)" : "")};
    bars << GpQuote(d + (d == held ? " (held out)" : ""));
    for (const auto& f : finals) {
      json dj = DomainOf(f.eval, d);
      row.push_back(Fmt(Num(dj, "loss")));
      row.push_back(Fmt(Num(dj, "perplexity"), 2));
      row.push_back(Fmt(Num(dj, "bits_per_byte")));
      double bpb = Num(dj, "bits_per_byte");
      bars << "\t" << (std::isfinite(bpb) ? Fmt(bpb, 4) : "NaN");
    }
    bars << "\n";
    rows.push_back(std::move(row));
  }
  std::vector<std::string> all = {"all (token-weighted)"};
  for (const auto& f : finals) {
    all.push_back(Fmt(Num(f.eval, "loss")));
    all.push_back(Fmt(Num(f.eval, "perplexity"), 2));
    all.push_back(Fmt(Num(f.eval, "bits_per_byte")));
  }
  rows.push_back(std::move(all));
  for (const auto& f : finals) {
    if (f.eval.contains("checkpoint")) {
      c.html.Note(f.label + ": fedps-ctl eval of " + Str(f.eval, "checkpoint") +
                  (f.eval.contains("step") ? " (step " + Fmt(Num(f.eval, "step"), 0) + ")" : ""));
    }
  }
  c.html.Table(head, rows);
  Plot p;
  p.name = "final_bpb";
  p.title = "Bits per byte of the final models per domain (lower is better)";
  p.xlabel = "";
  p.ylabel = "bits per byte";
  p.raw_data = bars.str();
  std::ostringstream cmd;
  cmd << "set style data histograms\nset style histogram clustered gap 1\nset style fill solid 0.85 border -1\n"
      << "set boxwidth 0.9\nset yrange [0:*]\nset xtics rotate by -20\nplot ";
  for (size_t k = 0; k < finals.size(); ++k) {
    cmd << (k ? ", '' " : "$DATA ") << "using " << (k + 2) << (k == 0 ? ":xtic(1)" : "") << " title "
        << GpQuote(finals[k].label);
  }
  p.raw_plot = cmd.str();
  c.Image(p, "Bits per byte = summed token loss / (ln 2 x UTF-8 bytes of the evaluated text); comparable across "
             "tokenizers. The held-out domain was in no client's and not in the baseline's training data.");
}

void SectionSamples(Ctx& c) {
  c.html.H2("samples", "Text samples from the final models");
  bool any = false;
  for (const auto& r : c.runs) {
    for (const auto& [label, j] : r.samples) {
      if (!j.contains("samples") || !j["samples"].is_array()) continue;
      any = true;
      c.html.Raw("<h3>" + HtmlEscape(c.Label(r, label)) + "</h3>\n");
      if (j.contains("checkpoint")) c.html.Note("fedps-ctl generate on " + Str(j, "checkpoint"));
      for (const auto& s : j["samples"]) {
        c.html.Raw("<pre class=\"sample\"><b>" + HtmlEscape(Str(s, "prompt")) + "</b>" +
                   HtmlEscape(Str(s, "completion")) + "</pre>\n");
      }
    }
  }
  if (!any) c.html.Note("No samples-*.json (fedps-ctl generate --json) in the run folders.");
}

void SectionOverview(Ctx& c) {
  for (const auto& r : c.runs) {
    if (c.multi) c.html.Raw("<h3>" + HtmlEscape(r.label) + "</h3>\n");
    std::vector<std::vector<std::string>> rows = {{"run folder", r.dir}};
    if (r.demo) {
      for (const auto& [k, v] : r.demo->items()) {
        rows.push_back({k, v.is_string() ? v.get<std::string>() : v.dump()});
      }
    }
    rows.push_back({"processes found", std::to_string(r.clients.size()) + " clients, " +
                                           std::to_string(r.evaluators.size()) + " evaluators, " +
                                           std::to_string(r.shards.size()) + " shards, " +
                                           std::to_string(r.baselines.size()) + " centralised runs"});
    for (const auto& s : r.shards) {
      int64_t applied = 0, skipped = 0;
      double last_version = NAN;
      for (const auto& a : Events(s, "apply")) {
        if (a.value("skipped", false)) ++skipped;
        else ++applied;
        last_version = Num(a, "seq");
      }
      rows.push_back({s.name, std::to_string(applied) + " updates applied, " + std::to_string(skipped) +
                                  " skipped, last version " + Fmt(last_version, 0)});
    }
    c.html.Table({"", ""}, rows);
    if (r.corpus) {
      const json& cj = *r.corpus;
      std::vector<std::vector<std::string>> drows;
      // corpus.json lists domains as objects with a "name" (an object keyed by name is read too).
      std::vector<std::pair<std::string, json>> domains;
      if (cj.contains("domains") && cj["domains"].is_array()) {
        for (const auto& d : cj["domains"]) domains.push_back({Str(d, "name", "?"), d});
      } else if (cj.contains("domains") && cj["domains"].is_object()) {
        for (const auto& [name, d] : cj["domains"].items()) domains.push_back({name, d});
      }
      {
        for (const auto& [name, d] : domains) {
          std::string sources;
          if (d.contains("sources") && d["sources"].is_array()) {
            for (const auto& s : d["sources"]) sources += (sources.empty() ? "" : ", ") + (s.is_string() ? s.get<std::string>() : s.dump());
          }
          drows.push_back({name, d.value("held_out", false) ? "held out" : "training", Count(Num(d, "documents")),
                           MiB(Num(d, "bytes")), sources});
        }
      }
      c.html.P("Corpus (corpus.json):");
      c.html.Table({"domain", "role", "documents", "MiB of text", "sources"}, drows);
      if (cj.contains("sources") && cj["sources"].is_array()) {
        std::vector<std::vector<std::string>> srows;
        for (const auto& src : cj["sources"]) {
          srows.push_back({Str(src, "id"), Str(src, "domain"), Str(src, "version"), Str(src, "licence"),
                           Count(Num(src, "documents")), MiB(Num(src, "bytes"))});
        }
        c.html.Table({"source (Debian package)", "domain", "version", "licence", "documents", "MiB"}, srows);
      }
      if (cj.contains("unavailable") && cj["unavailable"].is_array() && !cj["unavailable"].empty()) {
        c.html.Note("Sources skipped by the corpus build: " + cj["unavailable"].dump());
      }
    }
    for (const auto& u : r.unrecognised) c.html.Note("not understood (ignored): " + u);
  }
}

const char* kStyle = R"(<style>
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.8em}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3}figure{margin:1em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption,.note{color:#555;font-size:.88em}pre.sample{background:#f7f7f7;padding:.6em;white-space:pre-wrap;
border-left:3px solid #9ecae1;font-size:.85em}nav a{margin-right:1em}
</style>)";

}  // namespace

StatusOr<std::string> WriteReport(const ReportOptions& options) {
  if (options.run_dirs.empty()) return InvalidArgument("give at least one run folder");
  ASSIGN_OR_RETURN(std::string gnuplot, FindGnuplot(options.gnuplot));
  Ctx c;
  std::set<std::string> labels;
  for (const auto& dir : options.run_dirs) {
    std::string label = fs::path(dir).lexically_normal().filename().string();
    if (label.empty() || label == ".") label = fs::path(dir).lexically_normal().parent_path().filename().string();
    while (labels.count(label)) label += "'";
    labels.insert(label);
    ASSIGN_OR_RETURN(RunRecords r, LoadRunFolder(dir, label));
    c.runs.push_back(std::move(r));
  }
  c.multi = c.runs.size() > 1;
  const std::string out = options.out.empty() ? JoinPath(options.run_dirs.front(), "report.html") : options.out;
  std::string tmp = out + ".plots.tmp";
  Env* env = Env::Default();
  if (env->Exists(tmp)) RETURN_IF_ERROR(env->RemoveAll(tmp));
  RETURN_IF_ERROR(env->CreateDirs(tmp));
  Plotter plotter(gnuplot, tmp);
  c.plotter = &plotter;

  std::time_t now = std::time(nullptr);
  char when[64];
  std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S %Z", std::localtime(&now));
  c.html.Raw("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>" + HtmlEscape(options.title) +
             "</title>\n" + kStyle + "</head><body>\n<h1>" + HtmlEscape(options.title) + "</h1>\n");
  c.html.Note(std::string("Written by fedps-ctl report on ") + when +
              " from the run folders' own records only; plots by gnuplot.");
  c.html.Raw("<nav><a href=\"#learning\">learning</a><a href=\"#clients\">clients</a><a href=\"#membership\">"
             "stragglers and dropouts</a><a href=\"#communication\">communication</a><a href=\"#baseline\">"
             "vs centralised</a><a href=\"#samples\">samples</a></nav>\n");
  c.html.H2("overview", "Overview");
  SectionOverview(c);
  SectionLearning(c);
  SectionClients(c);
  SectionMembership(c);
  SectionCommunication(c);
  SectionBaseline(c);
  SectionSamples(c);
  c.html.Raw("</body></html>\n");
  env->RemoveAll(tmp).IgnoreError();
  if (!c.problems.empty()) {
    return Internal(std::to_string(c.problems.size()) + " plot(s) failed; first: " + c.problems.front());
  }
  if (!Dirname(out).empty()) RETURN_IF_ERROR(env->CreateDirs(Dirname(out)));
  RETURN_IF_ERROR(env->WriteFileAtomic(out, c.html.str()));
  std::fprintf(stderr, "[report] %s: %d images, %.1f KiB, from %zu run folder(s)\n", out.c_str(), c.images,
               double(c.html.str().size()) / 1024.0, c.runs.size());
  return out;
}

}  // namespace fedps::tools
