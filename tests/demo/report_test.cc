// fedps-ctl report (tools/report.h): helpers, the reading of run folders, and a whole
// report.html from a synthetic run folder (needs gnuplot; skipped with the reason otherwise).
#include "tools/report.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "common/env.h"
#include "tests/testing/temp_dir.h"

namespace fedps::tools {
namespace {

using nlohmann::json;

TEST(ReportHelpers, HtmlEscape) { EXPECT_EQ(HtmlEscape("<a href=\"x\">&'</a>"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"); }

TEST(ReportHelpers, ClassifiesMetricsByTheirRecords) {
  EXPECT_EQ(ClassifyMetrics({{{"event", "start"}, {"source", "c"}, {"local_steps", 5}}, {{"event", "update"}}}), "client");
  EXPECT_EQ(ClassifyMetrics({{{"event", "start"}, {"mode", "evaluator"}}, {{"event", "eval"}, {"version", 3}}}),
            "evaluator");
  EXPECT_EQ(ClassifyMetrics({{{"event", "start"}, {"source", "shard-1"}}, {{"event", "apply"}}}), "shard");
  EXPECT_EQ(ClassifyMetrics({{{"event", "start"}, {"source", "train"}}, {{"event", "eval"}, {"step", 0}}}), "baseline");
  EXPECT_EQ(ClassifyMetrics({{{"event", "something"}}}), "");
}

TEST(ReportHelpers, MeanDomainLossIsTokenWeightedOverTheChosenDomains) {
  json e = {{"domains",
             {{"a", {{"loss", 2.0}, {"tokens", 100}}}, {"b", {{"loss", 4.0}, {"tokens", 300}}},
              {"held", {{"loss", 9.0}, {"tokens", 100}}}}}};
  EXPECT_DOUBLE_EQ(*MeanDomainLoss(e, {"a", "b"}), 3.5);
  EXPECT_DOUBLE_EQ(*MeanDomainLoss(e, {"a"}), 2.0);
  EXPECT_FALSE(MeanDomainLoss(e, {"zzz"}).has_value());
  EXPECT_FALSE(MeanDomainLoss(json::object(), {}).has_value());
}

TEST(ReportHelpers, StalenessTableCountsCommittedUpdatesPerClient) {
  ProcessLog a, b;
  a.records = {{{"event", "update"}, {"staleness", 0}}, {{"event", "update"}, {"staleness", 2}},
               {{"event", "update_dropped"}, {"staleness", 9}}};
  b.records = {{{"event", "update"}, {"staleness", 2}}};
  int64_t top = -5;
  auto t = StalenessTable({a, b}, &top);
  EXPECT_EQ(top, 2);
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[0], (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(t[1], (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(t[2], (std::vector<int64_t>{1, 1}));
}

// A run folder laid out like scripts/demo.sh's, with made-up but well-formed records.
class ReportFolder : public ::testing::Test {
 protected:
  void Write(const std::string& rel, const std::vector<json>& lines) {
    std::string path = dir_.File(rel);
    ASSERT_TRUE(Env::Default()->CreateDirs(Dirname(path)).ok());
    std::ofstream out(path);
    for (const auto& l : lines) out << l.dump() << "\n";
  }
  void SetUp() override {
    const double t0 = 1.7e9;
    auto doms = [](double base) {
      return json{{"code", {{"loss", base}, {"perplexity", std::exp(base)}, {"bits_per_byte", base / 3}, {"tokens", 512}}},
                  {"spanish", {{"loss", base + 1}, {"perplexity", std::exp(base + 1)}, {"bits_per_byte", base / 2}, {"tokens", 512}}}};
    };
    std::vector<json> client = {{{"event", "start"}, {"time", t0}, {"source", "site-code"}, {"name", "site-code"},
                                 {"local_steps", 4}, {"throttle", 1.0}}};
    for (int i = 1; i <= 4; ++i) {
      client.push_back({{"event", "update"}, {"time", t0 + 2 * i}, {"source", "site-code"}, {"seq", i}, {"staleness", i % 2},
                        {"tokens", 1000}, {"train_loss", 6.0 - i * 0.3}, {"tokens_per_s", 900.0}, {"bytes_sent", 5000},
                        {"bytes_encoded", 4900}, {"bytes_fp32", 10000}, {"compression_ratio", 2.04}});
    }
    client.push_back({{"event", "end"}, {"time", t0 + 10}, {"stopped", true}});
    Write("federated/clients/site-code/metrics.jsonl", client);
    std::vector<json> killed = {{{"event", "start"}, {"time", t0 + 1}, {"name", "site-lit"}, {"local_steps", 4}, {"throttle", 4.0}},
                                {{"event", "update"}, {"time", t0 + 3}, {"staleness", 3}, {"tokens", 1000}, {"train_loss", 5.5},
                                 {"tokens_per_s", 200.0}, {"bytes_sent", 5000}, {"bytes_encoded", 5000}, {"bytes_fp32", 10000}},
                                {{"event", "start"}, {"time", t0 + 6}, {"name", "site-lit"}, {"local_steps", 4}, {"throttle", 4.0}},
                                {{"event", "end"}, {"time", t0 + 11}}};
    Write("federated/clients/site-lit/metrics.jsonl", killed);
    std::vector<json> ev = {{{"event", "start"}, {"time", t0}, {"name", "evaluator"}, {"mode", "evaluator"}}};
    for (int v = 0; v <= 4; v += 2) {
      json e = {{"event", "eval"}, {"time", t0 + v}, {"version", v}, {"federation_tokens", v * 1000}, {"loss", 7.0 - v},
                {"domains", doms(7.0 - v)}};
      ev.push_back(e);
    }
    Write("federated/clients/evaluator/metrics.jsonl", ev);
    Write("federated/shard-0/metrics.jsonl", {{{"event", "start"}, {"source", "shard-0"}, {"time", t0}},
                                              {{"event", "apply"}, {"source", "shard-0"}, {"seq", 1}, {"time", t0 + 2}}});
    Write("centralised/metrics.jsonl",
          {{{"event", "start"}, {"source", "train"}, {"time", t0 + 20}},
           {{"event", "eval"}, {"source", "train"}, {"step", 0}, {"tokens", 0}, {"loss", 7.0}, {"domains", {{"code", doms(7.0)["code"]}}}},
           {{"event", "eval"}, {"source", "train"}, {"step", 8}, {"tokens", 4096}, {"loss", 4.5}, {"domains", {{"code", doms(4.5)["code"]}}}},
           {{"event", "end"}, {"source", "train"}, {"step", 8}, {"tokens", 4096}, {"seconds", 3.0}}});
    Write("demo-events.jsonl", {{{"event", "kill"}, {"time", t0 + 4}, {"client", "site-lit"}},
                                {{"event", "restart"}, {"time", t0 + 6}, {"client", "site-lit"}}});
    std::ofstream(dir_.File("corpus.json")) << json{{"held_out_domain", "spanish"},
                                                    {"domains", json::array({{{"name", "code"}, {"documents", 3}, {"bytes", 1000}},
                                                                             {{"name", "spanish"}, {"documents", 2}, {"bytes", 800}, {"held_out", true}}})}}
                                                   .dump();
    std::ofstream(dir_.File("eval-federated.json")) << json{{"loss", 3.0}, {"domains", doms(3.0)}, {"checkpoint", "x"}}.dump();
    std::ofstream(dir_.File("eval-centralised.json")) << json{{"loss", 2.5}, {"domains", doms(2.5)}}.dump();
    std::ofstream(dir_.File("samples-federated.json"))
        << json{{"samples", json::array({{{"prompt", "def "}, {"completion", "f(<x>):"}}})}}.dump();
  }
  testing::ScopedTempDir dir_;
};

TEST_F(ReportFolder, ReadsEveryKindOfRecord) {
  auto run = LoadRunFolder(dir_.path(), "r");
  ASSERT_TRUE(run.ok()) << run.status().ToString();
  EXPECT_EQ(run->clients.size(), 2u);
  EXPECT_EQ(run->evaluators.size(), 1u);
  EXPECT_EQ(run->shards.size(), 1u);
  EXPECT_EQ(run->baselines.size(), 1u);
  EXPECT_EQ(run->final_evals.size(), 2u);
  EXPECT_EQ(run->samples.size(), 1u);
  EXPECT_EQ(run->demo_events.size(), 2u);
  ASSERT_TRUE(run->corpus.has_value());
  EXPECT_DOUBLE_EQ(run->t0, 1.7e9);
  EXPECT_EQ(run->clients[0].name, "site-code");
}

TEST_F(ReportFolder, AFolderWithoutRecordsIsAClearError) {
  testing::ScopedTempDir empty;
  auto run = LoadRunFolder(empty.path(), "e");
  EXPECT_EQ(run.status().code(), StatusCode::kNotFound);
  EXPECT_NE(run.status().message().find("holds no metrics.jsonl"), std::string::npos);
  EXPECT_EQ(LoadRunFolder(dir_.File("nope"), "n").status().code(), StatusCode::kNotFound);
}

TEST_F(ReportFolder, WritesASelfContainedHtmlWithEveryPlot) {
  auto gp = FindGnuplot("");
  if (!gp.ok()) GTEST_SKIP() << gp.status().message();
  ReportOptions o;
  o.run_dirs = {dir_.path()};
  auto out = WriteReport(o);
  ASSERT_TRUE(out.ok()) << out.status().ToString();
  EXPECT_EQ(*out, dir_.File("report.html"));
  auto html = Env::Default()->ReadFile(*out);
  ASSERT_TRUE(html.ok());
  size_t images = 0;
  for (size_t p = 0; (p = html->find("data:image/png;base64,iVBORw0KGgo", p)) != std::string::npos; ++p) ++images;
  // val loss x2, client loss, tokens/s, membership, staleness, bytes, fed vs central, final bpb.
  EXPECT_EQ(images, 9u);
  EXPECT_EQ(html->find("src=\"http"), std::string::npos) << "nothing is loaded from elsewhere";
  EXPECT_NE(html->find("spanish (held out)"), std::string::npos);
  EXPECT_NE(html->find("<td>spanish</td><td>held out</td>"), std::string::npos) << "the corpus table";
  EXPECT_NE(html->find("f(&lt;x&gt;):"), std::string::npos) << "samples are escaped";
  EXPECT_NE(html->find("no end record (process died)"), std::string::npos) << "the killed process shows";
  EXPECT_EQ(html->find("class=\"note\">plot "), std::string::npos) << "no failed plot";
  EXPECT_FALSE(Env::Default()->Exists(*out + ".plots.tmp"));
}

TEST(Report, MissingGnuplotIsAClearError) {
  auto gp = FindGnuplot("/nonexistent/gnuplot");
  ASSERT_FALSE(gp.ok());
  EXPECT_EQ(gp.status().code(), StatusCode::kFailedPrecondition);
  const char* old_path = std::getenv("PATH");
  const std::string saved_path = old_path ? old_path : "";
  const char* old_gp = std::getenv("FEDPS_GNUPLOT");
  const std::string saved_gp = old_gp ? old_gp : "";
  ::setenv("PATH", "/nonexistent", 1);
  ::unsetenv("FEDPS_GNUPLOT");
  auto none = FindGnuplot("");
  ::setenv("PATH", saved_path.c_str(), 1);
  if (old_gp) ::setenv("FEDPS_GNUPLOT", saved_gp.c_str(), 1);
  ASSERT_FALSE(none.ok());
  EXPECT_EQ(none.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_NE(none.status().message().find("apt-get install gnuplot-nox"), std::string::npos) << none.status().message();
}

}  // namespace
}  // namespace fedps::tools
