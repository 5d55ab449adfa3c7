// Synchronous rounds (ps/rounds.h) against a real redis-server: the registry's round
// scripts (a round waits for its updates, closes on a timeout or a lapsed lease, refuses
// late and repeated updates, commits once), and two in-process ShardCores that apply a
// closed round as one outer step on the token-weighted mean of its pseudo-gradients,
// compared with the average computed here by hand.
#include "ps/rounds.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/config.h"
#include "compression/codec.h"
#include "ps/registry.h"
#include "ps/shard_core.h"
#include "tests/testing/process.h"
#include "tests/testing/redis_server.h"
#include "tests/testing/status_assert.h"
#include "tests/testing/temp_dir.h"

namespace fedps {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using namespace std::chrono_literals;

constexpr int kShards = 2;
constexpr int64_t kN = 1000;     // slice length of every shard
constexpr int64_t kFrame = 256;  // -> 4 frames, the last one short
const char* kRun = "rounds-test";
const char* kLayout = "layout-hash-for-tests";

nlohmann::json Record(int64_t base, int64_t tokens) {
  return {{"base_version", base}, {"tokens", tokens}, {"local_steps", 10}};
}

class RoundsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(redis_.Start());
    ropts_.port = redis_.port();
    ropts_.run_id = kRun;
    auto r = Registry::Connect(ropts_);
    ASSERT_OK(r.status());
    registry_ = std::move(r).value();
    RunIdentity id;
    id.model_preset = "test";
    id.layout_hash = kLayout;
    id.tokenizer_sha256 = "none";
    id.codec = "fp32";
    id.num_shards = kShards;
    ASSERT_OK(registry_->InitRun(id).status());
  }

  int64_t Join(const std::string& name, std::chrono::milliseconds lease = 60s) {
    auto e = registry_->Join(name, ClientInfo{}, lease);
    EXPECT_TRUE(e.ok()) << e.status().ToString();
    epochs_[name] = e.ok() ? *e : 0;
    return epochs_[name];
  }

  // Marks `id` staged on every shard (what the shards do after a push) and commits it.
  StatusOr<int64_t> StageAndCommit(const std::string& client, const std::string& id, int64_t base,
                                   int64_t tokens, const RoundOptions& rounds) {
    for (int s = 0; s < kShards; ++s) {
      auto m = registry_->MarkStaged(id, s, 0, Record(base, tokens));
      if (!m.ok()) return m.status();
    }
    return registry_->CommitToRound(id, client, epochs_[client], Record(base, tokens), kShards,
                                    base, rounds);
  }

  // CloseRoundIfDue's seq, 0 when nothing closed (or on an error, which the caller sees as
  // "not closed").
  int64_t ClosedBy(const RoundOptions& rounds) {
    auto seq = registry_->CloseRoundIfDue(rounds);
    return seq.ok() ? *seq : 0;
  }

  testing::ScopedRedisServer redis_;
  testing::ScopedTempDir dir_;
  RegistryOptions ropts_;
  std::unique_ptr<Registry> registry_;
  std::map<std::string, int64_t> epochs_;
};

// ---- the registry's rounds --------------------------------------------------------------

TEST_F(RoundsTest, ARoundWaitsForItsUpdatesAndClosesIntoOneLogEntry) {
  RoundOptions rounds;
  rounds.clients = 2;  // no timeout can pass in this test (10 min)
  Join("alice");
  Join("bob");
  EXPECT_EQ(registry_->CurrentRound().status().code(), StatusCode::kNotFound);
  auto a = StageAndCommit("alice", "alice/1/0", 0, 1000, rounds);
  ASSERT_OK(a.status());
  EXPECT_EQ(*a, 1);  // the version that will include it
  // Waiting for bob: nothing in the log, the round open with one update.
  ASSERT_OK(registry_->CloseRoundIfDue(rounds).status());
  EXPECT_EQ(*registry_->GlobalSeq(), 0);
  auto open = registry_->CurrentRound();
  ASSERT_OK(open.status());
  EXPECT_EQ(open->base_version, 0);
  EXPECT_EQ(open->committed, 1);
  EXPECT_EQ(open->expected, 2);
  EXPECT_TRUE(open->counted);
  EXPECT_GT(open->deadline_ms, 0);
  EXPECT_THAT(open->committed_clients, ElementsAre("alice"));
  // The update is committed already (a restarted client or shard sees it).
  auto looked = registry_->LookupCommit("alice/1/0");
  ASSERT_OK(looked.status());
  EXPECT_EQ(looked->seq, 1);
  // A retry answers the same seq; a second update of alice in the round is refused.
  EXPECT_EQ(*registry_->CommitToRound("alice/1/0", "alice", epochs_["alice"], Record(0, 1000),
                                      kShards, 0, rounds),
            1);
  auto again = StageAndCommit("alice", "alice/1/1", 0, 1000, rounds);
  EXPECT_EQ(again.status().code(), StatusCode::kOutOfRange);
  EXPECT_THAT(again.status().message(), HasSubstr("already has an update in round 0"));

  // Bob's update completes the round: one entry at seq 1 listing both, round 1 opens.
  auto b = StageAndCommit("bob", "bob/2/0", 0, 3000, rounds);
  ASSERT_OK(b.status());
  EXPECT_EQ(*b, 1);
  EXPECT_EQ(*registry_->GlobalSeq(), 1);
  auto log = registry_->CommittedAfter(0, 10);
  ASSERT_OK(log.status());
  ASSERT_EQ(log->size(), 1u);
  const CommittedUpdate& entry = (*log)[0];
  EXPECT_EQ(entry.update_id, "round/0");
  EXPECT_TRUE(IsRoundEntry(entry));
  auto closed = ParseClosedRound(entry);
  ASSERT_OK(closed.status());
  EXPECT_EQ(closed->round, 0);
  EXPECT_EQ(closed->closed_by, "complete");
  EXPECT_TRUE(closed->missing.empty());
  ASSERT_EQ(closed->updates.size(), 2u);
  EXPECT_EQ(closed->updates[0].update_id, "alice/1/0");
  EXPECT_EQ(closed->updates[0].tokens, 1000);
  EXPECT_EQ(closed->updates[1].update_id, "bob/2/0");
  EXPECT_EQ(closed->updates[1].client, "bob");
  EXPECT_EQ(entry.meta["tokens"], 4000);
  auto w = RoundWeights(*closed);
  ASSERT_OK(w.status());
  EXPECT_THAT(*w, ElementsAre(0.25, 0.75));
  auto next = registry_->CurrentRound();
  ASSERT_OK(next.status());
  EXPECT_EQ(next->base_version, 1);
  EXPECT_EQ(next->committed, 0);
  EXPECT_EQ(next->deadline_ms, 0);  // no deadline before its first update
}

// Trimming (docs/registry.md, "Trimming") removes a closed round's entry with the records
// of its updates, which then count as trimmed for their clients: never committed again.
TEST_F(RoundsTest, TrimmingARoundRemovesItsUpdatesAndRefusesThemAgain) {
  RoundOptions rounds;
  rounds.clients = 2;
  Join("alice");
  Join("bob");
  for (int64_t v = 0; v < 3; ++v) {  // rounds 0, 1, 2 -> seqs 1, 2, 3
    const std::string n = std::to_string(v);
    ASSERT_OK(StageAndCommit("alice", "alice/" + std::to_string(epochs_["alice"]) + "/" + n, v, 100,
                             rounds)
                  .status());
    ASSERT_OK(
        StageAndCommit("bob", "bob/" + std::to_string(epochs_["bob"]) + "/" + n, v, 300, rounds)
            .status());
  }
  ASSERT_EQ(*registry_->GlobalSeq(), 3);
  for (int i = 0; i < kShards; ++i) {
    auto e = registry_->RegisterShard({i, "127.0.0.1:1", i * kN, (i + 1) * kN, 1},
                                      std::chrono::hours(1));
    ASSERT_OK(e.status());
    ShardStats st;
    st.oldest_checkpoint_version = 3;
    ASSERT_OK(registry_->ShardHeartbeat(i, *e, &st));
  }
  auto trimmed = registry_->TrimLog(1000);
  ASSERT_OK(trimmed.status());
  EXPECT_EQ(trimmed->trimmed, 2);  // round/0 and round/1; round/2 (seq 3) is kept
  EXPECT_EQ(trimmed->below, 3);
  auto t = registry_->Trimmed();
  ASSERT_OK(t.status());
  EXPECT_EQ(t->tokens, 800);  // two rounds of 100 + 300
  const std::string a1 = "alice/" + std::to_string(epochs_["alice"]) + "/1";
  EXPECT_EQ(registry_->LookupCommit(a1).status().code(), StatusCode::kOutOfRange);
  EXPECT_EQ(registry_->LookupCommit("round/1").status().code(), StatusCode::kNotFound);
  auto kept = registry_->LookupCommit("alice/" + std::to_string(epochs_["alice"]) + "/2");
  ASSERT_OK(kept.status());
  EXPECT_EQ(kept->seq, 3);
  // Committing a trimmed update to the open round is refused before anything else.
  auto again = StageAndCommit("alice", a1, 3, 100, rounds);
  EXPECT_EQ(again.status().code(), StatusCode::kOutOfRange) << again.status().ToString();
  EXPECT_THAT(again.status().message(), HasSubstr("never committed again"));
  // The next update of each client goes on into round 3.
  ASSERT_OK(
      StageAndCommit("alice", "alice/" + std::to_string(epochs_["alice"]) + "/3", 3, 100, rounds)
          .status());
  auto b = StageAndCommit("bob", "bob/" + std::to_string(epochs_["bob"]) + "/3", 3, 300, rounds);
  ASSERT_OK(b.status());
  EXPECT_EQ(*b, 4);
  EXPECT_EQ(*registry_->GlobalSeq(), 4);
}

TEST_F(RoundsTest, ARoundClosesOnItsTimeoutAndRefusesTheLateUpdate) {
  RoundOptions rounds;  // the members live at open: alice and bob
  rounds.timeout = 300ms;
  Join("alice");
  Join("bob");
  ASSERT_OK(StageAndCommit("alice", "alice/1/0", 0, 1000, rounds).status());
  auto open = registry_->CurrentRound();
  ASSERT_OK(open.status());
  EXPECT_FALSE(open->counted);
  EXPECT_EQ(open->expected, 2);
  EXPECT_THAT(open->waiting_for, ElementsAre("bob"));
  // Whoever calls first after the deadline closes it (the shards do, when idle).
  ASSERT_TRUE(testing::WaitFor([&] { return ClosedBy(rounds) == 1; }, 30s, 20ms));
  auto log = registry_->CommittedAfter(0, 10);
  ASSERT_OK(log.status());
  ASSERT_EQ(log->size(), 1u);
  auto closed = ParseClosedRound((*log)[0]);
  ASSERT_OK(closed.status());
  EXPECT_EQ(closed->closed_by, "timeout");
  EXPECT_THAT(closed->missing, ElementsAre("bob"));
  ASSERT_EQ(closed->updates.size(), 1u);
  // Bob's update trained from version 0 comes too late: refused with the reason, counted.
  auto late = StageAndCommit("bob", "bob/2/0", 0, 1000, rounds);
  EXPECT_EQ(late.status().code(), StatusCode::kOutOfRange);
  EXPECT_THAT(late.status().message(), HasSubstr("round 0 closed without it"));
  EXPECT_THAT(late.status().message(), HasSubstr("pull version 1"));
  EXPECT_EQ(registry_->LookupCommit("bob/2/0").status().code(), StatusCode::kNotFound);
  EXPECT_EQ(registry_->RefusalCounts()->at("round_closed"), 1);
  // The federation goes on: both train round 1 from version 1.
  ASSERT_OK(StageAndCommit("bob", "bob/2/1", 1, 1000, rounds).status());
  ASSERT_OK(StageAndCommit("alice", "alice/1/1", 1, 1000, rounds).status());
  EXPECT_EQ(*registry_->GlobalSeq(), 2);
  auto second = registry_->CommittedAfter(1, 10);
  ASSERT_OK(second.status());
  ASSERT_EQ(second->size(), 1u);
  EXPECT_EQ((*second)[0].update_id, "round/1");
  EXPECT_EQ(ParseClosedRound((*second)[0])->closed_by, "complete");
}

TEST_F(RoundsTest, AMemberWhoseLeaseLapsesIsNoLongerWaitedFor) {
  RoundOptions rounds;  // members mode; the 10 min timeout does not pass here
  Join("alice");
  Join("carol", 300ms);  // never heartbeats
  ASSERT_OK(StageAndCommit("alice", "alice/1/0", 0, 1000, rounds).status());
  ASSERT_TRUE(testing::WaitFor([&] { return ClosedBy(rounds) == 1; }, 30s, 20ms));
  auto log = registry_->CommittedAfter(0, 10);
  ASSERT_OK(log.status());
  ASSERT_EQ(log->size(), 1u);
  auto closed = ParseClosedRound((*log)[0]);
  ASSERT_OK(closed.status());
  EXPECT_EQ(closed->closed_by, "complete");
  EXPECT_THAT(closed->missing, ElementsAre("carol"));
  // Round 1 opened with the live members only.
  auto next = registry_->CurrentRound();
  ASSERT_OK(next.status());
  EXPECT_EQ(next->expected, 1);
}

TEST_F(RoundsTest, CommitsAreCheckedLikeAsyncCommits) {
  RoundOptions rounds;
  rounds.clients = 2;
  Join("alice");
  // Not staged on every shard.
  ASSERT_OK(registry_->MarkStaged("alice/1/0", 0, 0, Record(0, 1000)).status());
  auto missing = registry_->CommitToRound("alice/1/0", "alice", epochs_["alice"], Record(0, 1000),
                                          kShards, 0, rounds);
  EXPECT_EQ(missing.status().code(), StatusCode::kFailedPrecondition);
  EXPECT_THAT(missing.status().message(), HasSubstr("not staged on shard(s) 1"));
  // Staged with another base version than the commit claims.
  ASSERT_OK(registry_->MarkStaged("alice/1/0", 1, 0, Record(0, 1000)).status());
  auto base = registry_->CommitToRound("alice/1/0", "alice", epochs_["alice"], Record(0, 1000),
                                       kShards, 3, rounds);
  EXPECT_EQ(base.status().code(), StatusCode::kInvalidArgument);  // ahead of the open round 0
  // A fenced epoch.
  auto fenced = registry_->CommitToRound("alice/1/0", "alice", epochs_["alice"] + 100,
                                         Record(0, 1000), kShards, 0, rounds);
  EXPECT_EQ(fenced.status().code(), StatusCode::kAborted);
  // Round entries' ids are reserved.
  EXPECT_EQ(
      registry_
          ->CommitToRound("round/0", "alice", epochs_["alice"], Record(0, 1), kShards, 0, rounds)
          .status()
          .code(),
      StatusCode::kInvalidArgument);
  EXPECT_EQ(*registry_->CommitToRound("alice/1/0", "alice", epochs_["alice"], Record(0, 1000),
                                      kShards, 0, rounds),
            1);
}

// ---- the options ------------------------------------------------------------------------

TEST(RoundOptionsTest, SyncModeIsPartOfTheRunIdentityAndItsOptionsAreChecked) {
  auto sync = ParseConfig(
      "[ps]\nmode = \"sync\"\nround_clients = 3\nround_timeout_ms = 5000\n"
      "[client]\npipeline_depth = 0\n",
      "sync.toml");
  ASSERT_OK(sync.status());
  const nlohmann::json apply = PsApplyConfig(sync->ps);
  EXPECT_EQ(apply["mode"], "sync");
  EXPECT_EQ(apply["round_clients"], 3);
  EXPECT_EQ(apply["round_timeout_ms"], 5000);
  const RoundOptions rounds = RoundOptionsFromConfig(sync->ps);
  EXPECT_EQ(rounds.clients, 3);
  EXPECT_EQ(rounds.timeout, 5000ms);
  EXPECT_EQ(ParseConfig("", "default.toml")->ps.mode, "async");
  auto error = [](const std::string& toml) {
    return ParseConfig(toml, "bad.toml").status().message();
  };
  EXPECT_THAT(error("[ps]\nmode = \"rounds\"\n"), HasSubstr("ps.mode must be async or sync"));
  EXPECT_THAT(error("[ps]\nmode = \"sync\"\n"),
              HasSubstr("client.pipeline_depth must be 0 with ps.mode = sync"));
  EXPECT_THAT(error("[ps]\nmode = \"sync\"\nbuffer_size = 2\n[client]\npipeline_depth = 0\n"),
              HasSubstr("ps.buffer_size must be 1"));
  EXPECT_THAT(error("[ps]\nround_clients = -1\n"), HasSubstr("ps.round_clients"));
  EXPECT_THAT(error("[ps]\nround_timeout_ms = 5\n"),
              HasSubstr("ps.round_timeout_ms must be >= 100"));
}

// ---- shards apply a round ---------------------------------------------------------------

std::vector<float> InitSlice(int shard) {
  std::vector<float> v(kN);
  for (int64_t i = 0; i < kN; ++i)
    v[i] = 0.01f * static_cast<float>((i * 7 + shard * 13) % 101) - 0.5f;
  return v;
}

std::vector<float> Delta(int k, int shard) {
  std::vector<float> v(kN);
  for (int64_t i = 0; i < kN; ++i)
    v[i] = 0.001f * static_cast<float>((i * (k + 3) + shard) % 17) - 0.008f;
  return v;
}

class RoundShardsTest : public RoundsTest {
 protected:
  void SetUp() override {
    RoundsTest::SetUp();
    if (HasFatalFailure()) return;
    CodecOptions co;
    co.kind = CodecKind::kFp32;
    co.chunk_elements = kFrame;
    auto codec = Codec::Create(co);
    ASSERT_OK(codec.status());
    codec_ = std::move(codec).value();
  }

  ShardCoreOptions Options(int shard, const std::string& optimizer, int64_t round_clients,
                           int64_t timeout_ms) {
    ShardCoreOptions o;
    o.run_id = kRun;
    o.layout_hash = kLayout;
    o.shard_index = shard;
    o.num_shards = kShards;
    o.slice_begin = shard * kN;
    o.slice_elements = kN;
    o.dir = dir_.File("shard-" + std::to_string(shard));
    o.ps.frame_elements = kFrame;
    o.ps.mode = "sync";
    o.ps.round_clients = round_clients;
    o.ps.round_timeout_ms = timeout_ms;
    o.ps.optimizer = optimizer;
    o.ps.outer_lr = optimizer == "sgd" ? 1.0 : 0.7;
    o.ps.momentum = 0.9;
    o.ps.checkpoint_every = 0;
    o.registry = ropts_;
    o.poll_ms = 20;
    o.init_slice = [shard]() -> StatusOr<std::vector<float>> { return InitSlice(shard); };
    return o;
  }

  void StartCores(const std::string& optimizer, int64_t round_clients, int64_t timeout_ms) {
    for (int s = 0; s < kShards; ++s) {
      auto core = ShardCore::Create(Options(s, optimizer, round_clients, timeout_ms));
      ASSERT_OK(core.status());
      ASSERT_OK((*core)->Start());
      // Not in the directory (epoch 0): stage marks are not fenced (ps/registry.h).
      ASSERT_TRUE(testing::WaitFor(
          [&] { return (*core)->GetStatus().state == ShardState::kServing; }, 10s));
      cores_[s] = std::move(core).value();
    }
  }

  // Pushes `delta(k, shard)` as update `id` of `client` to both shards (it is staged).
  void PushUpdate(const std::string& client, const std::string& id, int64_t base, int64_t tokens,
                  int k) {
    for (int s = 0; s < kShards; ++s) {
      auto frames = codec_->Encode(std::span<const float>(Delta(k, s)));
      ASSERT_OK(frames.status());
      PushResult r;
      for (size_t f = 0; f < frames->size(); ++f) {
        PushArgs a;
        a.header = CoreHeader{kRun, kLayout, s, 0, client};
        a.update_id = id;
        a.client_id = client;
        a.client_epoch = epochs_[client];
        a.base_version = base;
        a.tokens = tokens;
        a.local_steps = 10;
        a.codec = "fp32";
        a.frame_index = static_cast<int64_t>(f);
        a.total_frames = static_cast<int64_t>(frames->size());
        a.frame_elements = kFrame;
        a.frame = (*frames)[f];
        CoreError e = cores_[s]->Push(a, &r);
        ASSERT_TRUE(e.ok()) << e.message;
      }
      ASSERT_EQ(r.state, UpdateState::kStaged);
    }
  }

  StatusOr<int64_t> Commit(const std::string& client, const std::string& id, int64_t base,
                           int64_t tokens, int64_t round_clients, int64_t timeout_ms) {
    RoundOptions rounds;
    rounds.clients = round_clients;
    rounds.timeout = std::chrono::milliseconds(timeout_ms);
    return registry_->CommitToRound(id, client, epochs_[client], Record(base, tokens), kShards,
                                    base, rounds);
  }

  // What a failed wait shows: the registry's round and log head, each shard's state.
  std::string Diagnose() {
    std::string out =
        "global seq " + std::to_string(registry_->GlobalSeq().ok() ? *registry_->GlobalSeq() : -1);
    auto r = registry_->CurrentRound();
    out += r.ok() ? "; open round " + std::to_string(r->base_version) + " (" +
                        std::to_string(r->committed) + "/" + std::to_string(r->expected) +
                        ", deadline in " + std::to_string(r->deadline_ms - r->now_ms) + " ms)"
                  : "; " + r.status().ToString();
    for (int s = 0; s < kShards; ++s) {
      if (!cores_[s]) continue;
      CoreStatus st = cores_[s]->GetStatus();
      out += "; shard " + std::to_string(s) + " " + ShardStateName(st.state) + " at version " +
             std::to_string(st.version) +
             (st.halt_message.empty() ? "" : " (" + st.halt_message + ")");
    }
    return out;
  }

  std::unique_ptr<Codec> codec_;
  std::unique_ptr<ShardCore> cores_[kShards];
};

TEST_F(RoundShardsTest, ARoundIsOneSgdStepOnTheTokenWeightedMean) {
  StartCores("sgd", /*round_clients=*/2, /*timeout_ms=*/600000);
  if (HasFatalFailure()) return;
  Join("alice");
  Join("bob");
  PushUpdate("alice", "alice/1/0", 0, 1000, 1);
  PushUpdate("bob", "bob/2/0", 0, 3000, 2);
  ASSERT_OK(Commit("alice", "alice/1/0", 0, 1000, 2, 600000).status());
  // The round waits for bob: the shards stay at version 0 (a push answer says committed).
  EXPECT_EQ(cores_[0]->GetStatus().version, 0);
  ASSERT_OK(Commit("bob", "bob/2/0", 0, 3000, 2, 600000).status());
  for (int s = 0; s < kShards; ++s) {
    ASSERT_TRUE(cores_[s]->WaitForVersion(1, 10000)) << Diagnose();
    auto log = cores_[s]->AppliedLog();
    ASSERT_EQ(log.size(), 2u);
    EXPECT_EQ(log[0].update_id, "alice/1/0");
    EXPECT_EQ(log[1].update_id, "bob/2/0");
    EXPECT_EQ(log[0].seq, 1);
    EXPECT_EQ(log[1].seq, 1);
    EXPECT_DOUBLE_EQ(log[0].weight, 0.25);
    EXPECT_DOUBLE_EQ(log[1].weight, 0.75);
    EXPECT_EQ(cores_[s]->GetStatus().optimizer_steps, 1);
    EXPECT_EQ(cores_[s]->GetStatus().applied_updates, 2);
    auto [version, slice] = cores_[s]->CurrentSlice();
    EXPECT_EQ(version, 1);
    const auto x = InitSlice(s), da = Delta(1, s), db = Delta(2, s);
    for (int64_t i = 0; i < kN; ++i) {
      // SGD, lr 1: x - (1000 * da + 3000 * db) / 4000.
      const double want = double(x[i]) - (1000.0 * da[i] + 3000.0 * db[i]) / 4000.0;
      ASSERT_NEAR(slice[i], want, 1e-6) << "shard " << s << " element " << i;
    }
  }
}

TEST_F(RoundShardsTest, ATimedOutRoundIsAppliedWithoutTheLateClientAndTheNextRoundGoesOn) {
  // Nesterov (lr 0.7, momentum 0.9): the first step is x - 0.7 * (g + 0.9 * g).
  // The timeout counts from a round's first commit: round 1's two commits below come one
  // right after the other.
  StartCores("nesterov", /*round_clients=*/0, /*timeout_ms=*/2000);
  if (HasFatalFailure()) return;
  Join("alice");
  Join("bob");
  PushUpdate("alice", "alice/1/0", 0, 1000, 1);
  ASSERT_OK(Commit("alice", "alice/1/0", 0, 1000, 0, 2000).status());
  // Bob does not commit: the shards' apply threads close the round on its timeout.
  for (int s = 0; s < kShards; ++s) ASSERT_TRUE(cores_[s]->WaitForVersion(1, 30000)) << Diagnose();
  std::vector<std::vector<float>> v1(kShards);
  for (int s = 0; s < kShards; ++s) {
    auto [version, slice] = cores_[s]->CurrentSlice();
    EXPECT_EQ(version, 1);
    const auto x = InitSlice(s), da = Delta(1, s);
    for (int64_t i = 0; i < kN; ++i) {
      ASSERT_NEAR(slice[i], double(x[i]) - 0.7 * 1.9 * da[i], 1e-6)
          << "shard " << s << " element " << i;
    }
    v1[s] = slice;
    EXPECT_EQ(cores_[s]->GetStatus().applied_updates, 1);
  }
  // Bob's late update (trained from version 0) is refused; bob pulls version 1 and goes on.
  PushUpdate("bob", "bob/2/0", 0, 1000, 2);
  auto late = Commit("bob", "bob/2/0", 0, 1000, 0, 2000);
  EXPECT_EQ(late.status().code(), StatusCode::kOutOfRange) << late.status().ToString();
  PushUpdate("alice", "alice/1/1", 1, 1000, 3);
  PushUpdate("bob", "bob/2/1", 1, 3000, 4);
  ASSERT_OK(Commit("bob", "bob/2/1", 1, 3000, 0, 2000).status());
  ASSERT_OK(Commit("alice", "alice/1/1", 1, 1000, 0, 2000).status());
  for (int s = 0; s < kShards; ++s) {
    ASSERT_TRUE(cores_[s]->WaitForVersion(2, 30000)) << Diagnose();
    auto [version, slice] = cores_[s]->CurrentSlice();
    EXPECT_EQ(version, 2);
    const auto da = Delta(1, s), d3 = Delta(3, s), d4 = Delta(4, s);
    for (int64_t i = 0; i < kN; ++i) {
      // m1 = g1; m2 = 0.9 m1 + g2; x2 = x1 - 0.7 (g2 + 0.9 m2), g2 the round's token mean.
      const double g2 = (1000.0 * d3[i] + 3000.0 * d4[i]) / 4000.0;
      const double m2 = 0.9 * da[i] + g2;
      ASSERT_NEAR(slice[i], double(v1[s][i]) - 0.7 * (g2 + 0.9 * m2), 1e-6)
          << "shard " << s << " element " << i;
    }
    EXPECT_EQ(cores_[s]->GetStatus().optimizer_steps, 2);
  }
}

TEST_F(RoundShardsTest, ARestartedShardReplaysARoundToTheSameSlice) {
  StartCores("sgd", /*round_clients=*/2, /*timeout_ms=*/600000);
  if (HasFatalFailure()) return;
  Join("alice");
  Join("bob");
  PushUpdate("alice", "alice/1/0", 0, 1000, 1);
  PushUpdate("bob", "bob/2/0", 0, 2000, 2);
  ASSERT_OK(Commit("alice", "alice/1/0", 0, 1000, 2, 600000).status());
  ASSERT_OK(Commit("bob", "bob/2/0", 0, 2000, 2, 600000).status());
  ASSERT_TRUE(cores_[1]->WaitForVersion(1, 10000)) << Diagnose();
  const auto before = cores_[1]->CurrentSlice();
  // Shard 1 stops without a checkpoint (its newest is version 0) and starts again: it
  // replays round 0 from the log and its staged updates, to the same bits.
  cores_[1]->Stop();
  cores_[1].reset();
  auto core = ShardCore::Create(Options(1, "sgd", 2, 600000));
  ASSERT_OK(core.status());
  ASSERT_OK((*core)->Start());
  ASSERT_TRUE((*core)->WaitForVersion(1, 10000));
  ASSERT_TRUE(
      testing::WaitFor([&] { return (*core)->GetStatus().state == ShardState::kServing; }, 10s));
  EXPECT_EQ((*core)->CurrentSlice(), before);
  auto log = (*core)->AppliedLog();
  ASSERT_EQ(log.size(), 2u);
  // A push of an applied round member is answered APPLIED with the round's seq.
  auto frames = codec_->Encode(std::span<const float>(Delta(1, 1)));
  ASSERT_OK(frames.status());
  PushArgs a;
  a.header = CoreHeader{kRun, kLayout, 1, 0, "alice"};
  a.update_id = "alice/1/0";
  a.client_id = "alice";
  a.client_epoch = epochs_["alice"];
  a.tokens = 1000;
  a.local_steps = 10;
  a.codec = "fp32";
  a.total_frames = static_cast<int64_t>(frames->size());
  a.frame_elements = kFrame;
  a.frame = (*frames)[0];
  PushResult r;
  CoreError e = (*core)->Push(a, &r);
  ASSERT_TRUE(e.ok()) << e.message;
  EXPECT_EQ(r.state, UpdateState::kApplied);
  EXPECT_EQ(r.seq.value_or(0), 1);
}

}  // namespace
}  // namespace fedps
