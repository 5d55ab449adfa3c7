// ShardCore in-process against a real redis-server: push idempotency and staging,
// commit -> apply in seq order on two shards (SGD lr 1 = the average), pull snapshots
// across frames while updates apply, staleness refusals and deterministic skips,
// recovery from checkpoint + staged log, and a corrupt staged slice halting the shard.
#include "tests/ps/shard_core_fixture.h"

#include <fstream>
#include <future>

namespace fedps {
namespace {

using namespace shard_core_testing;
using ::testing::HasSubstr;

TEST_F(ShardCoreTest, PushIsIdempotentAndStagesDurablyBeforeTheStageRecord) {
  auto core = StartCore(Options(0));
  ASSERT_TRUE(core);
  auto frames = Frames(Delta(1, 0));
  ASSERT_EQ(frames.size(), 4u);
  const std::string id = "alice/1/1";
  PushResult r;
  // Out of order, with duplicates.
  ASSERT_CORE_OK(core->Push(Push(0, id, 0, 2, frames[2]), &r));
  EXPECT_EQ(r.state, UpdateState::kReceiving);
  EXPECT_EQ(r.frames_received, 1);
  ASSERT_CORE_OK(core->Push(Push(0, id, 0, 2, frames[2]), &r));
  EXPECT_EQ(r.frames_received, 1);
  // Same key, other bytes: refused.
  auto other = Frames(Delta(2, 0));
  CoreError e = core->Push(Push(0, id, 0, 2, other[2]), &r);
  EXPECT_EQ(e.code, ShardErrorCode::kBadRequest);
  // Other scalars for the same update: refused.
  PushArgs wrong = Push(0, id, 0, 0, frames[0]);
  wrong.tokens = 5;
  EXPECT_EQ(core->Push(wrong, &r).code, ShardErrorCode::kBadRequest);
  r = PushResult();
  ASSERT_CORE_OK(core->Push(Push(0, id, 0, 3, frames[3]), &r));
  ASSERT_TRUE(r.missing_frames.has_value());
  EXPECT_THAT(*r.missing_frames, ::testing::ElementsAre(0, 1));
  ASSERT_CORE_OK(core->Push(Push(0, id, 0, 0, frames[0]), &r));
  // Nothing is staged, in Redis or under its name, before the last frame; the frames
  // received are on disk already (one temporary file), not held in memory.
  EXPECT_FALSE(Env::Default()->Exists(core->StagedPath(id)));
  int64_t written = 0;
  EXPECT_EQ(FilesBeingWritten(*core, &written).size(), 1u);
  EXPECT_GE(written, static_cast<int64_t>(frames[0].size() + frames[2].size() + frames[3].size()));
  auto marks = registry_->StagedShards(id);
  ASSERT_OK(marks.status());
  EXPECT_TRUE(marks->empty());
  ASSERT_CORE_OK(core->Push(Push(0, id, 0, 1, frames[1]), &r));
  EXPECT_EQ(r.state, UpdateState::kStaged);
  EXPECT_EQ(r.frames_received, 4);
  EXPECT_TRUE(r.stage_ttl_ms.has_value());
  EXPECT_TRUE(Env::Default()->Exists(core->StagedPath(id)));
  EXPECT_TRUE(FilesBeingWritten(*core).empty());
  marks = registry_->StagedShards(id);
  ASSERT_OK(marks.status());
  EXPECT_THAT(*marks, ::testing::ElementsAre(0));
  // A whole duplicate update: every frame answers STAGED, nothing changes.
  for (size_t i = 0; i < frames.size(); ++i) {
    ASSERT_CORE_OK(core->Push(Push(0, id, 0, static_cast<int64_t>(i), frames[i]), &r));
    EXPECT_EQ(r.state, UpdateState::kStaged);
  }
  EXPECT_EQ(core->GetStatus().staged_updates, 1);
  EXPECT_EQ(core->GetStatus().receiving_updates, 0);
  // Bad layouts.
  PushArgs bad = Push(0, "alice/1/9", 0, 0, frames[0]);
  bad.frame_elements = 100;
  EXPECT_EQ(core->Push(bad, &r).code, ShardErrorCode::kBadRequest);
  bad = Push(0, "alice/1/9", 0, 4, frames[0]);
  EXPECT_EQ(core->Push(bad, &r).code, ShardErrorCode::kBadRequest);
  bad = Push(0, "alice/1/9", 0, 1, frames[0]);  // frame 0's bytes as frame 1
  EXPECT_EQ(core->Push(bad, &r).code, ShardErrorCode::kBadRequest);
  std::string corrupt = frames[1];
  corrupt[100] ^= 0x40;
  EXPECT_EQ(core->Push(Push(0, "alice/1/9", 0, 1, corrupt), &r).code, ShardErrorCode::kDataLoss);
  // NaN or infinity: the frame that holds it is refused on arrival, and with it the update
  // (its other frames are kept until the receive timeout, never staged).
  for (size_t at : {size_t{5}, size_t{kN - 1}}) {
    std::vector<float> nan = Delta(3, 0);
    nan[at] = at == 5 ? std::nanf("") : -std::numeric_limits<float>::infinity();
    const std::string bad_id = "alice/1/1" + std::to_string(at);
    auto nan_frames = Frames(nan);
    const int64_t holder = static_cast<int64_t>(at) / kFrame;
    for (int64_t i = 0; i < static_cast<int64_t>(nan_frames.size()); ++i) {
      CoreError ne = core->Push(Push(0, bad_id, 0, i, nan_frames[static_cast<size_t>(i)]), &r);
      if (i == holder) {
        EXPECT_EQ(ne.code, ShardErrorCode::kBadRequest);
        EXPECT_THAT(ne.message, HasSubstr("NaN or infinite"));
      } else {
        EXPECT_TRUE(ne.ok()) << ne.message;
      }
    }
    EXPECT_FALSE(Env::Default()->Exists(core->StagedPath(bad_id)));
  }
  // Identity.
  PushArgs foreign = Push(0, id, 0, 0, frames[0]);
  foreign.header.run_id = "other";
  CoreError fe = core->Push(foreign, &r);
  EXPECT_EQ(fe.code, ShardErrorCode::kIdentityMismatch);
  EXPECT_THAT(fe.message, HasSubstr("run_id"));
  foreign = Push(0, id, 0, 0, frames[0]);
  foreign.header.shard_epoch = core->GetStatus().epoch + 7;
  fe = core->Push(foreign, &r);
  EXPECT_EQ(fe.code, ShardErrorCode::kFenced);
  EXPECT_EQ(fe.epoch.value_or(-1), core->GetStatus().epoch);
}

TEST_F(ShardCoreTest, TwoShardsApplyCommitsInSeqOrderToTheAverage) {
  auto o0 = Options(0), o1 = Options(1);
  o0.ps.buffer_size = o1.ps.buffer_size = 2;  // FedBuff of 2 with SGD lr 1: the average
  auto c0 = StartCore(o0);
  auto c1 = StartCore(o1);
  ASSERT_TRUE(c0 && c1);
  EXPECT_EQ(StageAndCommit({c0.get(), c1.get()}, 1, 0), 1);
  EXPECT_EQ(StageAndCommit({c0.get(), c1.get()}, 2, 0), 2);
  for (auto* c : {c0.get(), c1.get()}) {
    ASSERT_TRUE(c->WaitForVersion(2, 10000));
    auto log = c->AppliedLog();
    ASSERT_EQ(log.size(), 2u);
    EXPECT_EQ(log[0].seq, 1);
    EXPECT_EQ(log[0].update_id, "alice/1/1");
    EXPECT_EQ(log[1].seq, 2);
    EXPECT_EQ(log[1].update_id, "alice/1/2");
    EXPECT_FALSE(log[0].skipped || log[1].skipped);
    EXPECT_EQ(c->GetStatus().optimizer_steps, 1);
  }
  for (int s = 0; s < kShards; ++s) {
    ShardCore& c = s == 0 ? *c0 : *c1;
    auto [version, slice] = c.CurrentSlice();
    EXPECT_EQ(version, 2);
    auto x = InitSlice(s), d1 = Delta(1, s), d2 = Delta(2, s);
    for (int64_t i = 0; i < kN; ++i) {
      // The average of the two trained models x - d1 and x - d2.
      float want = 0.5f * ((x[i] - d1[i]) + (x[i] - d2[i]));
      ASSERT_NEAR(slice[i], want, 1e-6f) << "shard " << s << " element " << i;
    }
  }
  // Push answers for applied updates carry their seq.
  PushResult r;
  auto frames = Frames(Delta(1, 0));
  ASSERT_CORE_OK(c0->Push(Push(0, "alice/1/1", 0, 0, frames[0]), &r));
  EXPECT_EQ(r.state, UpdateState::kApplied);
  EXPECT_EQ(r.seq.value_or(0), 1);
  // commit_notify for a known update is fine; for an unknown future one NOT_STAGED.
  ASSERT_CORE_OK(c0->CommitNotify(Header(0), "alice/1/1", 1));
  EXPECT_EQ(c0->CommitNotify(Header(0), "nobody/1/1", 9).code, ShardErrorCode::kNotStaged);
}

TEST_F(ShardCoreTest, PullFramesComeFromOneSnapshotWhileUpdatesApply) {
  auto c0 = StartCore(Options(0));
  auto c1 = StartCore(Options(1));
  ASSERT_TRUE(c0 && c1);
  // Pin version 0 with frame 0.
  PullArgs a;
  a.header = Header(0);
  a.codec = "fp32";
  a.frame_index = 0;
  PullResult first;
  ASSERT_CORE_OK(c0->Pull(a, &first));
  EXPECT_EQ(first.version, 0);
  EXPECT_EQ(first.total_frames, 4);
  EXPECT_EQ(first.slice_elements, kN);
  // Two updates apply meanwhile.
  StageAndCommit({c0.get(), c1.get()}, 1, 0);
  StageAndCommit({c0.get(), c1.get()}, 2, 1);
  ASSERT_TRUE(c0->WaitForVersion(2, 10000));
  // The rest of the pull still sees version 0, bit for bit.
  int64_t v = 0;
  std::vector<float> pulled = PullAll(*c0, 0, &v, /*pin=*/0);
  EXPECT_EQ(pulled, InitSlice(0));
  // A fresh pull sees version 2 = x - d1 - d2 (SGD lr 1, B = 1, constant weights).
  std::vector<float> now = PullAll(*c0, 0, &v);
  EXPECT_EQ(v, 2);
  auto x = InitSlice(0), d1 = Delta(1, 0), d2 = Delta(2, 0);
  for (int64_t i = 0; i < kN; ++i) ASSERT_FLOAT_EQ(now[i], (x[i] - d1[i]) - d2[i]);
  // A version never kept: SNAPSHOT_EXPIRED.
  a.frame_index = 1;
  a.version = 1;
  PullResult r;
  CoreError e = c0->Pull(a, &r);
  EXPECT_EQ(e.code, ShardErrorCode::kSnapshotExpired);
  EXPECT_EQ(e.version.value_or(-1), 2);
  // min_version waits for a commit.
  PullArgs w;
  w.header = Header(0);
  w.codec = "bf16";
  w.min_version = 3;
  w.wait_ms = 10000;
  std::thread committer([&] { StageAndCommit({c0.get(), c1.get()}, 3, 2); });
  ASSERT_CORE_OK(c0->Pull(w, &r));
  EXPECT_GE(r.version, 3);
  committer.join();
  w.min_version = 10;
  w.wait_ms = 50;
  EXPECT_EQ(c0->Pull(w, &r).code, ShardErrorCode::kUnavailable);
}

TEST_F(ShardCoreTest, StalenessRefusedAtPushAndSkippedIdenticallyAtApply) {
  auto o0 = Options(0), o1 = Options(1);
  o0.ps.max_staleness = o1.ps.max_staleness = 1;
  auto c0 = StartCore(o0);
  auto c1 = StartCore(o1);
  ASSERT_TRUE(c0 && c1);
  // u2 is staged at base 0 while the shards are at version 0 (staleness 0) ...
  for (int s = 0; s < kShards; ++s) {
    PushResult r;
    ASSERT_CORE_OK(PushAll(s == 0 ? *c0 : *c1, s, "alice/1/2", 0, Delta(2, s), &r));
  }
  // ... then two other updates commit first, so at its turn (version 2) its staleness is 2.
  StageAndCommit({c0.get(), c1.get()}, 1, 0);
  ASSERT_TRUE(c0->WaitForVersion(1, 10000) && c1->WaitForVersion(1, 10000));
  StageAndCommit({c0.get(), c1.get()}, 3, 1);
  auto seq = Commit("alice/1/2", 0);  // the registry is not told the limit here
  ASSERT_OK(seq.status());
  EXPECT_EQ(*seq, 3);
  for (auto* c : {c0.get(), c1.get()}) {
    ASSERT_TRUE(c->WaitForVersion(3, 10000));
    auto log = c->AppliedLog();
    ASSERT_EQ(log.size(), 3u);
    EXPECT_FALSE(log[0].skipped);
    EXPECT_FALSE(log[1].skipped);
    EXPECT_TRUE(log[2].skipped);
    EXPECT_EQ(c->GetStatus().skipped_updates, 1);
  }
  // At push: version 3, base 1 -> staleness 2 > 1.
  PushResult r;
  CoreError e = PushAll(*c0, 0, "alice/1/4", 1, Delta(4, 0), &r);
  EXPECT_EQ(e.code, ShardErrorCode::kStaleRefused);
  EXPECT_THAT(e.message, HasSubstr("staleness 2 > max 1"));
  EXPECT_EQ(e.version.value_or(-1), 3);
  // A base version the shard never reached.
  EXPECT_EQ(PushAll(*c0, 0, "alice/1/5", 4, Delta(5, 0), &r).code, ShardErrorCode::kBadRequest);
  // The skipped update answers SKIPPED with its seq.
  auto frames = Frames(Delta(2, 0));
  ASSERT_CORE_OK(c0->Push(Push(0, "alice/1/2", 0, 0, frames[0]), &r));
  EXPECT_EQ(r.state, UpdateState::kSkipped);
  EXPECT_EQ(r.seq.value_or(0), 3);
}

TEST_F(ShardCoreTest, RecoversFromCheckpointAndStagedLogWithoutLosingOrRepeating) {
  auto o0 = Options(0), o1 = Options(1);
  o0.ps.checkpoint_every = o1.ps.checkpoint_every = 2;
  o0.ps.optimizer = o1.ps.optimizer = "nesterov";  // stateful: the momentum must survive
  auto c0 = StartCore(o0);
  auto c1 = StartCore(o1);
  ASSERT_TRUE(c0 && c1);
  for (int k = 1; k <= 3; ++k) StageAndCommit({c0.get(), c1.get()}, k, k - 1);
  ASSERT_TRUE(c0->WaitForVersion(3, 10000) && c1->WaitForVersion(3, 10000));
  // Written in the background: wait for it.
  EXPECT_TRUE(testing::WaitFor([&] { return c0->GetStatus().checkpoint_version == 2; },
                               std::chrono::seconds(10)));
  // Two more staged; shard 0 "crashes" (no drain, no checkpoint) before they commit.
  for (int k = 4; k <= 5; ++k) {
    for (int s = 0; s < kShards; ++s) {
      PushResult r;
      ASSERT_CORE_OK(
          PushAll(s == 0 ? *c0 : *c1, s, "alice/1/" + std::to_string(k), 3, Delta(k, s), &r));
    }
  }
  c0->Stop();
  c0.reset();
  ASSERT_OK(Commit("alice/1/4", 3).status());
  ASSERT_OK(Commit("alice/1/5", 3).status());
  ASSERT_TRUE(c1->WaitForVersion(5, 10000));

  auto again = StartCore(o0);
  ASSERT_TRUE(again);
  ASSERT_TRUE(again->WaitForVersion(5, 10000));
  auto log = again->AppliedLog();
  ASSERT_EQ(log.size(), 3u);  // replayed 3 (after checkpoint 2), then 4 and 5
  EXPECT_EQ(log[0].seq, 3);
  EXPECT_EQ(log[1].seq, 4);
  EXPECT_EQ(log[2].seq, 5);
  // The same bits as an optimizer that saw updates 1..5 once each, never stopping.
  auto opt = OuterOptimizer::Create({.name = "nesterov", .lr = 1.0}, kN);
  ASSERT_OK(opt.status());
  std::vector<float> x = InitSlice(0);
  for (int k = 1; k <= 5; ++k) {
    auto d = Delta(k, 0);
    ASSERT_OK((*opt)->Apply(std::span<float>(x), std::span<const float>(d), 1.0).status());
  }
  auto [v, slice] = again->CurrentSlice();
  EXPECT_EQ(v, 5);
  EXPECT_EQ(slice, x);  // bit for bit
  // And shard 1, which never stopped, matches its own reference too.
  auto opt1 = OuterOptimizer::Create({.name = "nesterov", .lr = 1.0}, kN);
  ASSERT_OK(opt1.status());
  std::vector<float> x1 = InitSlice(1);
  for (int k = 1; k <= 5; ++k) {
    auto d = Delta(k, 1);
    ASSERT_OK((*opt1)->Apply(std::span<float>(x1), std::span<const float>(d), 1.0).status());
  }
  EXPECT_EQ(c1->CurrentSlice().second, x1);
}

TEST_F(ShardCoreTest, CorruptStagedSliceOfACommittedUpdateHaltsWithDataLoss) {
  auto c0 = StartCore(Options(0));
  auto c1 = StartCore(Options(1));
  ASSERT_TRUE(c0 && c1);
  for (int s = 0; s < kShards; ++s) {
    PushResult r;
    ASSERT_CORE_OK(PushAll(s == 0 ? *c0 : *c1, s, "alice/1/1", 0, Delta(1, s), &r));
  }
  {
    // Flip one byte near the end of the data.
    std::fstream f(c0->StagedPath("alice/1/1"), std::ios::in | std::ios::out | std::ios::binary);
    f.seekg(-10, std::ios::end);
    char b;
    f.read(&b, 1);
    f.seekp(-10, std::ios::end);
    b ^= 0x01;
    f.write(&b, 1);
  }
  ASSERT_OK(Commit("alice/1/1", 0).status());
  ASSERT_TRUE(c1->WaitForVersion(1, 10000));
  ASSERT_TRUE(testing::WaitFor([&] { return c0->GetStatus().state == ShardState::kHalted; },
                               std::chrono::seconds(10)));
  EXPECT_EQ(c0->GetStatus().version, 0);  // not applied, not skipped
  EXPECT_THAT(c0->GetStatus().halt_message, HasSubstr("checksum"));
  PullArgs a;
  a.header = Header(0);
  a.codec = "fp32";
  PullResult r;
  EXPECT_EQ(c0->Pull(a, &r).code, ShardErrorCode::kDataLoss);
  // A drain (SIGTERM) of a halted shard returns at once, without a checkpoint.
  EXPECT_EQ(c0->Drain().code(), StatusCode::kFailedPrecondition);
  // A restart does not get past it either.
  c0.reset();
  auto again = ShardCore::Create(Options(0));
  ASSERT_OK(again.status());
  ASSERT_OK((*again)->Start());
  ASSERT_TRUE(testing::WaitFor([&] { return (*again)->GetStatus().state == ShardState::kHalted; },
                               std::chrono::seconds(10)));
  EXPECT_EQ((*again)->GetStatus().version, 0);
}

// ---- drain at a checkpointed version (issue 7) ---------------------------------------

std::string CheckpointFolder(ShardCore& core, int64_t version) {
  char name[32];
  std::snprintf(name, sizeof(name), "v-%012lld", static_cast<long long>(version));
  return JoinPath(core.CheckpointRoot(), name);
}

ino_t Inode(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// Drain returned only once the apply loop had caught up, which a fenced shard never does
// (it applies nothing while fenced): it must return at once, without a final checkpoint.
TEST_F(ShardCoreTest, DrainOfAFencedShardBehindTheLogReturnsWithoutACheckpoint) {
  auto c0 = StartCore(Options(0));
  auto c1 = StartCore(Options(1));
  ASSERT_TRUE(c0 && c1);
  PushResult r;
  for (int s = 0; s < kShards; ++s) {
    ASSERT_CORE_OK(PushAll(s == 0 ? *c0 : *c1, s, "alice/1/1", 0, Delta(1, s), &r));
  }
  c0->Fence("test: another process took the index");
  ASSERT_OK(Commit("alice/1/1", 0).status());
  ASSERT_TRUE(c1->WaitForVersion(1, 10000));
  EXPECT_EQ(c0->GetStatus().version, 0);  // behind the log, and stays there
  auto drained = std::async(std::launch::async, [&] { return c0->Drain(); });
  ASSERT_EQ(drained.wait_for(std::chrono::seconds(30)), std::future_status::ready) << "Drain hung on a fenced shard";
  Status st = drained.get();
  EXPECT_EQ(st.code(), StatusCode::kFailedPrecondition) << st.ToString();
  EXPECT_THAT(st.message(), HasSubstr("fenced"));
  EXPECT_FALSE(Env::Default()->Exists(CheckpointFolder(*c0, 1)));
}

// fedps-shard crashed in Drain when the checkpoint of its version already existed. Now a
// drain (or an on-demand checkpoint) at a version this process checkpointed or loaded
// leaves that folder as it is, before and after a restart.
TEST_F(ShardCoreTest, DrainAtAnAlreadyCheckpointedVersionKeepsThatCheckpoint) {
  auto c0 = StartCore(Options(0));
  auto c1 = StartCore(Options(1));
  ASSERT_TRUE(c0 && c1);
  StageAndCommit({c0.get(), c1.get()}, 1, 0);
  ASSERT_TRUE(c0->WaitForVersion(1, 10000));
  CheckpointResult ck;
  ASSERT_CORE_OK(c0->Checkpoint(Header(0), "request", &ck));
  EXPECT_EQ(ck.version, 1);
  const std::string folder = CheckpointFolder(*c0, 1);
  EXPECT_EQ(ck.path, folder);
  const ino_t meta = Inode(folder + "/meta.json");
  ASSERT_NE(meta, 0u);
  ASSERT_OK(c0->Drain());
  EXPECT_EQ(Inode(folder + "/meta.json"), meta);
  c0.reset();

  auto again = StartCore(Options(0));
  ASSERT_TRUE(again);
  EXPECT_EQ(again->GetStatus().version, 1);
  EXPECT_TRUE(again->AppliedLog().empty());
  ASSERT_OK(again->Drain());  // at the version it loaded
  EXPECT_EQ(Inode(folder + "/meta.json"), meta);
  auto names = Env::Default()->ListDir(again->CheckpointRoot());
  ASSERT_OK(names.status());
  EXPECT_THAT(*names, ::testing::ElementsAre("v-000000000000", "v-000000000001"));
}

// Issue 9: nothing stopped a second process from using a live shard's folder (Start ran
// before the shard registered). The folder is locked from Start on; a second core on it is
// refused naming the holder, and once the first is gone the folder can be used again.
TEST_F(ShardCoreTest, ASecondCoreOnALiveShardFolderIsRefused) {
  auto first = StartCore(Options(0));
  ASSERT_TRUE(first);
  auto second = ShardCore::Create(Options(0));
  ASSERT_OK(second.status());
  Status s = (*second)->Start();
  EXPECT_EQ(s.code(), StatusCode::kFailedPrecondition) << s.ToString();
  EXPECT_THAT(s.message(), ::testing::HasSubstr("in use by another process"));
  EXPECT_THAT(s.message(), ::testing::HasSubstr("fedps-shard 0"));
  EXPECT_EQ(first->GetStatus().state, ShardState::kServing);
  second->reset();
  first.reset();
  auto again = StartCore(Options(0));
  EXPECT_TRUE(again);
}

// A folder of the current version that does not verify is replaced, never removed first;
// leftovers of an interrupted replacement are finished at the next start.
TEST_F(ShardCoreTest, DrainReplacesAnUnverifiedCheckpointOfItsVersion) {
  auto c0 = StartCore(Options(0));
  auto c1 = StartCore(Options(1));
  ASSERT_TRUE(c0 && c1);
  StageAndCommit({c0.get(), c1.get()}, 1, 0);
  ASSERT_TRUE(c0->WaitForVersion(1, 10000));
  const std::string root = c0->CheckpointRoot();
  const std::string folder = CheckpointFolder(*c0, 1);
  c0->Stop();  // a crash: no checkpoint of version 1
  c0.reset();
  Env* env = Env::Default();
  ASSERT_OK(env->CreateDirs(folder));
  ASSERT_OK(env->WriteFileAtomic(folder + "/meta.json", "{}"));
  ASSERT_OK(env->CreateDirs(root + "/.tmp-v-000000000007/deeper"));

  auto again = StartCore(Options(0));  // skips the bad v-1, replays seq 1 from v-0
  ASSERT_TRUE(again);
  ASSERT_TRUE(again->WaitForVersion(1, 10000));
  ASSERT_EQ(again->AppliedLog().size(), 1u);
  EXPECT_FALSE(env->Exists(root + "/.tmp-v-000000000007"));
  ASSERT_OK(again->Drain());
  again.reset();
  auto names = env->ListDir(root);
  ASSERT_OK(names.status());
  EXPECT_THAT(*names, ::testing::ElementsAre("v-000000000000", "v-000000000001"));

  // A replacement interrupted after setting the old folder aside: it is put back.
  ASSERT_OK(env->Rename(folder, root + "/.old-v-000000000001"));
  auto third = StartCore(Options(0));
  ASSERT_TRUE(third);
  EXPECT_EQ(third->GetStatus().version, 1);
  EXPECT_TRUE(third->AppliedLog().empty());  // loaded v-1, nothing to replay
  auto x = InitSlice(0), d = Delta(1, 0);
  auto slice = third->CurrentSlice().second;
  for (int64_t i = 0; i < kN; ++i) ASSERT_FLOAT_EQ(slice[i], x[i] - d[i]) << "element " << i;
  names = env->ListDir(root);
  ASSERT_OK(names.status());
  EXPECT_THAT(*names, ::testing::ElementsAre("v-000000000000", "v-000000000001"));
}
// An Env whose checkpoint writes block (at state.json) while armed, until released.
class BlockingCheckpointEnv : public Env {
 public:
  Status WriteFileAtomic(const std::string& path, std::string_view contents) override {
    if (path.size() >= 11 && path.compare(path.size() - 11, 11, "/state.json") == 0) {
      std::unique_lock<std::mutex> lock(mu_);
      if (armed_) {
        blocked_ = true;
        cv_.notify_all();
        cv_.wait(lock, [&] { return !armed_; });
        blocked_ = false;
      }
    }
    return Env::WriteFileAtomic(path, contents);
  }
  void Arm() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = true;
  }
  bool WaitBlocked() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return blocked_; });
  }
  void Release() {
    std::lock_guard<std::mutex> lock(mu_);
    armed_ = false;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool armed_ = false;
  bool blocked_ = false;
};

// Checkpoints are written by the checkpoint thread: while one is stuck on the disk, the
// next update applies and pulls see it; the checkpoint holds the version it was taken at
// (a restart from it replays the later update once, bit for bit); a checkpoint requested
// meanwhile is served when the writer is free, at the newest version.
TEST_F(ShardCoreTest, CheckpointIsWrittenInTheBackgroundWhileUpdatesApply) {
  BlockingCheckpointEnv env;
  auto o0 = Options(0), o1 = Options(1);
  o0.env = &env;
  o0.ps.checkpoint_every = 1;
  auto c0 = StartCore(o0);
  auto c1 = StartCore(o1);
  ASSERT_TRUE(c0 && c1);
  env.Arm();
  StageAndCommit({c0.get(), c1.get()}, 1, 0);
  ASSERT_TRUE(env.WaitBlocked());  // the scheduled checkpoint of version 1 is being written
  StageAndCommit({c0.get(), c1.get()}, 2, 1);
  ASSERT_TRUE(c0->WaitForVersion(2, 10000));
  EXPECT_EQ(c0->GetStatus().checkpoint_version, 0);
  int64_t v = 0;
  auto pulled = PullAll(*c0, 0, &v);
  EXPECT_EQ(v, 2);
  CheckpointResult requested;
  CoreError requested_error;
  std::thread requester(
      [&] { requested_error = c0->Checkpoint(Header(0), "request", &requested); });
  env.Release();
  requester.join();
  ASSERT_CORE_OK(requested_error);
  EXPECT_EQ(requested.version, 2);
  EXPECT_EQ(c0->GetStatus().checkpoint_version, 2);
  auto names = Env::Default()->ListDir(c0->CheckpointRoot());
  ASSERT_OK(names.status());
  EXPECT_THAT(*names, ::testing::ElementsAre("v-000000000001", "v-000000000002"));

  // Version 1's checkpoint holds version 1's state: drop the newer one and restart from it.
  c0->Stop();
  c0.reset();
  ASSERT_OK(Env::Default()->RemoveAll(JoinPath(Options(0).dir, "checkpoints/v-000000000002")));
  auto again = StartCore(Options(0));
  ASSERT_TRUE(again);
  ASSERT_TRUE(again->WaitForVersion(2, 10000));
  auto log = again->AppliedLog();
  ASSERT_EQ(log.size(), 1u);
  EXPECT_EQ(log[0].seq, 2);
  auto x = InitSlice(0), d1 = Delta(1, 0), d2 = Delta(2, 0);
  auto slice = again->CurrentSlice().second;
  for (int64_t i = 0; i < kN; ++i)
    ASSERT_FLOAT_EQ(slice[i], (x[i] - d1[i]) - d2[i]) << "element " << i;
  EXPECT_EQ(slice, pulled);
}

// ---- memory: shard RAM stays flat over many updates (issue 7, item 5) ---------------------

int64_t RssBytes() {
  std::ifstream statm("/proc/self/statm");
  int64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * ::sysconf(_SC_PAGESIZE);
}

// Many updates of a 16 MB slice through two in-process shards, each version pulled whole
// (so every apply takes the copy-on-write path and pinned snapshots fill up to their cap):
// once warm, resident memory does not grow with the number of updates, and it stays
// within the stated bound. The test's own buffers are allocated before the first reading.
TEST_F(ShardCoreTest, ManyUpdatesKeepShardMemoryFlat) {
  constexpr int64_t kBig = int64_t{4} << 20;  // 16 MB of fp32 per shard
  constexpr int64_t kBigFrame = int64_t{1} << 18;
  constexpr int kWarm = 8, kUpdates = 40;
  std::vector<float> delta(kBig);
  for (int64_t i = 0; i < kBig; ++i) delta[i] = 1e-6f * static_cast<float>(i % 97) - 4e-5f;
  auto encoder = Codec::Create(CodecOptions{.kind = CodecKind::kBf16, .chunk_elements = kBigFrame});
  ASSERT_OK(encoder.status());
  auto frames = (*encoder)->Encode(std::span<const float>(delta));
  ASSERT_OK(frames.status());
  std::vector<float> pulled(kBig);
  auto options = [&](int shard) {
    ShardCoreOptions o = Options(shard);
    o.slice_elements = kBig;
    o.ps.frame_elements = kBigFrame;
    o.ps.optimizer = "nesterov";  // one state tensor: the bound's "3"
    o.ps.max_staleness = 1000;
    o.max_pinned_snapshots = 2;
    o.init_slice = [&]() -> StatusOr<std::vector<float>> { return std::vector<float>(kBig, 0.5f); };
    return o;
  };
  auto metrics = MetricsLog::Open(dir_.File("metrics.jsonl"), "test");
  ASSERT_OK(metrics.status());
  auto o0 = options(0), o1 = options(1);
  o0.metrics = metrics->get();
  auto c0 = StartCore(o0);
  auto c1 = StartCore(o1);
  ASSERT_TRUE(c0 && c1);
  std::vector<ShardCore*> cores = {c0.get(), c1.get()};
  int64_t warm_rss = 0;
  const int64_t start_rss = RssBytes();
  for (int k = 1; k <= kUpdates; ++k) {
    const std::string id = "alice/" + std::to_string(client_epoch_) + "/big-" + std::to_string(k);
    for (int s = 0; s < kShards; ++s) {
      PushArgs a = Push(s, id, k - 1, 0, "");
      a.codec = "bf16";
      a.total_frames = static_cast<int64_t>(frames->size());
      a.frame_elements = kBigFrame;
      PushResult r;
      for (size_t f = 0; f < frames->size(); ++f) {
        a.frame_index = static_cast<int64_t>(f);
        a.frame = (*frames)[f];
        ASSERT_CORE_OK(cores[s]->Push(a, &r));
      }
      ASSERT_EQ(r.state, UpdateState::kStaged);
    }
    ASSERT_OK(Commit(id, k - 1).status());
    for (int s = 0; s < kShards; ++s) {
      ASSERT_TRUE(cores[s]->WaitForVersion(k, 20000));
      // A client pulls the new version whole (its pin ends about a second after its last frame).
      for (size_t f = 0; f < frames->size(); ++f) {
        PullArgs p;
        p.header = Header(s);
        p.codec = "bf16";
        p.frame_index = static_cast<int64_t>(f);
        p.version = k;
        PullResult r;
        ASSERT_CORE_OK(cores[s]->Pull(p, &r));
        ASSERT_OK(codec_->DecodeFrame(r.frame, std::span<float>(pulled)));
      }
    }
    if (k == kWarm) warm_rss = RssBytes();
  }
  const int64_t end_rss = RssBytes();
  const int64_t slice_bytes = kBig * static_cast<int64_t>(sizeof(float));
  std::printf(
      "shard RSS: start %.1f MB, after %d updates %.1f MB, after %d %.1f MB (slice %.1f MB, 2 "
      "shards)\n",
      start_rss / 1e6, kWarm, warm_rss / 1e6, kUpdates, end_rss / 1e6, slice_bytes / 1e6);
  // Apply rate of shard 0 (decode + outer step of fp32 pseudo-gradient), for the record.
  auto records = ReadMetrics(dir_.File("metrics.jsonl"));
  ASSERT_OK(records.status());
  double decode_ms = 0, copy_ms = 0, step_ms = 0;
  int applies = 0;
  for (const auto& r : *records) {
    if (r["event"] != "apply") continue;
    decode_ms += r["decode_ms"].get<double>();
    copy_ms += r["copy_ms"].get<double>();
    step_ms += r["step_ms"].get<double>();
    ++applies;
  }
  ASSERT_EQ(applies, kUpdates);
  std::printf(
      "shard apply of %.1f MB: decode %.2f ms, copy %.2f ms, step %.2f ms (%.2f GB/s of fp32)\n",
      slice_bytes / 1e6, decode_ms / applies, copy_ms / applies, step_ms / applies,
      slice_bytes * applies / ((decode_ms + copy_ms + step_ms) * 1e-3) / 1e9);
  // Flat: what the last 32 updates added is well under one slice of either shard.
  EXPECT_LT(end_rss - warm_rss, slice_bytes / 2);
  // Bounded: per shard (4 + pinned) slices of fp32 (the spare included), plus the bf16
  // frames cached for pulls of the current and pinned versions (about half a slice each).
  const int64_t pinned = 2;
  EXPECT_LT(end_rss - start_rss,
            kShards * ((4 + pinned) * slice_bytes + (1 + pinned) * slice_bytes / 2));
}

// ---- expiry of staged updates and of partially received ones --------------------------

// A real clock plus an offset; the first reading taken on a thread other than `owner`
// (the shard's apply thread) after Arm() runs the armed action there and then jumps the
// clock forward, so the action lands exactly when the shard first sees the TTL passed.
class HookClock : public Clock {
 public:
  int64_t NowMicros() override {
    if (armed_.load() && std::this_thread::get_id() != owner_ && armed_.exchange(false)) {
      action_();
      offset_ += jump_;
      fired_ = true;
    }
    return Clock::Real()->NowMicros() + offset_.load();
  }
  int64_t WallMicros() override { return Clock::Real()->WallMicros(); }
  void SleepForMicros(int64_t micros) override { Clock::Real()->SleepForMicros(micros); }
  void Arm(std::function<void()> action, int64_t jump_us) {
    action_ = std::move(action);
    jump_ = jump_us;
    armed_ = true;
  }
  bool fired() const { return fired_.load(); }

 private:
  const std::thread::id owner_ = std::this_thread::get_id();
  std::function<void()> action_;
  int64_t jump_ = 0;
  std::atomic<bool> armed_{false};
  std::atomic<bool> fired_{false};
  std::atomic<int64_t> offset_{0};
};

class HookEnv : public Env {
 public:
  Clock* clock() override { return &clock_; }
  HookClock clock_;
};

// docs/protocol.md §3-4, §9 "The client dies after staging, before commit": the shard
// releases its stage record (ReleaseStaged), deletes its slice, and the commit fails.
TEST_F(ShardCoreTest, UncommittedStagedUpdateExpiresAndCanNoLongerCommit) {
  auto o0 = Options(0);
  o0.ps.stage_ttl_ms = 300;  // shard 1 keeps the default (10 min): only shard 0 expires
  auto c0 = StartCore(o0);
  auto c1 = StartCore(Options(1));
  ASSERT_TRUE(c0 && c1);
  const std::string id = "alice/1/1";
  for (int s = 0; s < kShards; ++s) {
    PushResult r;
    ASSERT_CORE_OK(PushAll(s == 0 ? *c0 : *c1, s, id, 0, Delta(1, s), &r));
    ASSERT_EQ(r.state, UpdateState::kStaged);
  }
  auto marks = registry_->StagedShards(id);
  ASSERT_OK(marks.status());
  EXPECT_THAT(*marks, ::testing::ElementsAre(0, 1));
  EXPECT_EQ(c0->GetStatus().staged_updates, 1);

  // After the TTL shard 0 drops it: file gone, mark released, no longer counted.
  ASSERT_TRUE(testing::WaitFor([&] { return !Env::Default()->Exists(c0->StagedPath(id)); },
                               std::chrono::seconds(10)));
  ASSERT_TRUE(testing::WaitFor([&] { return c0->GetStatus().staged_updates == 0; },
                               std::chrono::seconds(10)));
  marks = registry_->StagedShards(id);
  ASSERT_OK(marks.status());
  EXPECT_THAT(*marks, ::testing::ElementsAre(1));  // shard 1 (long TTL) still holds its own
  EXPECT_TRUE(Env::Default()->Exists(c1->StagedPath(id)));
  EXPECT_EQ(c1->GetStatus().staged_updates, 1);

  // The commit can no longer succeed, and takes no seq.
  auto seq = Commit(id, 0);
  ASSERT_FALSE(seq.ok());
  EXPECT_EQ(seq.status().code(), StatusCode::kFailedPrecondition) << seq.status().ToString();
  EXPECT_THAT(seq.status().message(), HasSubstr("not staged on shard(s) 0"));
  auto head = registry_->GlobalSeq();
  ASSERT_OK(head.status());
  EXPECT_EQ(*head, 0);
  EXPECT_EQ(c0->GetStatus().version, 0);
  EXPECT_TRUE(c0->AppliedLog().empty());

  // For shard 0 the update never existed: a resent frame starts it from scratch.
  auto frames = Frames(Delta(1, 0));
  PushResult r;
  ASSERT_CORE_OK(c0->Push(Push(0, id, 0, 0, frames[0]), &r));
  EXPECT_EQ(r.state, UpdateState::kReceiving);
  EXPECT_EQ(r.frames_received, 1);
  EXPECT_FALSE(r.seq.has_value());
}

// The mirror: an update committed before its TTL runs out is kept past the TTL and applied.
TEST_F(ShardCoreTest, StagedUpdateCommittedBeforeExpiryIsKeptAndApplied) {
  auto o0 = Options(0), o1 = Options(1);
  o0.ps.stage_ttl_ms = o1.ps.stage_ttl_ms = 300;
  auto c0 = StartCore(o0);
  auto c1 = StartCore(o1);
  ASSERT_TRUE(c0 && c1);
  const std::string id = "alice/1/1";
  for (int s = 0; s < kShards; ++s) {
    PushResult r;
    ASSERT_CORE_OK(PushAll(s == 0 ? *c0 : *c1, s, id, 0, Delta(1, s), &r));
    ASSERT_EQ(r.state, UpdateState::kStaged);
  }
  auto seq = Commit(id, 0);
  ASSERT_OK(seq.status());
  EXPECT_EQ(*seq, 1);
  // A witness staged AFTER the commit and never committed: once it has expired, the TTL
  // of the committed update has passed too and expiry has run over it.
  const std::string witness = "alice/1/2";
  for (int s = 0; s < kShards; ++s) {
    PushResult r;
    ASSERT_CORE_OK(PushAll(s == 0 ? *c0 : *c1, s, witness, 0, Delta(2, s), &r));
  }
  for (auto* c : {c0.get(), c1.get()}) {
    ASSERT_TRUE(testing::WaitFor([&] { return !Env::Default()->Exists(c->StagedPath(witness)); },
                                 std::chrono::seconds(10)));
    ASSERT_TRUE(c->WaitForVersion(1, 10000));
    auto log = c->AppliedLog();
    ASSERT_EQ(log.size(), 1u);
    EXPECT_EQ(log[0].seq, 1);
    EXPECT_EQ(log[0].update_id, id);
    EXPECT_FALSE(log[0].skipped);
    // Kept: the oldest checkpoint (v-0) does not cover seq 1, so it is the replay log.
    EXPECT_TRUE(Env::Default()->Exists(c->StagedPath(id)));
  }
  for (int s = 0; s < kShards; ++s) {
    auto [v, slice] = (s == 0 ? c0 : c1)->CurrentSlice();
    EXPECT_EQ(v, 1);
    auto x = InitSlice(s), d = Delta(1, s);
    for (int64_t i = 0; i < kN; ++i)
      ASSERT_FLOAT_EQ(slice[i], x[i] - d[i]) << "shard " << s << " element " << i;
  }
  PushResult r;
  auto frames = Frames(Delta(1, 0));
  ASSERT_CORE_OK(c0->Push(Push(0, id, 0, 0, frames[0]), &r));
  EXPECT_EQ(r.state, UpdateState::kApplied);
  EXPECT_EQ(r.seq.value_or(0), 1);
}

// The race of docs/protocol.md §4 / §9 ("A stage record expires while a commit runs"): the
// commit lands at the very moment the shard's clock first passes the TTL, before the shard
// has read it from the commit log. Whichever way the two interleave on the apply thread
// (ReleaseStaged answering the seq, or the log read first) the slice is kept and applied.
TEST_F(ShardCoreTest, CommitLandingAtTheExpiryInstantIsKeptAndApplied) {
  HookEnv env;
  auto o0 = Options(0), o1 = Options(1);
  o0.ps.stage_ttl_ms = 60000;  // only the hooked clock's jump makes it expire
  o0.env = &env;
  auto c0 = StartCore(o0);
  auto c1 = StartCore(o1);
  ASSERT_TRUE(c0 && c1);
  const std::string id = "alice/1/1";
  for (int s = 0; s < kShards; ++s) {
    PushResult r;
    ASSERT_CORE_OK(PushAll(s == 0 ? *c0 : *c1, s, id, 0, Delta(1, s), &r));
    ASSERT_EQ(r.state, UpdateState::kStaged);
  }
  StatusOr<int64_t> seq = Status(StatusCode::kInternal, "not run");
  env.clock_.Arm([&] { seq = Commit(id, 0); }, /*jump_us=*/120LL * 1000 * 1000);
  ASSERT_TRUE(testing::WaitFor([&] { return env.clock_.fired(); }, std::chrono::seconds(10)));
  ASSERT_OK(seq.status());
  EXPECT_EQ(*seq, 1);
  for (auto* c : {c0.get(), c1.get()}) {
    ASSERT_TRUE(c->WaitForVersion(1, 10000));
    auto log = c->AppliedLog();
    ASSERT_EQ(log.size(), 1u);
    EXPECT_EQ(log[0].update_id, id);
    EXPECT_FALSE(log[0].skipped);
    EXPECT_TRUE(Env::Default()->Exists(c->StagedPath(id)));
  }
  EXPECT_EQ(c0->GetStatus().state, ShardState::kServing);
  auto x = InitSlice(0), d = Delta(1, 0);
  auto slice = c0->CurrentSlice().second;
  for (int64_t i = 0; i < kN; ++i) ASSERT_FLOAT_EQ(slice[i], x[i] - d[i]) << "element " << i;
  c0->Stop();  // before `env` goes away
}

// docs/protocol.md §3 "Limits" / §9 "The client dies while pushing": a partially received
// update idle longer than the receive timeout is dropped with its frames; resending the rest
// starts it from scratch (RECEIVING, counting only the new frames), nothing is staged until
// every frame has been sent again.
TEST_F(ShardCoreTest, IdlePartialUpdateIsDroppedWithItsFrames) {
  auto o0 = Options(0);
  o0.receive_timeout_ms = 300;
  auto c0 = StartCore(o0);
  ASSERT_TRUE(c0);
  const std::string id = "alice/1/1";
  auto frames = Frames(Delta(1, 0));
  ASSERT_EQ(frames.size(), 4u);
  PushResult r;
  ASSERT_CORE_OK(c0->Push(Push(0, id, 0, 0, frames[0]), &r));
  ASSERT_CORE_OK(c0->Push(Push(0, id, 0, 1, frames[1]), &r));
  EXPECT_EQ(r.state, UpdateState::kReceiving);
  EXPECT_EQ(r.frames_received, 2);
  EXPECT_EQ(c0->GetStatus().receiving_updates, 1);

  EXPECT_EQ(FilesBeingWritten(*c0).size(), 1u);
  ASSERT_TRUE(testing::WaitFor([&] { return c0->GetStatus().receiving_updates == 0; },
                               std::chrono::seconds(10)));
  EXPECT_TRUE(FilesBeingWritten(*c0).empty());  // its frames' file went with it

  // The remaining frames do not complete it: frames 0 and 1 are gone.
  r = PushResult();
  ASSERT_CORE_OK(c0->Push(Push(0, id, 0, 2, frames[2]), &r));
  EXPECT_EQ(r.state, UpdateState::kReceiving);
  EXPECT_EQ(r.frames_received, 1);
  r = PushResult();
  ASSERT_CORE_OK(c0->Push(Push(0, id, 0, 3, frames[3]), &r));
  EXPECT_EQ(r.state, UpdateState::kReceiving);
  EXPECT_EQ(r.frames_received, 2);
  ASSERT_TRUE(r.missing_frames.has_value());
  EXPECT_THAT(*r.missing_frames, ::testing::ElementsAre(0, 1));
  EXPECT_FALSE(Env::Default()->Exists(c0->StagedPath(id)));
  auto marks = registry_->StagedShards(id);
  ASSERT_OK(marks.status());
  EXPECT_TRUE(marks->empty());
  EXPECT_EQ(c0->GetStatus().staged_updates, 0);

  // Sending the dropped frames again completes and stages it.
  ASSERT_CORE_OK(c0->Push(Push(0, id, 0, 0, frames[0]), &r));
  ASSERT_CORE_OK(c0->Push(Push(0, id, 0, 1, frames[1]), &r));
  EXPECT_EQ(r.state, UpdateState::kStaged);
  EXPECT_TRUE(Env::Default()->Exists(c0->StagedPath(id)));
  EXPECT_EQ(c0->GetStatus().receiving_updates, 0);
}

}  // namespace
}  // namespace fedps
