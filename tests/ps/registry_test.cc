// Registry against a real redis-server (ScopedRedisServer), and the test harness it
// relies on (ScopedProcess, WaitFor, ScopedRedisServer). Leases are short (300 ms) and
// every wait is a condition with a deadline; nothing sleeps a fixed time.
#include "ps/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "common/config.h"
#include "tests/testing/process.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

using std::chrono::milliseconds;
using ::testing::HasSubstr;
using ::testing::Not;
using testing::ProcessGone;
using testing::ProcessOptions;
using testing::ScopedProcess;
using testing::ScopedRedisServer;
using testing::ScopedTempDir;
using testing::WaitFor;

#define ASSERT_OK_AND_ASSIGN(lhs, expr) \
  ASSERT_OK_AND_ASSIGN_IMPL(FEDPS_CONCAT(statusor_, __LINE__), lhs, expr)
#define ASSERT_OK_AND_ASSIGN_IMPL(tmp, lhs, expr)                      \
  auto tmp = (expr);                                                   \
  ASSERT_TRUE(tmp.ok()) << #expr << " -> " << tmp.status().ToString(); \
  lhs = std::move(tmp).value()

constexpr milliseconds kShortLease{300};
constexpr milliseconds kLongLease{60000};
constexpr milliseconds kDeadline{10000};

RunIdentity TestIdentity(int num_shards = 2) {
  RunIdentity id;
  id.model_preset = "tiny";
  id.model_config = {{"n_layers", 2}, {"d_model", 64}, {"vocab", 512}};
  id.layout_hash = "layout-aaaa";
  id.tokenizer_sha256 = "tok-1111";
  id.codec = "int8+zstd";
  id.num_shards = num_shards;
  return id;
}

// Count of events of `type` (in the last 1000).
int CountEvents(Registry& r, const std::string& type) {
  auto events = r.RecentEvents(1000);
  if (!events.ok()) return -1;
  return static_cast<int>(std::count_if(events->begin(), events->end(),
                                        [&](const Event& e) { return e.type == type; }));
}

class RegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_OK(redis_.Start()); }

  RegistryOptions Options(const std::string& run_id = "run1") {
    RegistryOptions o;
    o.host = redis_.host();
    o.port = redis_.port();
    o.password = redis_.password();
    o.run_id = run_id;
    o.connect_timeout = milliseconds(1000);
    o.command_timeout = milliseconds(2000);
    return o;
  }

  // A fresh registry; nullptr (and a test failure) when it cannot connect.
  std::unique_ptr<Registry> Open(const std::string& run_id = "run1") {
    auto r = Registry::Connect(Options(run_id));
    EXPECT_TRUE(r.ok()) << r.status().ToString();
    return r.ok() ? std::move(r).value() : nullptr;
  }

  // Stages `update_id` on shards [0, n).
  void StageAll(Registry& r, const std::string& update_id, int n) {
    for (int s = 0; s < n; ++s) ASSERT_OK(r.MarkStaged(update_id, s, 0));
  }

  ScopedRedisServer redis_;
};

// ---- connection and identity ----------------------------------------------------------------

TEST_F(RegistryTest, ConnectToNothingIsUnavailable) {
  auto port = testing::PickFreePort();
  ASSERT_OK(port);
  RegistryOptions o = Options();
  o.port = *port;
  auto r = Registry::Connect(o);
  EXPECT_EQ(r.status().code(), StatusCode::kUnavailable) << r.status().ToString();
  EXPECT_TRUE(r.status().retryable());
}

TEST_F(RegistryTest, BadOptionsAreInvalidArgument) {
  RegistryOptions o = Options("has{brace}");
  EXPECT_EQ(Registry::Connect(o).status().code(), StatusCode::kInvalidArgument);
  o = Options("");
  EXPECT_EQ(Registry::Connect(o).status().code(), StatusCode::kInvalidArgument);
  auto r = Open();
  ASSERT_NE(r, nullptr);
  EXPECT_EQ(r->key_prefix(), "fedps:{run1}:");
  EXPECT_EQ(r->Join("has space", {}, kLongLease).status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(r->Join("c", {}, milliseconds(0)).status().code(), StatusCode::kInvalidArgument);
}

TEST_F(RegistryTest, InitRunCreatesOnceAndAcceptsTheSameIdentity) {
  auto a = Open();
  auto b = Open();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(a->GetRun().status().code(), StatusCode::kNotFound);

  ASSERT_OK_AND_ASSIGN(RunIdentity created, a->InitRun(TestIdentity()));
  EXPECT_GT(created.created_ms, 0);
  ASSERT_OK_AND_ASSIGN(RunIdentity again, b->InitRun(TestIdentity()));
  EXPECT_EQ(again.created_ms, created.created_ms);
  ASSERT_OK_AND_ASSIGN(RunIdentity got, b->GetRun());
  EXPECT_EQ(got.model_preset, "tiny");
  EXPECT_EQ(got.model_config, TestIdentity().model_config);
  EXPECT_EQ(got.num_shards, 2);
  EXPECT_EQ(CountEvents(*a, "run_created"), 1);

  // Runs are separate namespaces.
  auto other = Open("run2");
  ASSERT_NE(other, nullptr);
  EXPECT_EQ(other->GetRun().status().code(), StatusCode::kNotFound);
}

TEST_F(RegistryTest, InitRunMismatchNamesTheFieldAndBothValues) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK(r->InitRun(TestIdentity()));

  RunIdentity layout = TestIdentity();
  layout.layout_hash = "layout-bbbb";
  Status s = r->InitRun(layout).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("layout_hash"));
  EXPECT_THAT(s.message(), HasSubstr("\"layout-aaaa\""));
  EXPECT_THAT(s.message(), HasSubstr("\"layout-bbbb\""));

  RunIdentity config = TestIdentity();
  config.model_config["n_layers"] = 24;
  s = r->InitRun(config).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("model_config/n_layers"));
  EXPECT_THAT(s.message(), HasSubstr("registry has 2"));
  EXPECT_THAT(s.message(), HasSubstr("this process has 24"));

  RunIdentity shards = TestIdentity(4);
  s = r->InitRun(shards).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("num_shards"));

  // The first mismatching field in order is reported: preset before layout.
  RunIdentity both = layout;
  both.model_preset = "125m";
  s = r->InitRun(both).status();
  EXPECT_THAT(s.message(), HasSubstr("model_preset"));
  EXPECT_THAT(s.message(), Not(HasSubstr("layout_hash")));

  // Nothing was overwritten.
  ASSERT_OK_AND_ASSIGN(RunIdentity got, r->GetRun());
  EXPECT_EQ(got.layout_hash, "layout-aaaa");
}

TEST_F(RegistryTest, InitRunComparesTheApplyRelevantPsOptions) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  PsOptions ps;
  RunIdentity mine = TestIdentity();
  mine.apply_config = PsApplyConfig(ps);
  ASSERT_OK(r->InitRun(mine));
  ASSERT_OK_AND_ASSIGN(RunIdentity got, r->GetRun());
  EXPECT_EQ(got.apply_config, PsApplyConfig(ps));
  ASSERT_OK(r->InitRun(mine));  // the same options again

  // A shard or client whose [ps] would apply updates differently is refused, naming the key.
  PsOptions other = ps;
  other.outer_lr = 0.25;
  RunIdentity theirs = TestIdentity();
  theirs.apply_config = PsApplyConfig(other);
  Status s = r->InitRun(theirs).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("apply_config/outer_lr"));
  EXPECT_THAT(s.message(), HasSubstr("this process has 0.25"));
  other = ps;
  other.max_staleness = 3;
  theirs.apply_config = PsApplyConfig(other);
  EXPECT_THAT(r->InitRun(theirs).status().message(), HasSubstr("apply_config/max_staleness"));
  // Options that do not decide how updates apply are not part of it.
  other = ps;
  other.checkpoint_every = 7;
  other.snapshot_ttl_ms = 1234;
  theirs.apply_config = PsApplyConfig(other);
  EXPECT_OK(r->InitRun(theirs));
  // A process that does not take part (a tool) is not checked.
  EXPECT_OK(r->InitRun(TestIdentity()));
}

// ---- membership ----------------------------------------------------------------------------

TEST_F(RegistryTest, JoinHeartbeatLeave) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ClientInfo info{"host-a", {"code", "literature"}};
  ASSERT_OK_AND_ASSIGN(int64_t epoch, r->Join("alice", info, kLongLease));
  EXPECT_GT(epoch, 0);

  ASSERT_OK_AND_ASSIGN(std::vector<Member> members, r->Members());
  ASSERT_EQ(members.size(), 1u);
  EXPECT_EQ(members[0].name, "alice");
  EXPECT_EQ(members[0].epoch, epoch);
  EXPECT_EQ(members[0].host, "host-a");
  EXPECT_EQ(members[0].data_domains, info.data_domains);
  EXPECT_GT(members[0].lease_remaining_ms, 0);
  EXPECT_LE(members[0].lease_remaining_ms, kLongLease.count());
  EXPECT_GT(members[0].joined_ms, 0);

  ASSERT_OK(r->Heartbeat("alice", epoch, {{"tokens_per_s", 1234.5}, {"step", 10}}));
  ASSERT_OK(r->Heartbeat("alice", epoch, {{"tokens_per_s", 2000}, {"step", 20}}));
  ASSERT_OK_AND_ASSIGN(members, r->Members());
  ASSERT_EQ(members.size(), 1u);
  EXPECT_EQ(members[0].heartbeats, 2);
  EXPECT_EQ(members[0].stats["step"], 20);

  ASSERT_OK(r->Leave("alice", epoch));
  ASSERT_OK(r->Leave("alice", epoch));  // idempotent
  ASSERT_OK_AND_ASSIGN(members, r->Members());
  EXPECT_TRUE(members.empty());
  ASSERT_OK_AND_ASSIGN(std::vector<Member> past, r->PastMembers());
  ASSERT_EQ(past.size(), 1u);
  EXPECT_EQ(past[0].name, "alice");
  EXPECT_EQ(past[0].end_reason, "left");
  EXPECT_EQ(past[0].epoch, epoch);
  EXPECT_EQ(past[0].stats["step"], 20);
  EXPECT_EQ(past[0].data_domains, info.data_domains);
  EXPECT_EQ(r->Heartbeat("alice", epoch).code(), StatusCode::kAborted);
  EXPECT_EQ(CountEvents(*r, "join"), 1);
  EXPECT_EQ(CountEvents(*r, "left"), 1);
}

TEST_F(RegistryTest, LeaseExpiresWithoutHeartbeatsAndIsRecordedOnce) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t silent, r->Join("silent", {"h1", {}}, kShortLease));
  ASSERT_OK_AND_ASSIGN(int64_t busy, r->Join("busy", {"h2", {}}, kShortLease));

  // "busy" heartbeats while we wait; "silent" does not.
  bool busy_ok = true;
  ASSERT_TRUE(WaitFor(
      [&] {
        busy_ok = busy_ok && r->Heartbeat("busy", busy).ok();
        auto m = r->Members();
        return m.ok() && m->size() == 1 && (*m)[0].name == "busy";
      },
      kDeadline, milliseconds(50)));
  EXPECT_TRUE(busy_ok) << "a heartbeating member lost its lease";

  ASSERT_OK(r->Members());  // a second look records nothing more
  EXPECT_EQ(CountEvents(*r, "expired"), 1);
  ASSERT_OK_AND_ASSIGN(std::vector<Member> past, r->PastMembers());
  ASSERT_EQ(past.size(), 1u);
  EXPECT_EQ(past[0].name, "silent");
  EXPECT_EQ(past[0].epoch, silent);
  EXPECT_EQ(past[0].end_reason, "expired");
  EXPECT_EQ(past[0].ended_ms, past[0].last_heartbeat_ms + kShortLease.count());
}

TEST_F(RegistryTest, ExpiredEpochIsFencedAndRejoinGivesALargerOne) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK(r->InitRun(TestIdentity(2)));
  ASSERT_OK_AND_ASSIGN(int64_t old_epoch, r->Join("carol", {"h", {}}, kShortLease));
  StageAll(*r, "carol-1", 2);

  ASSERT_TRUE(WaitFor(
      [&] {
        auto m = r->Members();
        return m.ok() && m->empty();
      },
      kDeadline));
  Status hb = r->Heartbeat("carol", old_epoch);
  EXPECT_EQ(hb.code(), StatusCode::kAborted);
  EXPECT_THAT(hb.message(), HasSubstr("rejoin"));
  Status commit = r->CommitUpdate("carol-1", "carol", old_epoch, {}, 2).status();
  EXPECT_EQ(commit.code(), StatusCode::kAborted) << commit.ToString();
  EXPECT_EQ(*r->GlobalSeq(), 0);

  ASSERT_OK_AND_ASSIGN(int64_t new_epoch, r->Join("carol", {"h", {}}, kLongLease));
  EXPECT_GT(new_epoch, old_epoch);
  // The old epoch stays fenced even though the name is live again.
  EXPECT_EQ(r->Heartbeat("carol", old_epoch).code(), StatusCode::kAborted);
  EXPECT_EQ(r->CommitUpdate("carol-1", "carol", old_epoch, {}, 2).status().code(),
            StatusCode::kAborted);
  EXPECT_EQ(r->Leave("carol", old_epoch).code(), StatusCode::kAborted);
  ASSERT_OK(r->Heartbeat("carol", new_epoch));
  ASSERT_OK_AND_ASSIGN(int64_t seq, r->CommitUpdate("carol-1", "carol", new_epoch, {}, 2));
  EXPECT_EQ(seq, 1);
}

TEST_F(RegistryTest, AnotherProcessCannotTakeALiveNameUntilItsLeaseLapses) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t first, r->Join("dave", {"old-host", {}, "old-host/11/aa"}, kShortLease));
  auto second = r->Join("dave", {"new-host", {}, "new-host/22/bb"}, kLongLease);
  ASSERT_EQ(second.status().code(), StatusCode::kAlreadyExists) << second.status().ToString();
  EXPECT_THAT(second.status().message(), HasSubstr("old-host/11/aa"));
  EXPECT_THAT(second.status().message(), HasSubstr("epoch " + std::to_string(first)));
  EXPECT_THAT(second.status().message(), HasSubstr("lapses in"));
  ASSERT_OK(r->Heartbeat("dave", first));  // the holder is untouched
  ASSERT_OK_AND_ASSIGN(std::vector<Member> members, r->Members());
  ASSERT_EQ(members.size(), 1u);
  EXPECT_EQ(members[0].host, "old-host");

  // Once the holder stops renewing, its lease lapses and the other process joins.
  ASSERT_TRUE(WaitFor(
      [&] {
        auto m = r->Members();
        return m.ok() && m->empty();
      },
      kDeadline));
  ASSERT_OK_AND_ASSIGN(int64_t taken, r->Join("dave", {"new-host", {}, "new-host/22/bb"}, kLongLease));
  EXPECT_GT(taken, first);
  EXPECT_EQ(r->Heartbeat("dave", first).code(), StatusCode::kAborted);
  ASSERT_OK_AND_ASSIGN(std::vector<Member> past, r->PastMembers());
  ASSERT_EQ(past.size(), 1u);
  EXPECT_EQ(past[0].end_reason, "expired");
  EXPECT_EQ(past[0].host, "old-host");
}

TEST_F(RegistryTest, TheSameProcessJoiningAgainReplacesItsLiveMembership) {
  // A Join whose reply was lost is retried by the same process: it gets a fresh epoch and
  // its old membership ends "replaced".
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t first, r->Join("ed", {"h", {}, "h/7/cc"}, kLongLease));
  ASSERT_OK_AND_ASSIGN(int64_t second, r->Join("ed", {"h", {}, "h/7/cc"}, kLongLease));
  EXPECT_GT(second, first);
  EXPECT_EQ(r->Heartbeat("ed", first).code(), StatusCode::kAborted);
  ASSERT_OK(r->Heartbeat("ed", second));
  ASSERT_OK_AND_ASSIGN(std::vector<Member> past, r->PastMembers());
  ASSERT_EQ(past.size(), 1u);
  EXPECT_EQ(past[0].end_reason, "replaced");
}

// ---- staging and commit ----------------------------------------------------------------------

TEST_F(RegistryTest, CommitIsIdempotent) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t epoch, r->Join("erin", {"h", {}}, kLongLease));
  StageAll(*r, "erin-1", 2);
  const nlohmann::json meta = {{"base_versions", {3, 3}}, {"tokens", 4096}, {"steps", 8}};
  ASSERT_OK_AND_ASSIGN(int64_t seq, r->CommitUpdate("erin-1", "erin", epoch, meta, 2));
  ASSERT_OK_AND_ASSIGN(int64_t again, r->CommitUpdate("erin-1", "erin", epoch, meta, 2));
  EXPECT_EQ(seq, 1);
  EXPECT_EQ(again, seq);
  EXPECT_EQ(*r->GlobalSeq(), 1);
  EXPECT_EQ(CountEvents(*r, "commit"), 1);

  // A retry after a crash and rejoin still finds the commit.
  ASSERT_OK_AND_ASSIGN(int64_t epoch2, r->Join("erin", {"h", {}}, kLongLease));
  ASSERT_OK_AND_ASSIGN(int64_t retried, r->CommitUpdate("erin-1", "erin", epoch2, meta, 2));
  EXPECT_EQ(retried, seq);

  // Another client cannot claim the id.
  ASSERT_OK_AND_ASSIGN(int64_t frank, r->Join("frank", {"h", {}}, kLongLease));
  EXPECT_EQ(r->CommitUpdate("erin-1", "frank", frank, meta, 2).status().code(),
            StatusCode::kAlreadyExists);
  EXPECT_EQ(*r->GlobalSeq(), 1);

  ASSERT_OK_AND_ASSIGN(CommittedUpdate found, r->LookupCommit("erin-1"));
  EXPECT_EQ(found.seq, 1);
  EXPECT_EQ(found.client, "erin");
  EXPECT_EQ(found.epoch, epoch);
  EXPECT_EQ(found.meta, meta);
  EXPECT_EQ(r->LookupCommit("nope").status().code(), StatusCode::kNotFound);
}

TEST_F(RegistryTest, CommitIsRefusedUntilEveryShardStaged) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK(r->InitRun(TestIdentity(3)));
  ASSERT_OK_AND_ASSIGN(int64_t epoch, r->Join("gina", {"h", {}}, kLongLease));
  ASSERT_OK(r->MarkStaged("gina-1", 2, 0));
  ASSERT_OK(r->MarkStaged("gina-1", 0, 0));
  ASSERT_OK(r->MarkStaged("gina-1", 0, 0));  // a duplicate mark is harmless
  ASSERT_OK_AND_ASSIGN(std::vector<int> staged, r->StagedShards("gina-1"));
  EXPECT_EQ(staged, (std::vector<int>{0, 2}));

  Status s = r->CommitUpdate("gina-1", "gina", epoch, {}, 3).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not staged on shard(s) 1"));
  EXPECT_EQ(*r->GlobalSeq(), 0);
  EXPECT_EQ(r->LookupCommit("gina-1").status().code(), StatusCode::kNotFound);

  // The run has 3 shards: a client that believes 2 cannot commit with 2 staged.
  s = r->CommitUpdate("gina-1", "gina", epoch, {}, 2).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("the run has 3"));

  ASSERT_OK(r->MarkStaged("gina-1", 1, 0));
  ASSERT_OK_AND_ASSIGN(int64_t seq, r->CommitUpdate("gina-1", "gina", epoch, {}, 3));
  EXPECT_EQ(seq, 1);
  ASSERT_OK_AND_ASSIGN(staged, r->StagedShards("gina-1"));
  EXPECT_TRUE(staged.empty());
  EXPECT_EQ(CountEvents(*r, "commit_refused"), 2);
}

TEST_F(RegistryTest, StageRecordsMustAgreeAndTravelWithTheCommit) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t epoch, r->Join("mia", {"h", {}}, kLongLease));
  const nlohmann::json record = {{"base_version", 0}, {"tokens", 4096}, {"local_steps", 16}};
  nlohmann::json other = record;
  other["tokens"] = 2048;
  ASSERT_OK_AND_ASSIGN(int64_t marked, r->MarkStaged("mia-1", 0, 0, record));
  EXPECT_EQ(marked, 0);
  ASSERT_OK(r->MarkStaged("mia-1", 1, 0, other));
  Status s = r->CommitUpdate("mia-1", "mia", epoch, {}, 2).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("stage records differ"));
  EXPECT_THAT(s.message(), HasSubstr("\"tokens\":2048"));
  EXPECT_THAT(s.message(), HasSubstr("\"tokens\":4096"));

  ASSERT_OK(r->MarkStaged("mia-1", 1, 0, record));  // the shard staged again, correctly
  ASSERT_OK_AND_ASSIGN(int64_t seq, r->CommitUpdate("mia-1", "mia", epoch, {{"note", 1}}, 2));
  ASSERT_OK_AND_ASSIGN(CommittedUpdate u, r->LookupCommit("mia-1"));
  EXPECT_EQ(u.stage_record, record);
  EXPECT_EQ(u.meta["note"], 1);

  // A late (duplicate) mark learns the seq and recreates nothing.
  ASSERT_OK_AND_ASSIGN(int64_t late, r->MarkStaged("mia-1", 0, 0, record));
  EXPECT_EQ(late, seq);
  ASSERT_OK_AND_ASSIGN(std::vector<int> staged, r->StagedShards("mia-1"));
  EXPECT_TRUE(staged.empty());
}

TEST_F(RegistryTest, ReleaseStagedAndCommitAreSerialised) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t epoch, r->Join("nora", {"h", {}}, kLongLease));
  // Before the commit: shard 1 gives up on the update; the commit can no longer succeed.
  StageAll(*r, "nora-1", 2);
  ASSERT_OK_AND_ASSIGN(int64_t released, r->ReleaseStaged("nora-1", 1));
  EXPECT_EQ(released, 0);
  Status s = r->CommitUpdate("nora-1", "nora", epoch, {}, 2).status();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("shard(s) 1"));
  // After the commit: a shard that wants to drop the slice is told to keep it.
  StageAll(*r, "nora-2", 2);
  ASSERT_OK_AND_ASSIGN(int64_t seq, r->CommitUpdate("nora-2", "nora", epoch, {}, 2));
  ASSERT_OK_AND_ASSIGN(int64_t kept, r->ReleaseStaged("nora-2", 0));
  EXPECT_EQ(kept, seq);
}

TEST_F(RegistryTest, CommitRefusesTooStaleUpdatesWithoutTakingASeq) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t epoch, r->Join("omar", {"h", {}}, kLongLease));
  for (int i = 1; i <= 3; ++i) {
    const std::string id = "omar-" + std::to_string(i);
    StageAll(*r, id, 1);
    ASSERT_OK(r->CommitUpdate(id, "omar", epoch, {}, 1, StalenessLimit{0, 2}));
  }
  // Seq is 3: an update based on version 0 would be applied at version 3, staleness 3.
  StageAll(*r, "omar-4", 1);
  Status s = r->CommitUpdate("omar-4", "omar", epoch, {}, 1, StalenessLimit{0, 2}).status();
  EXPECT_EQ(s.code(), StatusCode::kOutOfRange);
  EXPECT_THAT(s.message(), HasSubstr("staleness 3 > max 2: pull and retrain"));
  EXPECT_EQ(*r->GlobalSeq(), 3);
  ASSERT_OK_AND_ASSIGN(auto counts, r->RefusalCounts());
  EXPECT_EQ(counts["too_stale"], 1);
  // Based on version 1 it is within the limit.
  ASSERT_OK_AND_ASSIGN(int64_t seq,
                       r->CommitUpdate("omar-4", "omar", epoch, {}, 1, StalenessLimit{1, 2}));
  EXPECT_EQ(seq, 4);
  // A base version from the future is a client bug.
  StageAll(*r, "omar-5", 1);
  EXPECT_EQ(r->CommitUpdate("omar-5", "omar", epoch, {}, 1, StalenessLimit{9, 2}).status().code(),
            StatusCode::kInvalidArgument);
}

TEST_F(RegistryTest, ConcurrentCommitsGetDistinctContiguousSeqs) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 25;
  auto shared = Open();
  ASSERT_NE(shared, nullptr);
  ASSERT_OK(shared->InitRun(TestIdentity(2)));
  std::vector<std::vector<std::pair<std::string, int64_t>>> results(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      // Half the threads share one Registry (its mutex), half have their own connection.
      std::unique_ptr<Registry> own = t % 2 == 0 ? Open() : nullptr;
      Registry& r = own ? *own : *shared;
      const std::string client = "client-" + std::to_string(t);
      auto epoch = r.Join(client, {"h", {}}, kLongLease);
      if (!epoch.ok()) {
        ADD_FAILURE() << epoch.status().ToString();
        return;
      }
      for (int k = 0; k < kPerThread; ++k) {
        const std::string id = client + "-u" + std::to_string(k);
        for (int s = 0; s < 2; ++s) EXPECT_OK(r.MarkStaged(id, s, 0));
        auto seq = r.CommitUpdate(id, client, *epoch, {{"k", k}}, 2);
        if (!seq.ok()) {
          ADD_FAILURE() << seq.status().ToString();
          return;
        }
        results[t].emplace_back(id, *seq);
      }
    });
  }
  for (auto& th : threads) th.join();

  std::map<int64_t, std::string> by_seq;
  for (const auto& per_thread : results) {
    // Within one thread, later commits get later seqs.
    for (size_t i = 1; i < per_thread.size(); ++i) {
      EXPECT_LT(per_thread[i - 1].second, per_thread[i].second);
    }
    for (const auto& [id, seq] : per_thread) {
      EXPECT_TRUE(by_seq.emplace(seq, id).second) << "seq " << seq << " given twice";
    }
  }
  ASSERT_EQ(by_seq.size(), static_cast<size_t>(kThreads * kPerThread));
  EXPECT_EQ(by_seq.begin()->first, 1);
  EXPECT_EQ(by_seq.rbegin()->first, kThreads * kPerThread);
  EXPECT_EQ(*shared->GlobalSeq(), kThreads * kPerThread);

  ASSERT_OK_AND_ASSIGN(std::vector<CommittedUpdate> log, shared->CommittedAfter(0, 1000));
  ASSERT_EQ(log.size(), by_seq.size());
  for (const auto& u : log) EXPECT_EQ(by_seq[u.seq], u.update_id);
}

TEST_F(RegistryTest, CommittedAfterPagesInSequenceOrder) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t epoch, r->Join("hank", {"h", {}}, kLongLease));
  for (int i = 1; i <= 10; ++i) {
    const std::string id = "hank-" + std::to_string(i);
    StageAll(*r, id, 1);
    const nlohmann::json meta = {
        {"i", i}, {"tokens", int64_t{1} << 40}, {"base_versions", {i - 1}}};
    ASSERT_OK_AND_ASSIGN(int64_t seq, r->CommitUpdate(id, "hank", epoch, meta, 1));
    ASSERT_EQ(seq, i);
  }
  int64_t after = 0;
  std::vector<int64_t> seen;
  while (true) {
    ASSERT_OK_AND_ASSIGN(std::vector<CommittedUpdate> page, r->CommittedAfter(after, 4));
    if (page.empty()) break;
    EXPECT_LE(page.size(), 4u);
    for (const auto& u : page) {
      seen.push_back(u.seq);
      EXPECT_EQ(u.update_id, "hank-" + std::to_string(u.seq));
      EXPECT_EQ(u.meta["i"], u.seq);
      EXPECT_EQ(u.meta["tokens"].get<int64_t>(), int64_t{1} << 40);
      EXPECT_EQ(u.client, "hank");
      EXPECT_EQ(u.num_shards, 1);
      EXPECT_GT(u.committed_ms, 0);
    }
    after = page.back().seq;
  }
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  ASSERT_OK_AND_ASSIGN(std::vector<CommittedUpdate> tail, r->CommittedAfter(7, 100));
  ASSERT_EQ(tail.size(), 3u);
  EXPECT_EQ(tail[0].seq, 8);
}

// ---- shards, refusals, events ----------------------------------------------------------------

TEST_F(RegistryTest, ShardDirectoryLeasesAndStats) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t e0,
                       r->RegisterShard({0, "10.0.0.1:9000", 0, 500, 101}, kShortLease));
  ASSERT_OK_AND_ASSIGN(int64_t e1,
                       r->RegisterShard({1, "10.0.0.2:9000", 500, 1000, 102}, kShortLease));
  EXPECT_NE(e0, e1);
  ShardStats stats;
  stats.version = 7;
  stats.applied_updates = 7;
  stats.bytes_in = 1 << 20;
  stats.bytes_out = 3 << 20;
  stats.last_checkpoint_version = 5;
  stats.last_checkpoint_ms = 1700000000123;
  stats.norm_refused = 3;
  stats.norm_median = 0.1 / 3;  // read back bit for bit
  ASSERT_OK(r->ShardHeartbeat(0, e0, &stats));

  ASSERT_OK_AND_ASSIGN(std::vector<ShardStatus> shards, r->Shards());
  ASSERT_EQ(shards.size(), 2u);
  EXPECT_EQ(shards[0].info.address, "10.0.0.1:9000");
  EXPECT_EQ(shards[1].info.slice_begin, 500);
  EXPECT_EQ(shards[1].info.slice_end, 1000);
  EXPECT_EQ(shards[1].info.pid, 102);
  EXPECT_TRUE(shards[0].alive);
  EXPECT_EQ(shards[0].stats.version, 7);
  EXPECT_EQ(shards[0].stats.bytes_out, 3 << 20);
  EXPECT_EQ(shards[0].stats.last_checkpoint_ms, 1700000000123);
  EXPECT_EQ(shards[0].stats.norm_refused, 3);
  EXPECT_EQ(shards[0].stats.norm_median, 0.1 / 3);
  EXPECT_GT(shards[0].stats.updated_ms, 0);

  // Shard 0 keeps heartbeating, shard 1 goes quiet.
  ASSERT_TRUE(WaitFor(
      [&] {
        if (!r->ShardHeartbeat(0, e0).ok()) return false;
        auto s = r->Shards();
        return s.ok() && s->size() == 2 && (*s)[0].alive && !(*s)[1].alive;
      },
      kDeadline, milliseconds(50)));
  ASSERT_OK(r->Shards());
  EXPECT_EQ(CountEvents(*r, "shard_lost"), 1);
  EXPECT_EQ(r->ShardHeartbeat(1, e1).code(), StatusCode::kAborted);

  ASSERT_OK_AND_ASSIGN(int64_t e1b,
                       r->RegisterShard({1, "10.0.0.3:9000", 500, 1000, 103}, kLongLease));
  EXPECT_GT(e1b, e1);
  ASSERT_OK(r->ShardHeartbeat(1, e1b));
  ASSERT_OK_AND_ASSIGN(shards, r->Shards());
  EXPECT_TRUE(shards[1].alive);
  EXPECT_EQ(shards[1].info.address, "10.0.0.3:9000");
}

TEST_F(RegistryTest, StageMarkFromAnOldShardEpochIsRefused) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t old_epoch, r->RegisterShard({0, "10.0.0.1:9000", 0, 500, 101}, kLongLease));
  ASSERT_OK(r->MarkStaged("ada/1/0", 0, old_epoch));
  // A new process registers the index: the old one is fenced and cannot mark any more.
  ASSERT_OK_AND_ASSIGN(int64_t new_epoch, r->RegisterShard({0, "10.0.0.1:9001", 0, 500, 202}, kLongLease));
  ASSERT_GT(new_epoch, old_epoch);
  Status s = r->MarkStaged("ada/1/1", 0, old_epoch).status();
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("epoch " + std::to_string(new_epoch) + " holds the shard"));
  ASSERT_OK_AND_ASSIGN(std::vector<int> staged, r->StagedShards("ada/1/1"));
  EXPECT_TRUE(staged.empty()) << "a refused mark must write nothing";
  ASSERT_OK(r->MarkStaged("ada/1/1", 0, new_epoch));
  ASSERT_OK_AND_ASSIGN(staged, r->StagedShards("ada/1/1"));
  EXPECT_EQ(staged, (std::vector<int>{0}));
  // A lapsed lease fences marks too.
  ASSERT_OK_AND_ASSIGN(int64_t short_epoch, r->RegisterShard({1, "10.0.0.2:9000", 500, 1000, 103}, kShortLease));
  ASSERT_TRUE(WaitFor([&] { return r->MarkStaged("ada/1/2", 1, short_epoch).status().code() ==
                                            StatusCode::kAborted; }, milliseconds(20000)));
  s = r->MarkStaged("ada/1/2", 1, short_epoch).status();
  EXPECT_THAT(s.message(), HasSubstr("no live lease"));
}

TEST_F(RegistryTest, ReclaimShardRegistersAgainUnlessAnotherProcessHoldsTheLease) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  const ShardInfo info{0, "10.0.0.1:9000", 0, 500, 101};
  ASSERT_OK_AND_ASSIGN(int64_t e1, r->RegisterShard(info, kShortLease));
  ASSERT_TRUE(WaitFor(
      [&] {
        auto shards = r->Shards();
        return shards.ok() && shards->size() == 1 && !(*shards)[0].alive;
      },
      milliseconds(20000)));
  // Lapsed, nobody else: registered again with a larger epoch that heartbeats.
  ASSERT_OK_AND_ASSIGN(int64_t e2, r->ReclaimShard(info, kLongLease, e1));
  EXPECT_GT(e2, e1);
  ASSERT_OK(r->ShardHeartbeat(0, e2));
  EXPECT_EQ(CountEvents(*r, "shard_reregistered"), 1);
  // Another process took the index (a restart elsewhere): the lapsed one may not take it back.
  ASSERT_OK_AND_ASSIGN(int64_t e3, r->RegisterShard({0, "10.0.0.9:9000", 0, 500, 999}, kLongLease));
  Status s = r->ReclaimShard(info, kLongLease, e2).status();
  EXPECT_EQ(s.code(), StatusCode::kAborted) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("epoch " + std::to_string(e3)));
  EXPECT_THAT(s.message(), HasSubstr("pid 999"));
  EXPECT_THAT(s.message(), HasSubstr("10.0.0.9:9000"));
  ASSERT_OK(r->ShardHeartbeat(0, e3));  // the owner is untouched
}

TEST_F(RegistryTest, RefusalsAreCountedAndEmitted) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK(r->RecordRefusal({"u1", "ivy", 0, "too_stale", "staleness 40 > max 32"}));
  ASSERT_OK(r->RecordRefusal({"u2", "ivy", 1, "too_stale", "staleness 41 > max 32"}));
  ASSERT_OK(r->RecordRefusal({"u3", "jon", -1, "bad_layout", ""}));
  ASSERT_OK_AND_ASSIGN(auto counts, r->RefusalCounts());
  EXPECT_EQ(counts["too_stale"], 2);
  EXPECT_EQ(counts["bad_layout"], 1);
  ASSERT_OK_AND_ASSIGN(std::vector<Event> events, r->RecentEvents(10));
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[1].type, "refusal");
  EXPECT_EQ(events[1].data["update_id"], "u2");
  EXPECT_EQ(events[1].data["shard"], 1);
  EXPECT_EQ(events[1].data["detail"], "staleness 41 > max 32");
}

TEST_F(RegistryTest, EventStreamReadsOnFromAnIdAndIsCapped) {
  RegistryOptions o = Options();
  o.events_max_len = 10;
  auto opened = Registry::Connect(o);
  ASSERT_OK(opened);
  Registry& r = **opened;

  ASSERT_OK_AND_ASSIGN(std::string first, r.AddEvent("note", {{"n", 1}}));
  ASSERT_OK(r.AddEvent("note", {{"n", 2}, {"text", "two"}}));
  ASSERT_OK(r.AddEvent("other", {{"n", 3}}));
  ASSERT_OK_AND_ASSIGN(std::vector<Event> all, r.Events("", 100));
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].id, first);
  EXPECT_EQ(all[0].data["n"], 1);
  EXPECT_EQ(all[1].data["text"], "two");
  EXPECT_EQ(all[2].type, "other");
  EXPECT_GT(all[0].ms, 0);

  ASSERT_OK_AND_ASSIGN(std::vector<Event> rest, r.Events(first, 100));
  ASSERT_EQ(rest.size(), 2u);
  EXPECT_EQ(rest[0].data["n"], 2);
  ASSERT_OK_AND_ASSIGN(std::vector<Event> none, r.Events(all[2].id, 100));
  EXPECT_TRUE(none.empty());
  ASSERT_OK_AND_ASSIGN(std::vector<Event> recent, r.RecentEvents(2));
  ASSERT_EQ(recent.size(), 2u);
  EXPECT_EQ(recent[0].data["n"], 2);  // oldest first
  EXPECT_EQ(recent[1].data["n"], 3);
  EXPECT_EQ(r.Events("not-an-id", 1).status().code(), StatusCode::kInvalidArgument);

  // MAXLEN ~ trims whole stream nodes (100 entries by default), never below the cap.
  for (int i = 0; i < 500; ++i) ASSERT_OK(r.AddEvent("flood", {{"i", i}}));
  ASSERT_OK_AND_ASSIGN(std::vector<Event> kept, r.RecentEvents(1000));
  EXPECT_GE(kept.size(), 10u);
  EXPECT_LT(kept.size(), 250u);
  EXPECT_EQ(kept.back().data["i"], 499);
}

// ---- Redis failures ---------------------------------------------------------------------------

TEST_F(RegistryTest, HungRedisTimesOutAsUnavailableAndRecovers) {
  RegistryOptions o = Options();
  o.command_timeout = milliseconds(200);
  auto opened = Registry::Connect(o);
  ASSERT_OK(opened);
  Registry& r = **opened;
  ASSERT_OK(r.GlobalSeq());

  ASSERT_OK(redis_.process().Stop());
  Status s = r.GlobalSeq().status();
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.ToString();
  EXPECT_THAT(s.message(), HasSubstr("no answer within 200 ms"));
  ASSERT_OK(redis_.process().Continue());
  EXPECT_TRUE(WaitFor([&] { return r.GlobalSeq().ok(); }, kDeadline));
}

TEST_F(RegistryTest, ScriptsAreReloadedAfterTheServerForgetsThem) {
  auto r = Open();
  ASSERT_NE(r, nullptr);
  ASSERT_OK_AND_ASSIGN(int64_t epoch, r->Join("kim", {"h", {}}, kLongLease));
  ASSERT_OK(r->Heartbeat("kim", epoch));
  // Flush the script cache behind the registry's back (as a restart or failover would).
  ProcessOptions cli;
  cli.argv = {"redis-cli", "-h",   redis_.host(), "-p", std::to_string(redis_.port()),
              "SCRIPT",    "FLUSH"};
  ASSERT_OK_AND_ASSIGN(ScopedProcess flush, ScopedProcess::Start(cli));
  ASSERT_OK_AND_ASSIGN(testing::ExitStatus exit, flush.Wait(kDeadline));
  ASSERT_TRUE(exit.success()) << exit.ToString();
  ASSERT_OK(r->Heartbeat("kim", epoch));  // NOSCRIPT -> SCRIPT LOAD -> EVALSHA
}

TEST(RegistryAuthTest, PasswordIsRequiredAndChecked) {
  testing::RedisServerOptions so;
  so.password = "s3cret";
  ScopedRedisServer redis(so);
  ASSERT_OK(redis.Start());
  RegistryOptions o;
  o.port = redis.port();
  o.run_id = "auth";

  auto none = Registry::Connect(o);  // no AUTH at connect time; the first command fails
  ASSERT_OK(none);
  EXPECT_EQ((*none)->Ping().code(), StatusCode::kFailedPrecondition);

  o.password = "wrong";
  EXPECT_EQ(Registry::Connect(o).status().code(), StatusCode::kFailedPrecondition);

  o.password = "s3cret";
  ASSERT_OK_AND_ASSIGN(auto r, Registry::Connect(o));
  ASSERT_OK(r->Ping());
  ASSERT_OK(r->Join("c", {"h", {}}, kLongLease));
}

TEST(RegistryRestartTest, CallsFailWhileRedisIsDownAndDataSurvivesARestart) {
  testing::RedisServerOptions so;
  so.persistence = true;
  ScopedRedisServer redis(so);
  ASSERT_OK(redis.Start());
  RegistryOptions o;
  o.port = redis.port();
  o.run_id = "durable";
  o.connect_timeout = milliseconds(500);
  o.command_timeout = milliseconds(1000);
  ASSERT_OK_AND_ASSIGN(auto r, Registry::Connect(o));
  ASSERT_OK(r->InitRun(TestIdentity(2)));
  ASSERT_OK_AND_ASSIGN(int64_t epoch, r->Join("lee", {"h", {"code"}}, kLongLease));
  for (int i = 1; i <= 3; ++i) {
    const std::string id = "lee-" + std::to_string(i);
    ASSERT_OK(r->MarkStaged(id, 0, 0));
    ASSERT_OK(r->MarkStaged(id, 1, 0));
    ASSERT_OK(r->CommitUpdate(id, "lee", epoch, {{"i", i}}, 2));
  }
  ASSERT_OK(r->MarkStaged("lee-4", 0, 0));

  ASSERT_OK(redis.Stop());       // kill -9
  for (int i = 0; i < 3; ++i) {  // the stale connection, then failed reconnects
    EXPECT_EQ(r->GlobalSeq().status().code(), StatusCode::kUnavailable);
    EXPECT_EQ(r->Heartbeat("lee", epoch).code(), StatusCode::kUnavailable);
    EXPECT_EQ(r->CommitUpdate("lee-4", "lee", epoch, {}, 2).status().code(),
              StatusCode::kUnavailable);
  }

  ASSERT_OK(redis.Start());  // same port, same AOF
  ASSERT_OK_AND_ASSIGN(int64_t seq, r->GlobalSeq());
  EXPECT_EQ(seq, 3);
  ASSERT_OK_AND_ASSIGN(RunIdentity run, r->GetRun());
  EXPECT_EQ(run.layout_hash, "layout-aaaa");
  ASSERT_OK_AND_ASSIGN(std::vector<CommittedUpdate> log, r->CommittedAfter(0, 10));
  ASSERT_EQ(log.size(), 3u);
  EXPECT_EQ(log[2].meta["i"], 3);
  ASSERT_OK(r->Heartbeat("lee", epoch));  // the lease survived (60 s)
  ASSERT_OK_AND_ASSIGN(std::vector<int> staged, r->StagedShards("lee-4"));
  EXPECT_EQ(staged, std::vector<int>{0});
  ASSERT_OK(r->MarkStaged("lee-4", 1, 0));
  ASSERT_OK_AND_ASSIGN(int64_t seq4, r->CommitUpdate("lee-4", "lee", epoch, {}, 2));
  EXPECT_EQ(seq4, 4);

  // Restart() while the registry holds a connection: it recovers on its own.
  ASSERT_OK(redis.Restart());
  EXPECT_TRUE(WaitFor([&] { return r->GlobalSeq().ok(); }, kDeadline));
  EXPECT_EQ(*r->GlobalSeq(), 4);
  ASSERT_OK_AND_ASSIGN(std::vector<Member> members, r->Members());
  ASSERT_EQ(members.size(), 1u);
  EXPECT_EQ(members[0].data_domains, std::vector<std::string>{"code"});
}

// ---- the harness: ScopedProcess, WaitFor, ScopedRedisServer ------------------------------------

// The state letter of /proc/<pid>/stat ('R', 'S', 'T', 'Z'...), or '?' when absent.
char ProcState(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  if (!in || !std::getline(in, line)) return '?';
  const size_t paren = line.rfind(')');
  return paren != std::string::npos && paren + 2 < line.size() ? line[paren + 2] : '?';
}

StatusOr<ScopedProcess> StartSh(const std::string& script) {
  ProcessOptions o;
  o.argv = {"/bin/sh", "-c", script};
  return ScopedProcess::Start(o);
}

TEST(ScopedProcessTest, ReportsExitCode) {
  ASSERT_OK_AND_ASSIGN(ScopedProcess p, StartSh("exit 3"));
  ASSERT_OK_AND_ASSIGN(testing::ExitStatus status, p.Wait(kDeadline));
  EXPECT_TRUE(status.exited());
  EXPECT_EQ(status.code, 3);
  EXPECT_FALSE(p.running());
  EXPECT_EQ(p.Signal(SIGTERM).code(), StatusCode::kFailedPrecondition);
}

TEST(ScopedProcessTest, PassesEnvironmentWorkingDirAndLogsOutput) {
  ScopedTempDir dir;
  ProcessOptions o;
  o.argv = {"/bin/sh", "-c", "echo \"value=$FEDPS_TEST_VALUE\"; pwd; echo oops >&2"};
  o.env = {{"FEDPS_TEST_VALUE", "forty-two"}};
  o.working_dir = dir.path();
  o.log_path = dir.File("out.log");
  ASSERT_OK_AND_ASSIGN(ScopedProcess p, ScopedProcess::Start(o));
  ASSERT_OK_AND_ASSIGN(testing::ExitStatus status, p.Wait(kDeadline));
  EXPECT_TRUE(status.success());
  const std::string log = testing::ReadLogTail(o.log_path);
  EXPECT_THAT(log, HasSubstr("value=forty-two"));
  EXPECT_THAT(log, HasSubstr(dir.path()));
  EXPECT_THAT(log, HasSubstr("oops"));
}

TEST(ScopedProcessTest, MissingProgramOrFolderFailsToStart) {
  ProcessOptions o;
  o.argv = {"/nonexistent/fedps-no-such-program"};
  EXPECT_EQ(ScopedProcess::Start(o).status().code(), StatusCode::kNotFound);
  o.argv = {"/bin/true"};
  o.working_dir = "/nonexistent/folder";
  Status s = ScopedProcess::Start(o).status();
  EXPECT_EQ(s.code(), StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("chdir"));
}

TEST(ScopedProcessTest, StopContinueKill) {
  ASSERT_OK_AND_ASSIGN(ScopedProcess p, StartSh("exec sleep 1000"));
  EXPECT_TRUE(p.running());
  ASSERT_OK(p.Stop());
  EXPECT_TRUE(WaitFor([&] { return ProcState(p.pid()) == 'T'; }, kDeadline));
  ASSERT_OK(p.Continue());
  EXPECT_TRUE(WaitFor([&] { return ProcState(p.pid()) == 'S'; }, kDeadline));
  EXPECT_EQ(p.Wait(milliseconds(20)).status().code(), StatusCode::kDeadlineExceeded);
  ASSERT_OK(p.Kill());
  EXPECT_FALSE(p.running());
  ASSERT_TRUE(p.exit_status().has_value());
  EXPECT_EQ(p.exit_status()->signal, SIGKILL);
  EXPECT_TRUE(ProcessGone(p.pid()));
  ASSERT_OK(p.Kill());  // again: nothing to do
}

TEST(ScopedProcessTest, TerminateIsGracefulThenForced) {
  ScopedTempDir dir;
  const std::string ready = dir.File("ready");
  // Each shell says it installed its trap before we signal it.
  ASSERT_OK_AND_ASSIGN(ScopedProcess polite, StartSh("trap 'exit 7' TERM; touch " + ready +
                                                     "1; while :; do sleep 0.01; done"));
  ASSERT_TRUE(WaitFor([&] { return access((ready + "1").c_str(), F_OK) == 0; }, kDeadline));
  ASSERT_OK_AND_ASSIGN(testing::ExitStatus status, polite.Terminate(kDeadline));
  EXPECT_EQ(status.code, 7) << status.ToString();

  ASSERT_OK_AND_ASSIGN(ScopedProcess stubborn,
                       StartSh("trap '' TERM; touch " + ready + "2; while :; do sleep 0.01; done"));
  ASSERT_TRUE(WaitFor([&] { return access((ready + "2").c_str(), F_OK) == 0; }, kDeadline));
  ASSERT_OK_AND_ASSIGN(status, stubborn.Terminate(milliseconds(200)));
  EXPECT_EQ(status.signal, SIGKILL) << status.ToString();

  // A stopped process still gets its SIGTERM.
  ASSERT_OK_AND_ASSIGN(ScopedProcess frozen, StartSh("exec sleep 1000"));
  ASSERT_OK(frozen.Stop());
  ASSERT_OK_AND_ASSIGN(status, frozen.Terminate(kDeadline));
  EXPECT_EQ(status.signal, SIGTERM) << status.ToString();
}

// Reads a pid that another process wrote to `path` (0 until it is there).
pid_t ReadPid(const std::string& path) {
  std::ifstream in(path);
  long pid = 0;
  return in >> pid ? static_cast<pid_t>(pid) : 0;
}

TEST(ScopedProcessTest, DestructorKillsTheChildAndWhatItStarted) {
  ScopedTempDir dir;
  const std::string pid_file = dir.File("grandchild");
  pid_t child = 0;
  pid_t grandchild = 0;
  {
    ASSERT_OK_AND_ASSIGN(ScopedProcess p,
                         StartSh("sleep 1000 & echo $! > " + pid_file + ".tmp && mv " + pid_file +
                                 ".tmp " + pid_file + "; wait"));
    child = p.pid();
    ASSERT_TRUE(WaitFor([&] { return (grandchild = ReadPid(pid_file)) > 0; }, kDeadline));
    EXPECT_FALSE(ProcessGone(grandchild));
  }
  EXPECT_TRUE(ProcessGone(child));
  // The orphan is reaped by init (or a subreaper); until then it is a zombie.
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(grandchild); }, kDeadline));
}

TEST(ScopedProcessTest, ChildDiesWithTheProcessThatStartedIt) {
  ScopedTempDir dir;
  const std::string pid_file = dir.File("child");
  // A middle process starts a child through ScopedProcess and is then SIGKILLed, so no
  // destructor runs; PR_SET_PDEATHSIG must take the child down.
  pid_t middle = ::fork();
  ASSERT_GE(middle, 0);
  if (middle == 0) {
    auto p = StartSh("exec sleep 1000");
    if (!p.ok()) ::_exit(1);
    {
      std::ofstream out(pid_file + ".tmp");
      out << p->pid() << "\n";
    }
    std::rename((pid_file + ".tmp").c_str(), pid_file.c_str());
    while (true) ::pause();
  }
  pid_t child = 0;
  const bool started = WaitFor([&] { return (child = ReadPid(pid_file)) > 0; }, kDeadline);
  ::kill(middle, SIGKILL);
  int status = 0;
  ::waitpid(middle, &status, 0);
  ASSERT_TRUE(started);
  EXPECT_TRUE(WaitFor([&] { return ProcessGone(child); }, kDeadline));
}

TEST(ScopedProcessTest, WaitForChecksTheConditionUntilTheDeadline) {
  int calls = 0;
  EXPECT_TRUE(WaitFor([&] { return ++calls == 3; }, kDeadline, milliseconds(1)));
  EXPECT_EQ(calls, 3);
  const auto start = std::chrono::steady_clock::now();
  EXPECT_FALSE(WaitFor([] { return false; }, milliseconds(50), milliseconds(5)));
  EXPECT_GE(std::chrono::steady_clock::now() - start, milliseconds(50));
  ASSERT_OK_AND_ASSIGN(int port, testing::PickFreePort());
  EXPECT_GT(port, 0);
  EXPECT_LT(port, 65536);
}

TEST(ScopedRedisServerTest, StartsOnItsOwnPortAndRestartsOnTheSame) {
  ScopedRedisServer a;
  ScopedRedisServer b;
  ASSERT_OK(a.Start());
  ASSERT_OK(b.Start());
  EXPECT_NE(a.port(), b.port());
  EXPECT_NE(a.dir(), b.dir());
  EXPECT_EQ(a.Start().code(), StatusCode::kFailedPrecondition);
  const int port = a.port();
  const pid_t old_pid = a.process().pid();
  ASSERT_OK(a.Restart());
  EXPECT_EQ(a.port(), port);
  EXPECT_NE(a.process().pid(), old_pid);
  EXPECT_TRUE(ProcessGone(old_pid));
  ASSERT_OK(a.Stop());
  EXPECT_FALSE(a.running());
  const pid_t b_pid = b.process().pid();
  { ScopedRedisServer never_started; }  // destroying an unstarted server is fine
  EXPECT_FALSE(ProcessGone(b_pid));
}

}  // namespace
}  // namespace fedps
