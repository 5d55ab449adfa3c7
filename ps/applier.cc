// The apply thread of ShardCore, and UpdateDecoder (see ps/applier.h).
//
// The apply thread reads the commit log in seq order (Registry::ReadLog, which also returns
// the entry at the shard's version: a registry that lost or reused it halts the shard) and,
// for each entry: reads the update's staged frames (ps/staged_store.h), decodes them across all
// cores into the decode scratch, weighs the update by its staleness, and steps the outer
// optimizer IN PLACE on the master slice (SnapshotStore::BeginWrite: copy-on-write only
// when a pull pins the current version), then publishes the new version. In ps.mode = sync
// an entry is a closed round (ps/rounds.h): the thread decodes each of its updates in turn,
// sums them with their token weights into one more slice (round_mean_), and steps the
// optimizer once on that mean; when idle it also closes the open round in the registry
// once it is due (CloseDueRound). Between entries it takes checkpoints (scheduled and requested), and when caught up it expires
// uncommitted staged updates and idle partial ones. It alone touches the master slice and
// the optimizer (ShardCore's header: concurrency contract).
//
// The checkpoint thread writes what the apply thread took: the published version's slice
// buffer, held (an apply meanwhile continues in a copy: SnapshotStore's copy on write),
// and a copy of the optimizer state; so checkpoints do not stall applies. One is written
// at a time; a scheduled checkpoint due while one is written is taken after the next apply.
// Memory while one is written: + 1 slice (when an apply happens meanwhile) + the optimizer
// state's size.
#include "ps/applier.h"

#include <cmath>
#include <thread>

#include "ps/rounds.h"
#include "ps/shard_core.h"

namespace fedps {

namespace {

constexpr int64_t kCommitBatch = 256;

std::string Str(int64_t v) { return std::to_string(v); }

StatusOr<int64_t> JsonInt(const nlohmann::json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer()) {
    return DataLoss(std::string("missing integer '") + key + "'");
  }
  return j[key].get<int64_t>();
}

}  // namespace

// ---- UpdateDecoder ----------------------------------------------------------------------

StatusOr<std::unique_ptr<UpdateDecoder>> UpdateDecoder::Create(int64_t slice_elements, int64_t frame_elements,
                                                               int threads) {
  CodecOptions co;
  co.kind = CodecKind::kFp32;  // decoding follows each frame's own kind
  co.chunk_elements = frame_elements;
  // Codec's default caps itself at 4 threads (right for a client that also trains); the
  // shard has nothing else to do with its cores while it applies.
  co.threads = threads > 0 ? threads : std::max(1u, std::thread::hardware_concurrency());
  ASSIGN_OR_RETURN(auto codec, Codec::Create(co));
  return std::unique_ptr<UpdateDecoder>(new UpdateDecoder(slice_elements, std::move(codec)));
}

StatusOr<UpdateDecoder::Decoded> UpdateDecoder::Decode(const std::vector<std::string>& frames) {
  std::unique_lock<std::mutex> lock(mu_);
  scratch_.resize(static_cast<size_t>(slice_elements_));  // once: then reused
  RETURN_IF_ERROR(codec_->DecodeAll(frames, std::span<float>(scratch_)));
  return Decoded(std::move(lock), std::span<const float>(scratch_));
}

// ---- apply thread -----------------------------------------------------------------------

void ShardCore::Halt(const std::string& message) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    state_ = ShardState::kHalted;
    halt_message_ = message;
    version_cv_.notify_all();
  }
  LOG(ERROR) << "shard " << options_.shard_index << " HALTED: " << message;
  Metric("halt", {{"message", message}});
  auto ev = apply_registry_->AddEvent("shard_halted", {{"shard", options_.shard_index}, {"message", message}});
  if (!ev.ok()) LOG(WARNING) << "event: " << ev.status().ToString();
}

bool ShardCore::ApplyOne(const CommittedUpdate& c) {
  const int64_t start = NowUs();
  int64_t version;
  {
    std::lock_guard<std::mutex> lock(mu_);
    version = version_;
  }
  if (c.seq != version + 1) {
    Halt("commit log out of order: got seq " + Str(c.seq) + " at version " + Str(version));
    return false;
  }
  if (IsRoundEntry(c)) return ApplyRound(c, start);
  // The scalars every shard uses: the stage record stored with the commit.
  const nlohmann::json& rec = c.stage_record.is_object() ? c.stage_record : c.meta;
  auto base = JsonInt(rec, "base_version");
  auto tokens = JsonInt(rec, "tokens");
  std::string skip_reason;
  double weight = 0;
  if (!base.ok() || !tokens.ok()) {
    skip_reason = "commit record has no integer base_version/tokens";
  }
  int64_t read_us = 0, decoded_us = 0;
  int64_t cow_us = 0;  // BeginWrite: a copy when a pull pins the current version
  {
    // The decode scratch stays locked while `delta` lives: released before the scheduled
    // checkpoint below, so that stagers (which decode a completed push) never wait for it.
    // The staged update must exist and decode even for a skip: otherwise data was lost.
    auto staged = staged_store_->Read(c.update_id);
    if (!staged.ok()) {
      Halt("committed update " + c.update_id + " (seq " + Str(c.seq) + "): " + staged.status().message());
      return false;
    }
    read_us = NowUs();
    auto delta = decoder_->Decode(staged->frames);
    if (!delta.ok()) {
      Halt("committed update " + c.update_id + " (seq " + Str(c.seq) + "): staged frames: " + delta.status().message());
      return false;
    }
    staged->frames.clear();
    staged->frames.shrink_to_fit();  // the encoded bytes are not needed past here
    decoded_us = NowUs();
    if (skip_reason.empty()) {
      const int64_t s = (c.seq - 1) - *base;
      auto ws = s < 0 ? StatusOr<double>(InvalidArgument("base_version " + Str(*base) + " is ahead of seq - 1"))
                      : staleness_->Weight(s);
      if (!ws.ok()) {
        skip_reason = ws.status().message();
      } else {
        if (!optimizer_) {
          // weight_by_tokens with reference_tokens 0: the first committed update's tokens.
          reference_tokens_ = std::max<int64_t>(*tokens, 1);
          auto opt = MakeOptimizer(reference_tokens_);
          if (!opt.ok()) {
            Halt("optimizer: " + opt.status().ToString());
            return false;
          }
          optimizer_ = std::move(opt).value();
        }
        auto w = optimizer_->Weight(*ws, *tokens);
        if (!w.ok()) {
          skip_reason = w.status().message();
        } else {
          weight = *w;
          std::span<float> slice = snapshots_->BeginWrite();
          cow_us = NowUs() - decoded_us;
          auto applied = optimizer_->Apply(slice, delta->values(), weight);
          if (!applied.ok()) skip_reason = applied.status().message();
        }
      }
    }
  }
  const bool skipped = !skip_reason.empty();
  FinishApply(c, {{c.seq, c.update_id, skipped, weight}}, skip_reason);
  const int64_t end = NowUs();
  nlohmann::json m = {{"seq", c.seq},
                      {"update_id", c.update_id},
                      {"client", c.client},
                      {"skipped", skipped},
                      {"weight", weight},
                      {"apply_ms", (end - start) / 1000.0},
                      {"read_ms", (read_us - start) / 1000.0},
                      {"decode_ms", (decoded_us - read_us) / 1000.0},
                      {"copy_ms", cow_us / 1000.0},
                      {"step_ms", (end - decoded_us - cow_us) / 1000.0}};
  if (base.ok()) m["staleness"] = (c.seq - 1) - *base;
  if (skipped) m["reason"] = skip_reason;
  Metric("apply", std::move(m));
  ++applied_since_checkpoint_;
  if (options_.ps.checkpoint_every > 0 && applied_since_checkpoint_ >= options_.ps.checkpoint_every) {
    // While the previous one is still being written this is retried after the next apply.
    StartBackgroundCheckpoint("schedule", {});
  }
  return true;
}

bool ShardCore::ApplyRound(const CommittedUpdate& c, int64_t start) {
  // Malformed records are skipped by every shard alike (the version still advances); a
  // listed update whose staged slice is missing or does not decode halts, as in ApplyOne.
  auto round = ParseClosedRound(c);
  auto weights = round.ok() ? RoundWeights(*round) : StatusOr<std::vector<double>>(round.status());
  std::string skip_reason = weights.ok() ? "" : weights.status().message();
  const std::vector<RoundUpdate> updates = round.ok() ? round->updates : std::vector<RoundUpdate>{};
  round_mean_.assign(static_cast<size_t>(options_.slice_elements), 0.0f);  // allocated once, then reused
  int64_t tokens = 0;
  for (size_t i = 0; i < updates.size(); ++i) {
    const std::string& id = updates[i].update_id;
    auto staged = staged_store_->Read(id);
    if (!staged.ok()) {
      Halt("round " + Str(round->round) + " (seq " + Str(c.seq) + "), update " + id + ": " + staged.status().message());
      return false;
    }
    auto delta = decoder_->Decode(staged->frames);
    if (!delta.ok()) {
      Halt("round " + Str(round->round) + " (seq " + Str(c.seq) + "), update " + id +
           ": staged frames: " + delta.status().message());
      return false;
    }
    if (!skip_reason.empty()) continue;
    // FedAvg: mean = sum_i (tokens_i / sum tokens) * Delta_i, in list order on every shard.
    const float w = static_cast<float>((*weights)[i]);
    std::span<const float> d = delta->values();
    for (size_t j = 0; j < round_mean_.size(); ++j) round_mean_[j] += w * d[j];
    tokens += updates[i].tokens;
  }
  const int64_t decoded_us = NowUs();
  if (skip_reason.empty() && !optimizer_) {
    auto opt = MakeOptimizer(1);  // sync mode never weighs by tokens (config.cc refuses it)
    if (!opt.ok()) {
      Halt("optimizer: " + opt.status().ToString());
      return false;
    }
    optimizer_ = std::move(opt).value();
  }
  if (skip_reason.empty()) {
    auto applied = optimizer_->Apply(snapshots_->BeginWrite(), round_mean_, 1.0);
    if (!applied.ok()) skip_reason = applied.status().message();
  }
  const bool skipped = !skip_reason.empty();
  std::vector<AppliedRecord> applied;
  for (size_t i = 0; i < updates.size(); ++i) {
    applied.push_back({c.seq, updates[i].update_id, skipped, skipped ? 0.0 : (*weights)[i]});
  }
  FinishApply(c, applied, skip_reason);
  const int64_t end = NowUs();
  nlohmann::json m = {{"seq", c.seq},
                      {"update_id", c.update_id},
                      {"round", round.ok() ? round->round : c.seq - 1},
                      {"updates", updates.size()},
                      {"tokens", tokens},
                      {"skipped", skipped},
                      {"apply_ms", (end - start) / 1000.0},
                      {"decode_ms", (decoded_us - start) / 1000.0},
                      {"step_ms", (end - decoded_us) / 1000.0}};
  if (round.ok()) {
    m["closed_by"] = round->closed_by;
    m["missing"] = round->missing;
  }
  if (skipped) m["reason"] = skip_reason;
  Metric("apply_round", std::move(m));
  ++applied_since_checkpoint_;
  if (options_.ps.checkpoint_every > 0 && applied_since_checkpoint_ >= options_.ps.checkpoint_every) {
    StartBackgroundCheckpoint("schedule", {});
  }
  return true;
}

void ShardCore::CloseDueRound() {
  if (options_.ps.mode != "sync") return;
  auto closed = apply_registry_->CloseRoundIfDue(RoundOptionsFromConfig(options_.ps));
  if (!closed.ok()) {
    if (closed.status().code() == StatusCode::kDataLoss) {
      Halt(closed.status().message());
    } else {
      LOG_EVERY_N(WARNING, 50) << "closing a due round: " << closed.status().ToString();
    }
    return;
  }
  if (*closed > 0) {
    LOG(INFO) << "shard " << options_.shard_index << ": closed round " << *closed - 1 << " (its deadline passed or an awaited member left)";
    std::lock_guard<std::mutex> lock(mu_);
    nudged_ = true;  // its entry is in the log: read it without waiting for the poll
  }
}

void ShardCore::ServeCheckpointRequests() {
  std::vector<std::shared_ptr<CheckpointRequest>> reqs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (checkpoint_requests_.empty() || checkpoint_job_) return;  // served once the writer is free
    reqs.swap(checkpoint_requests_);
  }
  const std::string reason = reqs.front()->reason;
  StartBackgroundCheckpoint(reason, std::move(reqs));
}

void ShardCore::ExpireStaged() {
  const int64_t now = NowUs();
  std::vector<std::string> candidates;
  {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [id, s] : staged_) {
      if (s->seq == 0 && s->inflight == 0 && !s->expiring && now - s->staged_us > options_.ps.stage_ttl_ms * 1000) {
        s->expiring = true;
        candidates.push_back(id);
      }
    }
  }
  for (const std::string& id : candidates) {
    auto released = apply_registry_->ReleaseStaged(id, options_.shard_index);
    bool drop = false;
    std::string detached;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = staged_.find(id);
      if (it == staged_.end()) continue;
      it->second->expiring = false;
      if (!released.ok()) {
        LOG(WARNING) << "releasing " << id << ": " << released.status().ToString();
      } else if (*released > 0) {
        it->second->seq = *released;  // committed meanwhile: keep and apply
      } else {
        staged_.erase(it);
        // Under mu_, with the entry: a push of the same id stages only after this, under
        // the freed name, so the delete below cannot take its file.
        detached = staged_store_->Detach(id);
        drop = true;
      }
    }
    if (drop) {
      staged_store_->Discard(detached);
      LOG(INFO) << "shard " << options_.shard_index << ": dropped expired staged update " << id;
      Metric("stage_expired", {{"update_id", id}});
    }
  }
}

void ShardCore::DropIdleReceiving() {
  std::vector<std::string> dropped;
  {
    std::lock_guard<std::mutex> lock(mu_);
    dropped = receiving_.DropIdle(NowUs(), options_.receive_timeout_ms * 1000);
  }
  for (const std::string& id : dropped) {
    LOG(INFO) << "shard " << options_.shard_index << ": dropped idle partial update " << id;
  }
}

void ShardCore::FinishApply(const CommittedUpdate& c, const std::vector<AppliedRecord>& applied,
                            const std::string& skip_reason) {
  const bool skipped = !skip_reason.empty();
  if (skipped) {
    LOG(WARNING) << "shard " << options_.shard_index << ": skipping seq " << c.seq << " (" << c.update_id
                 << "): " << skip_reason;
  }
  snapshots_->Publish(c.seq);
  std::lock_guard<std::mutex> lock(mu_);
  version_ = c.seq;
  last_applied_id_ = c.update_id;
  last_applied_chain_ = c.chain;
  committed_seq_ = std::max(committed_seq_, c.seq);
  for (const AppliedRecord& r : applied) {
    done_[r.update_id] = {c.seq, skipped};
    auto st = staged_.find(r.update_id);
    if (st == staged_.end()) st = staged_.emplace(r.update_id, std::make_shared<Staged>()).first;
    st->second->seq = c.seq;
    // The norm bound's median is over applied updates (ps/norm_bound.h).
    if (!skipped && st->second->sum_squares >= 0) norm_bound_.Record(std::sqrt(st->second->sum_squares));
    applied_log_.push_back(r);
  }
  if (applied_log_.size() > 2 * kAppliedLogKept) {  // amortised: one move per kAppliedLogKept applies
    applied_log_.erase(applied_log_.begin(), applied_log_.end() - static_cast<std::ptrdiff_t>(kAppliedLogKept));
  }
  // A skipped commit counts once even when it names no update (a round closed empty).
  if (skipped) {
    skipped_updates_ += static_cast<int64_t>(std::max<size_t>(applied.size(), 1));
  } else {
    applied_updates_ += static_cast<int64_t>(applied.size());
  }
  if (optimizer_) {
    optimizer_steps_ = optimizer_->steps();
    buffered_updates_ = static_cast<int32_t>(optimizer_->pending());
  }
  version_cv_.notify_all();
}

void ShardCore::ApplyLoop() {
  int64_t failures = 0;
  while (true) {
    bool halted, fenced, draining;
    int64_t version;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      halted = state_ == ShardState::kHalted;
      fenced = fenced_;
      draining = draining_;
      version = version_;
      nudged_ = false;
    }
    // Halted or fenced, nothing more will be applied: a drain need not wait.
    if (draining && (halted || fenced)) return;
    ServeCheckpointRequests();
    bool caught_up = false;
    if (!halted && !fenced) {
      // The entry at our version comes with the ones after it: the log must still hold the
      // update applied there (same id, same commit chain), or Redis lost commits and a
      // later seq could name another update than the one applied under it.
      auto read = apply_registry_->ReadLog(version, kCommitBatch);
      std::string diverged;
      if (read.ok()) {
        std::lock_guard<std::mutex> lock(mu_);
        diverged = DivergenceLocked(version, *read);
      }
      if (!read.ok()) {
        if (failures++ % 50 == 0) LOG(WARNING) << "reading the commit log: " << read.status().ToString();
        if (draining) return;  // cannot learn more commits; drain with what we have
      } else if (!diverged.empty()) {
        Halt(diverged);
      } else {
        failures = 0;
        bool ok = true;
        const std::vector<CommittedUpdate>* entries = &read->after;
        for (const CommittedUpdate& c : *entries) {
          bool fenced_now;
          {
            std::lock_guard<std::mutex> lock(mu_);
            if (stop_) return;
            fenced_now = fenced_;
          }
          if (fenced_now || !ApplyOne(c)) {  // fenced: wait (a Resume un-fences) or stop
            ok = false;
            break;
          }
          ServeCheckpointRequests();
        }
        caught_up = ok && static_cast<int64_t>(entries->size()) < kCommitBatch;
      }
    }
    if (caught_up) {
      bool recovered = false;
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (state_ == ShardState::kRecovering) {
          state_ = ShardState::kServing;
          recovered = true;
        }
      }
      if (recovered) {
        LOG(INFO) << "shard " << options_.shard_index << ": SERVING at version " << GetStatus().version;
        Metric("recovered", {{"version", GetStatus().version}});
        auto ev = apply_registry_->AddEvent("shard_serving",
                                            {{"shard", options_.shard_index}, {"version", GetStatus().version}});
        if (!ev.ok()) LOG(WARNING) << "event: " << ev.status().ToString();
      }
      if (draining) return;
      ExpireStaged();
      DropIdleReceiving();
      CloseDueRound();
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (caught_up || halted || fenced || failures > 0) {
      apply_cv_.wait_for(lock, std::chrono::milliseconds(options_.poll_ms),
                         [&] {
                           return stop_ || nudged_ || draining_ != draining ||
                                  (!checkpoint_requests_.empty() && !checkpoint_job_);
                         });
    }
  }
}

// ---- checkpoints ------------------------------------------------------------------------

std::optional<CheckpointResult> ShardCore::CurrentCheckpoint(const std::string& reason) {
  CheckpointResult r;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (checkpoint_version_ != version_) return std::nullopt;
    r.version = version_;
  }
  r.optimizer_steps = optimizer_ ? optimizer_->steps() : 0;
  r.path = checkpoints_->FolderOf(r.version);
  // This process wrote or loaded (and verified) the checkpoint of this version, and
  // nothing was applied since: the folder already holds this exact state.
  if (!env_->Exists(JoinPath(r.path, "meta.json"))) return std::nullopt;
  LOG(INFO) << "shard " << options_.shard_index << ": checkpoint " << r.path << " is current (" << reason << ")";
  Metric("checkpoint", {{"version", r.version}, {"reason", reason}, {"path", r.path}, {"ms", 0}, {"unchanged", true}});
  return r;
}

CheckpointResult ShardCore::FinishCheckpoint(const CheckpointView& view, const std::string& reason, int64_t start_us) {
  CheckpointResult r;
  r.version = view.version;
  r.optimizer_steps = view.optimizer_json.is_object() ? view.optimizer_json.value("steps", int64_t{0}) : 0;
  r.path = checkpoints_->FolderOf(view.version);
  r.duration_ms = (NowUs() - start_us) / 1000;
  {
    std::lock_guard<std::mutex> lock(mu_);
    checkpoint_version_ = std::max(checkpoint_version_, view.version);
    checkpoint_ms_ = env_->clock()->WallMicros() / 1000;
  }
  PruneAfterCheckpoint();
  LOG(INFO) << "shard " << options_.shard_index << ": checkpoint " << r.path << " (" << reason << ", "
            << r.duration_ms << " ms)";
  Metric("checkpoint", {{"version", view.version}, {"reason", reason}, {"path", r.path}, {"ms", r.duration_ms}});
  if (apply_registry_) {
    auto ev = apply_registry_->AddEvent("shard_checkpoint",
                                        {{"shard", options_.shard_index}, {"version", view.version}, {"reason", reason}});
    if (!ev.ok()) LOG(WARNING) << "event: " << ev.status().ToString();
  }
  return r;
}

StatusOr<CheckpointResult> ShardCore::WriteCheckpoint(const std::string& reason) {
  {
    std::unique_lock<std::mutex> lock(mu_);
    checkpoint_cv_.wait(lock, [&] { return !checkpoint_job_; });
  }
  if (auto current = CurrentCheckpoint(reason)) return *current;
  const int64_t start = NowUs();
  CheckpointView view;
  {
    std::lock_guard<std::mutex> lock(mu_);
    view.version = version_;
    view.applied_updates = applied_updates_;
    view.skipped_updates = skipped_updates_;
    view.last_update_id = last_applied_id_;
    view.last_chain = last_applied_chain_;
  }
  view.slice = snapshots_->master();
  if (optimizer_) {
    view.optimizer_tensors = optimizer_->StateTensors();
    view.optimizer_json = optimizer_->StateJson();
  }
  view.reference_tokens = reference_tokens_;
  RETURN_IF_ERROR(checkpoints_->Write(view, reason).status());
  applied_since_checkpoint_ = 0;
  return FinishCheckpoint(view, reason, start);
}

bool ShardCore::StartBackgroundCheckpoint(const std::string& reason,
                                          std::vector<std::shared_ptr<CheckpointRequest>> requests) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (checkpoint_job_) {
      // One at a time: the requests wait for the next turn.
      for (auto& r : requests) checkpoint_requests_.push_back(std::move(r));
      return false;
    }
  }
  if (auto current = CurrentCheckpoint(reason)) {
    applied_since_checkpoint_ = 0;
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& r : requests) {
      r->done = true;
      r->result = *current;
      r->cv.notify_all();
    }
    return true;
  }
  auto job = std::make_shared<CheckpointJob>();
  job->start_us = NowUs();
  job->reason = reason;
  job->requests = std::move(requests);
  job->held = snapshots_->Hold();  // the published version == version_ on this thread
  {
    std::lock_guard<std::mutex> lock(mu_);
    job->view.version = version_;
    job->view.applied_updates = applied_updates_;
    job->view.skipped_updates = skipped_updates_;
    job->view.last_update_id = last_applied_id_;
    job->view.last_chain = last_applied_chain_;
  }
  job->view.slice = SnapshotStore::Values(*job->held);
  if (optimizer_) {
    // A copy: the optimizer steps its tensors in place (one memcpy per tensor, far
    // cheaper than writing and hashing them).
    for (const auto& [name, data] : optimizer_->StateTensors()) {
      job->optimizer_copy.emplace_back(name, std::vector<float>(data.begin(), data.end()));
    }
    for (const auto& [name, data] : job->optimizer_copy) job->view.optimizer_tensors.emplace_back(name, data);
    job->view.optimizer_json = optimizer_->StateJson();
  }
  job->view.reference_tokens = reference_tokens_;
  applied_since_checkpoint_ = 0;
  std::lock_guard<std::mutex> lock(mu_);
  checkpoint_job_ = std::move(job);
  checkpoint_cv_.notify_all();
  return true;
}

void ShardCore::CheckpointLoop() {
  while (true) {
    std::shared_ptr<CheckpointJob> job;
    {
      std::unique_lock<std::mutex> lock(mu_);
      checkpoint_cv_.wait(lock, [&] { return checkpoint_stop_ || (checkpoint_job_ && !checkpoint_writing_); });
      if (!checkpoint_job_) return;  // stop, nothing queued
      if (checkpoint_stop_) {        // queued, not started: nobody waits for the state it holds
        for (auto& r : checkpoint_job_->requests) {
          r->done = true;
          r->status = fedps::Unavailable("shard stopping");
          r->cv.notify_all();
        }
        checkpoint_job_.reset();
        checkpoint_cv_.notify_all();
        return;
      }
      checkpoint_writing_ = true;
      job = checkpoint_job_;
    }
    auto written = checkpoints_->Write(job->view, job->reason);
    CheckpointResult result;
    if (written.ok()) {
      result = FinishCheckpoint(job->view, job->reason, job->start_us);
    } else {
      LOG(ERROR) << "checkpoint: " << written.status().ToString();
    }
    job->held.reset();  // the version's buffer goes (unless a pull pins it)
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& r : job->requests) {
      r->done = true;
      r->status = written.status();
      if (written.ok()) r->result = result;
      r->cv.notify_all();
    }
    checkpoint_job_.reset();
    checkpoint_writing_ = false;
    checkpoint_cv_.notify_all();
    apply_cv_.notify_all();  // requests that waited for the writer
  }
}

void ShardCore::PruneAfterCheckpoint() {
  const int64_t oldest = checkpoints_->Prune();
  if (oldest < 0) return;
  // Staged updates are the log the kept checkpoints replay from: keep those above the
  // oldest kept checkpoint's version. The registry may trim its log below that version
  // once every shard reported its own (ShardStats::oldest_checkpoint_version).
  std::vector<std::string> remove;
  {
    std::lock_guard<std::mutex> lock(mu_);
    oldest_checkpoint_version_ = std::max(oldest_checkpoint_version_, oldest);
    for (auto it = done_.begin(); it != done_.end();) {
      it = it->second.seq <= oldest ? done_.erase(it) : std::next(it);
    }
    for (auto it = staged_.begin(); it != staged_.end();) {
      if (it->second->seq > 0 && it->second->seq <= oldest) {
        remove.push_back(it->first);
        it = staged_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const std::string& id : remove) staged_store_->Remove(id);
}

Status ShardCore::LoadNewestCheckpoint(bool* found) {
  ASSIGN_OR_RETURN(std::optional<LoadedCheckpoint> ck, checkpoints_->LoadNewest());
  *found = ck.has_value();
  if (!ck) return Status::Ok();
  int64_t ref = ck->reference_tokens;
  std::unique_ptr<OuterOptimizer> opt;
  if (!ck->optimizer_json.is_null()) {
    ASSIGN_OR_RETURN(opt, MakeOptimizer(ref > 0 ? ref : 1));
    OuterOptimizer::NamedTensors views;
    for (const auto& [n, t] : ck->optimizer_tensors) views.emplace_back(n, std::span<const float>(t));
    RETURN_IF_ERROR(opt->LoadState(ck->optimizer_json, views).WithContext(ck->folder));
  } else if (!options_.ps.weight_by_tokens || options_.ps.reference_tokens > 0) {
    ASSIGN_OR_RETURN(opt, MakeOptimizer(options_.ps.reference_tokens > 0 ? options_.ps.reference_tokens : 1));
    ref = options_.ps.reference_tokens;
  }
  snapshots_->Reset(ck->version, std::move(ck->slice));
  have_slice_ = true;
  optimizer_ = std::move(opt);
  reference_tokens_ = ref;
  LOG(INFO) << "shard " << options_.shard_index << ": loaded checkpoint " << ck->folder;
  std::lock_guard<std::mutex> lock(mu_);
  version_ = ck->version;
  last_applied_id_ = ck->last_update_id;
  last_applied_chain_ = ck->last_chain;
  checkpoint_version_ = ck->version;
  checkpoint_ms_ = ck->wall_ms;
  applied_updates_ = ck->applied_updates;
  skipped_updates_ = ck->skipped_updates;
  optimizer_steps_ = optimizer_ ? optimizer_->steps() : 0;
  buffered_updates_ = optimizer_ ? static_cast<int32_t>(optimizer_->pending()) : 0;
  return Status::Ok();
}

}  // namespace fedps
