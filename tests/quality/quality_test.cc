// The quality guard: `scripts/study.sh --config configs/study-smoke.toml` end to end (corpus
// build through apt, tokenizer, prepare, an IID partition, a private redis-server, two
// fedps-shard, two fedps-client, pull-model, the centralised data-parallel-equivalent
// baseline with the same seed and tokens, eval) and a loose bound on the outcome: the
// federated model's validation loss within 10% of the baseline's. Skipped, with the
// reason, where redis-server or an apt mirror is missing.
#include <gtest/gtest.h>

#include <chrono>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "common/env.h"
#include "tests/testing/process.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

namespace fs = std::filesystem;

using testing::RunLogged;
using testing::SourceDir;

TEST(Quality, TwoIidClientsEndWithinTenPercentOfCentralised) {
  testing::ScopedTempDir dir;
  auto redis =
      RunLogged({"redis-server", "--version"}, dir.File("redis.log"), "", std::chrono::seconds(20));
  if (!redis.ok() || !redis->success()) GTEST_SKIP() << "redis-server is not installed";
  ASSERT_TRUE(Env::Default()->CreateDirs(dir.File("probe")).ok());
  auto probe = RunLogged({"apt-get", "download", "-q", "jargon-text"}, dir.File("probe.log"),
                         dir.File("probe"), std::chrono::seconds(120));
  if (!probe.ok() || !probe->success()) {
    GTEST_SKIP() << "apt-get download cannot fetch packages here (no mirror reachable?): "
                 << testing::ReadLogTail(dir.File("probe.log"), 400);
  }
  const std::string runs = dir.File("runs");
  auto st = RunLogged(
      {"bash", SourceDir() + "/scripts/study.sh", "--config",
       SourceDir() + "/configs/study-smoke.toml", "--runs", runs, "--data", dir.File("data"),
       "--cache", dir.File("cache"), "--bin", testing::BinaryDir() + "/bin"},
      dir.File("study.log"), "", std::chrono::seconds(540));
  ASSERT_TRUE(st.ok()) << "study.sh still running after 540 s:\n"
                       << testing::ReadLogTail(dir.File("study.log"), 6000);
  ASSERT_TRUE(st->success()) << st->ToString() << "\n"
                             << testing::ReadLogTail(dir.File("study.log"), 6000);

  auto text = Env::Default()->ReadFile(runs + "/study.json");
  ASSERT_TRUE(text.ok()) << text.status().ToString();
  const nlohmann::json rows = nlohmann::json::parse(*text);
  ASSERT_EQ(rows.size(), 1u) << rows.dump();
  const nlohmann::json& r = rows[0];
  EXPECT_EQ(r["clients"], 2);
  EXPECT_GT(r["tokens"].get<int64_t>(), 0);
  ASSERT_TRUE(r["federated_loss"].is_number() && r["dp_loss"].is_number()) << r.dump();
  EXPECT_LE(r["loss_ratio"].get<double>(), 1.10)
      << "federated " << r["federated_loss"] << " vs centralised " << r["dp_loss"] << "\n"
      << testing::ReadLogTail(dir.File("study.log"), 3000);
}

}  // namespace
}  // namespace fedps
