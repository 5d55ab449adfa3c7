// The apply thread of ShardCore, and UpdateDecoder (see ps/applier.h).
//
// The apply thread reads the commit log in seq order (Registry::CommittedAfter) and, for
// each entry: reads the update's staged frames (ps/staged_store.h), decodes them across all
// cores into the decode scratch, weighs the update by its staleness, and steps the outer
// optimizer IN PLACE on the master slice (SnapshotStore::BeginWrite: copy-on-write only
// when a pull pins the current version), then publishes the new version. Between entries
// it serves checkpoint requests, and when caught up it expires uncommitted staged updates
// and idle partial ones. It alone touches the master slice, the optimizer and the
// checkpoint store (ShardCore's header: concurrency contract).
#include "ps/applier.h"

#include <thread>

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
  // The scalars every shard uses: the stage record stored with the commit.
  const nlohmann::json& rec = c.stage_record.is_object() ? c.stage_record : c.meta;
  auto base = JsonInt(rec, "base_version");
  auto tokens = JsonInt(rec, "tokens");
  std::string skip_reason;
  double weight = 0;
  if (!base.ok() || !tokens.ok()) {
    skip_reason = "commit record has no integer base_version/tokens";
  }
  // The staged update must exist and decode even for a skip: otherwise data was lost.
  auto staged = staged_store_->Read(c.update_id);
  if (!staged.ok()) {
    Halt("committed update " + c.update_id + " (seq " + Str(c.seq) + "): " + staged.status().message());
    return false;
  }
  const int64_t read_us = NowUs();
  auto delta = decoder_->Decode(staged->frames);
  if (!delta.ok()) {
    Halt("committed update " + c.update_id + " (seq " + Str(c.seq) + "): staged frames: " + delta.status().message());
    return false;
  }
  staged->frames.clear();
  staged->frames.shrink_to_fit();  // the encoded bytes are not needed past here
  const int64_t decoded_us = NowUs();
  int64_t cow_us = 0;  // BeginWrite: a copy when a pull pins the current version
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
  const bool skipped = !skip_reason.empty();
  if (skipped) {
    LOG(WARNING) << "shard " << options_.shard_index << ": skipping seq " << c.seq << " (" << c.update_id
                 << "): " << skip_reason;
  }
  snapshots_->Publish(c.seq);
  {
    std::lock_guard<std::mutex> lock(mu_);
    version_ = c.seq;
    committed_seq_ = std::max(committed_seq_, c.seq);
    done_[c.update_id] = {c.seq, skipped};
    auto st = staged_.find(c.update_id);
    if (st == staged_.end()) {
      st = staged_.emplace(c.update_id, std::make_shared<Staged>()).first;
    }
    st->second->seq = c.seq;
    if (skipped) {
      ++skipped_updates_;
    } else {
      ++applied_updates_;
    }
    if (optimizer_) {
      optimizer_steps_ = optimizer_->steps();
      buffered_updates_ = static_cast<int32_t>(optimizer_->pending());
    }
    applied_log_.push_back({c.seq, c.update_id, skipped, weight});
    version_cv_.notify_all();
  }
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
    auto ck = WriteCheckpoint("schedule");
    if (!ck.ok()) LOG(ERROR) << "checkpoint: " << ck.status().ToString();
  }
  return true;
}

void ShardCore::ServeCheckpointRequests() {
  std::vector<std::shared_ptr<CheckpointRequest>> reqs;
  {
    std::lock_guard<std::mutex> lock(mu_);
    reqs.swap(checkpoint_requests_);
  }
  if (reqs.empty()) return;
  auto ck = WriteCheckpoint(reqs.front()->reason);
  std::lock_guard<std::mutex> lock(mu_);
  for (auto& r : reqs) {
    r->done = true;
    r->status = ck.status();
    if (ck.ok()) r->result = *ck;
    r->cv.notify_all();
  }
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
        drop = true;
      }
    }
    if (drop) {
      staged_store_->Remove(id);
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
    ServeCheckpointRequests();
    bool caught_up = false;
    if (!halted && !fenced) {
      auto entries = apply_registry_->CommittedAfter(version, kCommitBatch);
      if (!entries.ok()) {
        if (failures++ % 50 == 0) LOG(WARNING) << "reading the commit log: " << entries.status().ToString();
        if (draining) return;  // cannot learn more commits; drain with what we have
      } else {
        failures = 0;
        bool ok = true;
        for (const CommittedUpdate& c : *entries) {
          {
            std::lock_guard<std::mutex> lock(mu_);
            if (stop_ || fenced_) return;
          }
          if (!ApplyOne(c)) {
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
    }
    std::unique_lock<std::mutex> lock(mu_);
    if (caught_up || halted || fenced || failures > 0) {
      apply_cv_.wait_for(lock, std::chrono::milliseconds(options_.poll_ms),
                         [&] { return stop_ || nudged_ || draining_ != draining || !checkpoint_requests_.empty(); });
    }
  }
}

// ---- checkpoints ------------------------------------------------------------------------

StatusOr<CheckpointResult> ShardCore::WriteCheckpoint(const std::string& reason) {
  const int64_t start = NowUs();
  CheckpointView view;
  int64_t checkpoint_version;
  {
    std::lock_guard<std::mutex> lock(mu_);
    view.version = version_;
    view.applied_updates = applied_updates_;
    view.skipped_updates = skipped_updates_;
    checkpoint_version = checkpoint_version_;
  }
  CheckpointResult r;
  r.version = view.version;
  r.optimizer_steps = optimizer_ ? optimizer_->steps() : 0;
  r.path = checkpoints_->FolderOf(view.version);
  if (view.version == checkpoint_version && env_->Exists(JoinPath(r.path, "meta.json"))) {
    // This process wrote or loaded (and verified) the checkpoint of this version, and
    // nothing was applied since: the folder already holds this exact state.
    LOG(INFO) << "shard " << options_.shard_index << ": checkpoint " << r.path << " is current (" << reason << ")";
    Metric("checkpoint", {{"version", view.version}, {"reason", reason}, {"path", r.path}, {"ms", 0}, {"unchanged", true}});
    return r;
  }
  view.slice = snapshots_->master();
  if (optimizer_) {
    view.optimizer_tensors = optimizer_->StateTensors();
    view.optimizer_json = optimizer_->StateJson();
  }
  view.reference_tokens = reference_tokens_;
  RETURN_IF_ERROR(checkpoints_->Write(view, reason).status());
  r.duration_ms = (NowUs() - start) / 1000;
  {
    std::lock_guard<std::mutex> lock(mu_);
    checkpoint_version_ = view.version;
    checkpoint_ms_ = env_->clock()->WallMicros() / 1000;
  }
  applied_since_checkpoint_ = 0;
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

void ShardCore::PruneAfterCheckpoint() {
  const int64_t oldest = checkpoints_->Prune();
  if (oldest < 0) return;
  // Staged updates are the log the kept checkpoints replay from: keep those above the
  // oldest kept checkpoint's version.
  std::vector<std::string> remove;
  {
    std::lock_guard<std::mutex> lock(mu_);
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
  checkpoint_version_ = ck->version;
  checkpoint_ms_ = ck->wall_ms;
  applied_updates_ = ck->applied_updates;
  skipped_updates_ = ck->skipped_updates;
  optimizer_steps_ = optimizer_ ? optimizer_->steps() : 0;
  buffered_updates_ = optimizer_ ? static_cast<int32_t>(optimizer_->pending()) : 0;
  return Status::Ok();
}

}  // namespace fedps
