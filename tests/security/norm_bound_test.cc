// The update norm bound (issue 10, item 5; docs/security.md, "Update norm bound") against a
// real redis-server and a real fedps-shard with the default [ps] norm_bound options: an
// honest federation keeps committing; a member's 1000x update is refused with the reason
// before it is staged, so it cannot be committed, the model is unchanged, and the refusal
// is counted where the tools read it (the registry's refusals, the shard's heartbeat stats,
// `fedps-ctl status` and `shards`); the bound's window survives a shard restart.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <random>

#include "tests/security/shard_fixture.h"

namespace fedps {
namespace {

using ::testing::HasSubstr;

using NormBoundAttackTest = ShardFixture;

// A pseudo-gradient of n values with root mean square `rms` (seeded: every update differs).
std::vector<float> Update(float rms, int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, rms);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng);
  return v;
}

// `fedps-ctl <command> --json` against the test's run.
nlohmann::json Ctl(const std::string& command, int redis_port, const std::string& log) {
  auto run = testing::RunLogged({testing::BinaryDir() + "/bin/fedps-ctl", command, "--json", "--redis",
                                 "127.0.0.1:" + std::to_string(redis_port), "--run", kRun},
                                log, "", std::chrono::seconds(60));
  EXPECT_TRUE(run.ok() && run->success()) << testing::ReadLogTail(log);
  auto text = Env::Default()->ReadFile(log);
  EXPECT_TRUE(text.ok());
  // The log holds stdout and stderr: the JSON is from the first '{' or '[' to the end.
  const size_t start = text.ok() ? text->find_first_of("{[") : std::string::npos;
  if (start == std::string::npos) return nullptr;
  return nlohmann::json::parse(text->substr(start), nullptr, false);
}

TEST_F(NormBoundAttackTest, AThousandfoldUpdateIsRefusedBeforeStagingAndHonestMembersKeepCommitting) {
  ASSERT_NO_FATAL_FAILURE(StartShard(""));
  const int64_t n = status_.slice_elements;
  const int64_t alice = JoinAs("alice");
  const int64_t bob = JoinAs("bob");
  const int64_t mallory = JoinAs("mallory");  // a member: it passes every other check
  auto id = [](const std::string& who, int64_t epoch, int k) {
    return who + "/" + std::to_string(epoch) + "/" + std::to_string(k);
  };

  // Honest members commit past the warm-up (5 applied updates by default).
  int64_t version = 0;
  for (int k = 1; k <= 6; ++k) {
    const bool a = k % 2 == 1;
    const std::string who = a ? "alice" : "bob";
    const int64_t epoch = a ? alice : bob;
    auto staged = PushAll(id(who, epoch, k), who, epoch, Update(1e-3f, n, static_cast<uint32_t>(k)));
    ASSERT_OK(staged.status());
    ASSERT_EQ(staged->state, rpc::UpdateState::STAGED);
    ASSERT_NO_FATAL_FAILURE(CommitAndWait(id(who, epoch, k), who, epoch, ++version));
  }
  int64_t v_before = -1;
  const std::vector<float> before = Pull(&v_before);
  ASSERT_EQ(v_before, version);

  // Mallory's update, 1000 times the honest ones: refused at its first frame (its norm so
  // far already exceeds 10 x the median), with the reason; nothing is received or staged.
  const std::vector<std::string> attack = Frames(Update(1.0f, n, 99));
  auto r = channel_->Push(Request(id("mallory", mallory, 1), "mallory", mallory, 0, attack[0]));
  EXPECT_EQ(LastCode(), "BAD_REQUEST") << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("x the median"));
  EXPECT_THAT(r.status().message(), HasSubstr("ps.norm_bound_factor"));
  EXPECT_EQ(Status().receiving_updates, 0);
  EXPECT_EQ(Status().staged_updates, 0);
  // Its other frames are answered the same at once (no receive entry opens again).
  for (size_t f = 1; f < attack.size(); ++f) {
    r = channel_->Push(Request(id("mallory", mallory, 1), "mallory", mallory, static_cast<int64_t>(f), attack[f]));
    EXPECT_EQ(LastCode(), "BAD_REQUEST") << r.status().ToString();
  }
  EXPECT_EQ(Status().receiving_updates, 0);
  // It was never staged, so the registry refuses its commit: the model stays as it was.
  nlohmann::json meta = {{"base_version", 0}, {"tokens", 4096}, {"local_steps", 8}};
  auto commit = registry_->CommitUpdate(id("mallory", mallory, 1), "mallory", mallory, meta, 1);
  EXPECT_FALSE(commit.ok());
  int64_t v_after = -1;
  EXPECT_EQ(Pull(&v_after), before);
  EXPECT_EQ(v_after, version);

  // Counted: in the registry's refusals and, after a heartbeat, in the shard's stats.
  auto refusals = registry_->RefusalCounts();
  ASSERT_OK(refusals.status());
  EXPECT_EQ((*refusals)["norm_bound"], 1);
  ASSERT_TRUE(WaitFor(
      [&] {
        auto shards = registry_->Shards();
        return shards.ok() && shards->size() == 1 && (*shards)[0].stats.norm_refused == 1;
      },
      kLongWait, std::chrono::milliseconds(50)));
  const nlohmann::json status = Ctl("status", redis_.port(), dir_.File("ctl-status.log"));
  ASSERT_TRUE(status.is_object());
  EXPECT_EQ(status["refusals"]["norm_bound"], 1);
  EXPECT_EQ(status["shards"][0]["norm_refused"], 1);
  EXPECT_GT(status["shards"][0]["norm_median"].get<double>(), 0);
  // The shards table shows the median and the count.
  auto table = testing::RunLogged({testing::BinaryDir() + "/bin/fedps-ctl", "shards", "--redis",
                                   "127.0.0.1:" + std::to_string(redis_.port()), "--run", kRun},
                                  dir_.File("ctl-shards.log"), "", std::chrono::seconds(60));
  ASSERT_TRUE(table.ok() && table->success());
  EXPECT_THAT(testing::ReadLogTail(dir_.File("ctl-shards.log")), HasSubstr("norm ref"));

  // Honest members go on committing, mallory's honest-sized update too.
  auto staged = PushAll(id("alice", alice, 7), "alice", alice, Update(1e-3f, n, 7));
  ASSERT_OK(staged.status());
  ASSERT_NO_FATAL_FAILURE(CommitAndWait(id("alice", alice, 7), "alice", alice, ++version));
  staged = PushAll(id("mallory", mallory, 2), "mallory", mallory, Update(2e-3f, n, 8));
  ASSERT_OK(staged.status());
  ASSERT_NO_FATAL_FAILURE(CommitAndWait(id("mallory", mallory, 2), "mallory", mallory, ++version));
}

TEST_F(NormBoundAttackTest, TheBoundHoldsAtOnceAfterARestartFromACheckpoint) {
  ASSERT_NO_FATAL_FAILURE(StartShard(""));
  const int64_t n = status_.slice_elements;
  const int64_t alice = JoinAs("alice");
  for (int k = 1; k <= 5; ++k) {
    const std::string id = "alice/" + std::to_string(alice) + "/" + std::to_string(k);
    ASSERT_OK(PushAll(id, "alice", alice, Update(1e-3f, n, static_cast<uint32_t>(k))).status());
    ASSERT_NO_FATAL_FAILURE(CommitAndWait(id, "alice", alice, k));
  }
  // A checkpoint at version 5, then a restart: the window comes back from the staged files
  // the checkpoint covers (no replay), so there is no warm-up to slip through.
  rpc::CheckpointRequest req;
  req.header = MakeHeader(status_.run_id, status_.layout_hash, 0, status_.epoch, "test");
  req.reason = "test";
  auto ck = channel_->Checkpoint(req);
  ASSERT_OK(ck.status());
  ASSERT_EQ(ck->version, 5);
  ASSERT_OK(shard_.Kill());
  ASSERT_NO_FATAL_FAILURE(Launch());
  const std::string big = "alice/" + std::to_string(alice) + "/6";
  auto r = channel_->Push(Request(big, "alice", alice, 0, Frames(Update(1.0f, n, 6))[0]));
  EXPECT_EQ(LastCode(), "BAD_REQUEST") << r.status().ToString();
  EXPECT_THAT(r.status().message(), HasSubstr("of the last 5 applied updates"));
}

TEST_F(NormBoundAttackTest, TheBoundCanBeTurnedOff) {
  ps_lines_ = "norm_bound = false\n";
  ASSERT_NO_FATAL_FAILURE(StartShard(""));
  const int64_t n = status_.slice_elements;
  const int64_t alice = JoinAs("alice");
  for (int k = 1; k <= 6; ++k) {
    const std::string id = "alice/" + std::to_string(alice) + "/" + std::to_string(k);
    const float rms = k == 6 ? 1.0f : 1e-3f;  // the last one 1000x
    auto staged = PushAll(id, "alice", alice, Update(rms, n, static_cast<uint32_t>(k)));
    ASSERT_OK(staged.status());
    EXPECT_EQ(staged->state, rpc::UpdateState::STAGED);
    ASSERT_NO_FATAL_FAILURE(CommitAndWait(id, "alice", alice, k));
  }
}

}  // namespace
}  // namespace fedps
