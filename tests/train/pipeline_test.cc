// The single-site pipeline through the real fedps-ctl binary, on real text: the
// Python standard library and the licence texts that every Debian machine has.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "common/env.h"
#include "common/metrics_log.h"
#include "tests/testing/ctl.h"
#include "tests/testing/real_text.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

namespace fs = std::filesystem;

using testing::RunCtl;

class PipelineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (std::string missing = testing::RealTextMissing(); !missing.empty()) GTEST_SKIP() << missing;
    Status prepared = testing::PrepareRealText(dir_.path());
    ASSERT_TRUE(prepared.ok()) << prepared.ToString();
  }

  // A config for the tiny preset on the prepared data.
  std::string WriteConfig(const std::string& name, const std::string& run_dir, const std::string& train) {
    std::string path = dir_.File(name);
    std::ofstream(path) << "[run]\nid = \"t\"\ndir = \"" << run_dir << "\"\nseed = 5\n"
                        << "[model]\npreset = \"tiny\"\n"
                        << "[data]\nprepared = \"" << dir_.File("data") << "\"\n"
                        << "[train]\nseq_len = 64\nmicro_batch = 8\nthreads = 1\n" << train;
    return path;
  }

  testing::ScopedTempDir dir_;
};

std::vector<nlohmann::json> Events(const std::string& metrics, const std::string& event) {
  auto records = ReadMetrics(metrics);
  std::vector<nlohmann::json> out;
  if (!records.ok()) return out;
  for (auto& r : *records) {
    if (r["event"] == event) out.push_back(r);
  }
  return out;
}

TEST_F(PipelineTest, TrainingLowersValidationPerplexity) {
  std::string cfg = WriteConfig("a.toml", dir_.File("run"),
                                "steps = 300\nlr = 3e-3\nwarmup_steps = 20\neval_every = 150\n"
                                "checkpoint_every = 150\nlog_every = 50\neval_batches = 8\n");
  auto r = RunCtl("train --config " + cfg, dir_.File("train.log"));
  ASSERT_EQ(r.code, 0) << r.context;
  EXPECT_NE(r.out.find("ETA"), std::string::npos) << "no progress line";
  auto evals = Events(dir_.File("run/metrics.jsonl"), "eval");
  ASSERT_GE(evals.size(), 3u);  // step 0, 150, 300
  double first = evals.front()["perplexity"], last = evals.back()["perplexity"];
  EXPECT_EQ(evals.front()["step"], 0);
  EXPECT_EQ(evals.back()["step"], 300);
  EXPECT_LT(last, first / 4) << "validation perplexity " << first << " -> " << last;
  for (const char* d : {"code", "licenses"}) {
    EXPECT_LT(evals.back()["domains"][d]["perplexity"].get<double>(), evals.front()["domains"][d]["perplexity"].get<double>());
    EXPECT_GT(evals.back()["domains"][d]["bits_per_byte"].get<double>(), 0);
  }
  // eval and export work on the final checkpoint.
  auto e = RunCtl("eval --checkpoint " + dir_.File("run/checkpoints") + " --data " + dir_.File("data") + " --json",
               dir_.File("eval.log"));
  ASSERT_EQ(e.code, 0) << e.context;
  EXPECT_NE(e.out.find("bits_per_byte"), std::string::npos);
  auto x = RunCtl("export --checkpoint " + dir_.File("run/checkpoints") + " --out " + dir_.File("hf"), dir_.File("x.log"));
  ASSERT_EQ(x.code, 0) << x.context;
  EXPECT_TRUE(fs::exists(dir_.File("hf/config.json")));
  EXPECT_TRUE(fs::exists(dir_.File("hf/model.safetensors")));
  auto g = RunCtl("generate --checkpoint " + dir_.File("run/checkpoints") + " --prompt 'def ' -n 20 --json",
               dir_.File("g.log"));
  ASSERT_EQ(g.code, 0) << g.context;
  EXPECT_NE(g.out.find("completion"), std::string::npos);
}

TEST_F(PipelineTest, ResumeIsBitExact) {
  const std::string train = "steps = 40\nlr = 3e-3\nwarmup_steps = 5\neval_every = 20\ncheckpoint_every = 10\n"
                            "log_every = 10\neval_batches = 2\nkeep_checkpoints = 10\n";
  auto straight = RunCtl("train --config " + WriteConfig("s.toml", dir_.File("straight"), train), dir_.File("s.log"));
  ASSERT_EQ(straight.code, 0) << straight.context;
  std::string cfg = WriteConfig("r.toml", dir_.File("resumed"), train);
  auto half = RunCtl("train --config " + cfg + " --stop-at-step 20", dir_.File("h.log"));
  ASSERT_EQ(half.code, 0) << half.context;
  EXPECT_FALSE(fs::exists(dir_.File("resumed/checkpoints/step-00000040")));
  auto again = RunCtl("train --config " + cfg, dir_.File("again.log"));
  EXPECT_NE(again.code, 0) << "a fresh run over existing checkpoints must be refused";
  EXPECT_NE(again.out.find("--resume"), std::string::npos) << again.context;
  auto rest = RunCtl("train --config " + cfg + " --resume", dir_.File("rest.log"));
  ASSERT_EQ(rest.code, 0) << rest.context;
  EXPECT_NE(rest.out.find("resumed from"), std::string::npos);
  for (const char* f : {"model.safetensors", "optimizer.safetensors"}) {
    auto a = Env::Default()->ReadFile(dir_.File(std::string("straight/checkpoints/step-00000040/") + f));
    auto b = Env::Default()->ReadFile(dir_.File(std::string("resumed/checkpoints/step-00000040/") + f));
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_TRUE(*a == *b) << f << " differs between the straight and the resumed run";
  }
}

TEST_F(PipelineTest, BadInputGetsOneClearErrorAndKeepsGoodFiles) {
  // Config typo: names the key and the file.
  std::string typo = WriteConfig("typo.toml", dir_.File("run"), "stpes = 10\n");
  auto r = RunCtl("train --config " + typo, dir_.File("typo.log"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("train.stpes"), std::string::npos) << r.context;
  EXPECT_NE(r.out.find("typo.toml"), std::string::npos) << r.context;

  // A good run with two checkpoints.
  std::string cfg = WriteConfig("ok.toml", dir_.File("run"),
                                "steps = 20\neval_every = 0\ncheckpoint_every = 10\nlog_every = 10\n");
  ASSERT_EQ(RunCtl("train --config " + cfg, dir_.File("ok.log")).code, 0);
  std::string ckpt = dir_.File("run/checkpoints/step-00000020");
  ASSERT_TRUE(fs::exists(ckpt + "/model.safetensors"));

  // Corrupt the newest checkpoint: eval refuses it with a checksum error...
  {
    std::fstream f(ckpt + "/model.safetensors", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(200);
    f.put('\x7f');
  }
  auto e = RunCtl("eval --checkpoint " + ckpt + " --data " + dir_.File("data"), dir_.File("e.log"));
  EXPECT_EQ(e.code, 1);
  EXPECT_NE(e.out.find("checksum"), std::string::npos) << e.context;
  EXPECT_EQ(e.out.find("terminate"), std::string::npos) << "crashed: " << e.context;
  // ...and resume falls back to the newest checkpoint that verifies.
  auto resume = RunCtl("train --config " + cfg + " --resume", dir_.File("resume.log"));
  EXPECT_EQ(resume.code, 0) << resume.context;
  EXPECT_NE(resume.out.find("step-00000010"), std::string::npos) << resume.context;

  // A tokenizer that does not match the prepared data.
  auto t = RunCtl("tokenizer train --input " + dir_.File("corpus/licenses") + " --vocab-size 600 --out " +
                   dir_.File("other.model"),
               dir_.File("tok.log"));
  ASSERT_EQ(t.code, 0) << t.context;
  std::string mismatch = dir_.File("mismatch.toml");
  std::ofstream(mismatch) << "[run]\ndir = \"" << dir_.File("run2") << "\"\n[data]\nprepared = \"" << dir_.File("data")
                          << "\"\ntokenizer = \"" << dir_.File("other.model") << "\"\n[train]\nseq_len = 64\n";
  auto m = RunCtl("train --config " + mismatch, dir_.File("m.log"));
  EXPECT_EQ(m.code, 1);
  EXPECT_NE(m.out.find("tokenizer"), std::string::npos) << m.context;
  EXPECT_FALSE(fs::exists(dir_.File("run2/checkpoints")));

  // Missing input for prepare.
  auto p = RunCtl("prepare --input " + dir_.File("nope") + " --vocab-size 600 --out " + dir_.File("d2"), dir_.File("p.log"));
  EXPECT_EQ(p.code, 1);
  EXPECT_NE(p.out.find("nope"), std::string::npos) << p.context;
}

}  // namespace
}  // namespace fedps
