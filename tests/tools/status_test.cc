// `fedps-ctl status --json` (and members, shards, updates) against a real
// redis-server whose registry holds shards, members and committed updates.
#include <gtest/gtest.h>


#include "common/env.h"
#include "ps/registry.h"
#include "tests/testing/ctl.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

using std::chrono::milliseconds;

// fedps-ctl with stdout and stderr into <dir>/out.txt.
testing::CtlResult Ctl(const std::string& args, const std::string& dir) {
  return testing::RunCtl(args, dir + "/out.txt");
}

class StatusCommandTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(redis_.Start().ok());
    RegistryOptions o;
    o.port = redis_.port();
    o.run_id = "run1";
    auto r = Registry::Connect(o);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    registry_ = std::move(r).value();
    target_ = "--redis 127.0.0.1:" + std::to_string(redis_.port()) + " --run run1";
  }

  testing::ScopedRedisServer redis_;
  testing::ScopedTempDir dir_;
  std::unique_ptr<Registry> registry_;
  std::string target_;
};

TEST_F(StatusCommandTest, JsonDescribesRunShardsClientsUpdatesAndEvents) {
  RunIdentity id;
  id.model_preset = "tiny";
  id.layout_hash = "abc123";
  id.tokenizer_sha256 = "feed";
  id.codec = "bf16";
  id.num_shards = 2;
  ASSERT_TRUE(registry_->InitRun(id).ok());
  std::vector<int64_t> shard_epochs;
  for (int i = 0; i < 2; ++i) {
    ShardInfo s;
    s.index = i;
    s.address = "127.0.0.1:" + std::to_string(7700 + i);
    s.slice_begin = i * 100;
    s.slice_end = (i + 1) * 100;
    auto e = registry_->RegisterShard(s, milliseconds(60000));
    ASSERT_TRUE(e.ok());
    ShardStats st;
    st.version = 1;
    st.applied_updates = 1;
    st.bytes_in = 1000 + i;
    ASSERT_TRUE(registry_->ShardHeartbeat(i, *e, &st).ok());
  }
  ClientInfo info;
  info.host = "h1";
  info.data_domains = {"code"};
  auto epoch = registry_->Join("alice", info, milliseconds(60000));
  ASSERT_TRUE(epoch.ok());
  ASSERT_TRUE(registry_->Heartbeat("alice", *epoch, {{"updates", 1}, {"mean_staleness", 0.5}, {"tokens_per_s", 1234.0}}).ok());
  auto gone = registry_->Join("bob", info, milliseconds(60000));
  ASSERT_TRUE(gone.ok());
  ASSERT_TRUE(registry_->Leave("bob", *gone).ok());
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(registry_->MarkStaged("alice/1/0", i, 0).ok());
  auto seq = registry_->CommitUpdate("alice/1/0", "alice", *epoch, {{"base_version", 0}, {"tokens", 512}, {"local_steps", 4}}, 2);
  ASSERT_TRUE(seq.ok()) << seq.status().ToString();

  auto r = Ctl("status --json " + target_, dir_.path());
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r.out;
  EXPECT_EQ(j["run"]["model_preset"], "tiny");
  EXPECT_EQ(j["run"]["num_shards"], 2);
  EXPECT_EQ(j["global_seq"], 1);
  ASSERT_EQ(j["shards"].size(), 2u);
  EXPECT_EQ(j["shards"][1]["address"], "127.0.0.1:7701");
  EXPECT_EQ(j["shards"][1]["bytes_in"], 1001);
  EXPECT_TRUE(j["shards"][0]["alive"].get<bool>());
  ASSERT_EQ(j["clients"].size(), 2u);
  EXPECT_EQ(j["clients"][0]["name"], "alice");
  EXPECT_EQ(j["clients"][0]["state"], "live");
  EXPECT_EQ(j["clients"][0]["stats"]["tokens_per_s"], 1234.0);
  EXPECT_GT(j["clients"][0]["lease_remaining_ms"].get<int64_t>(), 0);
  EXPECT_EQ(j["clients"][1]["name"], "bob");
  EXPECT_EQ(j["clients"][1]["state"], "left");
  bool saw_commit = false;
  for (const auto& e : j["events"]) saw_commit |= e["type"] == "commit";
  EXPECT_TRUE(saw_commit) << j["events"].dump();

  auto u = Ctl("updates --json " + target_, dir_.path());
  ASSERT_EQ(u.code, 0) << u.out;
  auto uj = nlohmann::json::parse(u.out, nullptr, false);
  ASSERT_EQ(uj.size(), 1u);
  EXPECT_EQ(uj[0]["seq"], 1);
  EXPECT_EQ(uj[0]["update_id"], "alice/1/0");
  EXPECT_EQ(uj[0]["staleness"], 0);

  auto human = Ctl("status " + target_, dir_.path());
  ASSERT_EQ(human.code, 0) << human.out;
  EXPECT_NE(human.out.find("global version 1"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("alice"), std::string::npos);
  auto w = Ctl("watch --count 1 " + target_, dir_.path());
  EXPECT_EQ(w.code, 0) << w.out;
}

TEST_F(StatusCommandTest, EmptyRunAndUnreachableRedisAreReadable) {
  auto r = Ctl("status --json " + target_, dir_.path());
  ASSERT_EQ(r.code, 0) << r.out;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  EXPECT_TRUE(j["run"].is_null());
  EXPECT_EQ(j["global_seq"], 0);
  ASSERT_TRUE(redis_.Stop().ok());
  auto down = Ctl("status " + target_, dir_.path());
  EXPECT_EQ(down.code, 1);
  EXPECT_NE(down.out.find("error"), std::string::npos) << down.out;
  EXPECT_EQ(down.out.find("terminate"), std::string::npos) << down.out;
  auto bad = Ctl("status", dir_.path());
  EXPECT_NE(bad.code, 0);
  EXPECT_NE(bad.out.find("--config"), std::string::npos) << bad.out;
}

}  // namespace
}  // namespace fedps
