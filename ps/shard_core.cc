// ShardCore: the facade. See the header for the design and the concurrency contract; the
// apply thread lives in ps/applier.cc. This file: creation, lifecycle, request checks,
// Pull, Push (receiving -> staging), CommitNotify, Checkpoint, status.
#include "ps/shard_core.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <span>

namespace fedps {

namespace {

std::string Str(int64_t v) { return std::to_string(v); }

// "bf16", "bf16+zstd" -> bf16 (the zstd stage is implied by every codec).
StatusOr<CodecKind> CodecFromName(const std::string& name) {
  std::string base = name;
  const std::string suffix = "+zstd";
  if (base.size() > suffix.size() && base.compare(base.size() - suffix.size(), suffix.size(), suffix) == 0) {
    base.resize(base.size() - suffix.size());
  }
  return ParseCodecKind(base);
}

}  // namespace

// ---- small types ------------------------------------------------------------------------

Status CoreError::ToStatus() const {
  switch (code) {
    case ShardErrorCode::kOk: return Status::Ok();
    case ShardErrorCode::kStaleRefused: return OutOfRange(message);
    case ShardErrorCode::kFenced: return Aborted(message);
    case ShardErrorCode::kNotStaged: return NotFound(message);
    case ShardErrorCode::kBadRequest: return InvalidArgument(message);
    case ShardErrorCode::kDataLoss: return DataLoss(message);
    case ShardErrorCode::kUnavailable: return fedps::Unavailable(message);
    case ShardErrorCode::kIdentityMismatch: return FailedPrecondition(message);
    case ShardErrorCode::kSnapshotExpired: return Aborted(message);
    case ShardErrorCode::kInternal: return Internal(message);
    case ShardErrorCode::kNotMember: return Aborted(message);
  }
  return Internal(message);
}

const char* ShardStateName(ShardState s) {
  switch (s) {
    case ShardState::kStarting: return "STARTING";
    case ShardState::kRecovering: return "RECOVERING";
    case ShardState::kServing: return "SERVING";
    case ShardState::kDraining: return "DRAINING";
    case ShardState::kHalted: return "HALTED";
    case ShardState::kFenced: return "FENCED";
  }
  return "?";
}

// ---- creation ---------------------------------------------------------------------------

ShardCore::ShardCore(ShardCoreOptions options)
    : options_(std::move(options)),
      env_(options_.env),
      receiving_(options_.max_receiving),
      norm_bound_(NormBoundOptions{options_.ps.norm_bound, options_.ps.norm_bound_factor,
                                   options_.ps.norm_bound_window, options_.ps.norm_bound_warmup}) {}

ShardCore::~ShardCore() { Stop(); }

StatusOr<std::unique_ptr<ShardCore>> ShardCore::Create(ShardCoreOptions options) {
  if (options.run_id.empty()) return InvalidArgument("shard: run_id is empty");
  if (options.layout_hash.empty()) return InvalidArgument("shard: layout_hash is empty");
  if (options.num_shards < 1 || options.shard_index < 0 || options.shard_index >= options.num_shards) {
    return InvalidArgument("shard: index " + Str(options.shard_index) + " not in [0, " + Str(options.num_shards) + ")");
  }
  if (options.slice_elements <= 0) return InvalidArgument("shard: empty slice");
  if (options.ps.frame_elements <= 0 || static_cast<uint64_t>(options.ps.frame_elements) > kMaxFrameElements) {
    return InvalidArgument("shard: ps.frame_elements " + Str(options.ps.frame_elements) + " out of range");
  }
  if (options.dir.empty()) return InvalidArgument("shard: dir is empty");
  if (options.env == nullptr) options.env = Env::Default();
  if (options.max_receiving < 1 || options.keep_checkpoints < 1 || options.poll_ms < 1) {
    return InvalidArgument("shard: max_receiving, keep_checkpoints and poll_ms must be >= 1");
  }
  if (options.max_receiving_per_client < 1 || options.max_staged < 1 || options.max_staged_per_client < 1 ||
      options.max_receiving_bytes_per_client < 1 || options.max_staged_bytes < 1 ||
      options.max_staged_bytes_per_client < 1) {
    return InvalidArgument("shard: the receiving and staged limits must be >= 1");
  }
  std::unique_ptr<ShardCore> core(new ShardCore(std::move(options)));
  const ShardCoreOptions& o = core->options_;
  core->total_frames_ = (o.slice_elements + o.ps.frame_elements - 1) / o.ps.frame_elements;

  StalenessOptions so;
  so.function = o.ps.staleness;
  so.a = o.ps.staleness_a;
  so.b = o.ps.staleness_b;
  so.max_staleness = o.ps.max_staleness;
  ASSIGN_OR_RETURN(StalenessPolicy policy, StalenessPolicy::Create(so));
  core->staleness_ = std::make_unique<StalenessPolicy>(policy);
  // Validate the optimizer options now (reference_tokens may be resolved later).
  ASSIGN_OR_RETURN(auto probe, core->MakeOptimizer(o.ps.reference_tokens > 0 ? o.ps.reference_tokens : 1));
  (void)probe;

  std::map<CodecKind, std::unique_ptr<Codec>> encoders;
  for (CodecKind kind : {CodecKind::kFp32, CodecKind::kBf16, CodecKind::kInt8}) {
    CodecOptions co;
    co.kind = kind;
    co.zstd_level = static_cast<int>(o.compression.zstd_level);
    co.threads = static_cast<int>(o.compression.threads);
    co.chunk_elements = o.ps.frame_elements;
    co.int8_block = static_cast<int>(o.compression.int8_block);
    ASSIGN_OR_RETURN(auto codec, Codec::Create(co));
    encoders[kind] = std::move(codec);
  }
  SnapshotStore::Options sn;
  sn.slice_elements = o.slice_elements;
  sn.total_frames = core->total_frames_;
  sn.snapshot_ttl_ms = o.ps.snapshot_ttl_ms;
  sn.max_pinned_snapshots = o.max_pinned_snapshots;
  core->snapshots_ = std::make_unique<SnapshotStore>(sn, std::move(encoders), core->env_->clock());
  ASSIGN_OR_RETURN(core->decoder_, UpdateDecoder::Create(o.slice_elements, o.ps.frame_elements, o.decode_threads));
  {
    CodecOptions co;  // checks frames in the calling RPC thread: no pool of its own
    co.threads = 1;
    co.chunk_elements = o.ps.frame_elements;
    ASSIGN_OR_RETURN(core->frame_checker_, Codec::Create(co));
  }
  core->staged_store_ = std::make_unique<StagedStore>(
      JoinPath(o.dir, "staged"), StagedStore::Slice{o.shard_index, o.slice_begin, o.slice_elements}, core->env_);
  CheckpointIdentity id;
  id.run_id = o.run_id;
  id.layout_hash = o.layout_hash;
  id.shard_index = o.shard_index;
  id.num_shards = o.num_shards;
  id.slice_begin = o.slice_begin;
  id.slice_elements = o.slice_elements;
  id.optimizer_name = o.ps.optimizer;
  core->checkpoints_ =
      std::make_unique<CheckpointStore>(JoinPath(o.dir, "checkpoints"), id, o.keep_checkpoints, core->env_);
  return core;
}

StatusOr<std::unique_ptr<OuterOptimizer>> ShardCore::MakeOptimizer(int64_t reference_tokens) const {
  ASSIGN_OR_RETURN(auto opt,
                   OuterOptimizer::Create(OuterOptionsFromConfig(options_.ps, reference_tokens), options_.slice_elements));
  opt->SetThreadPool(step_pool_.get());
  return opt;
}

std::vector<std::string> ShardCore::codecs() const { return {"fp32", "bf16", "int8"}; }

int64_t ShardCore::NowUs() const { return env_->clock()->NowMicros(); }

std::string ShardCore::StagedPath(const std::string& update_id) const { return staged_store_->Path(update_id); }

std::string ShardCore::CheckpointRoot() const { return checkpoints_->root(); }

void ShardCore::Metric(const std::string& event, nlohmann::json fields) {
  if (options_.metrics == nullptr) return;
  fields["shard"] = options_.shard_index;
  Status s = options_.metrics->Write(event, std::move(fields));
  if (!s.ok()) LOG(WARNING) << "metrics: " << s.ToString();
}

// ---- lifecycle --------------------------------------------------------------------------

Status ShardCore::Start() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (started_) return FailedPrecondition("shard core already started");
    started_ = true;
    state_ = ShardState::kStarting;
  }
  // Before anything in the folder is read or written: a second process on it is refused.
  ASSIGN_OR_RETURN(folder_lock_, FolderLock::Acquire(options_.dir, "fedps-shard " + Str(options_.shard_index)));
  RETURN_IF_ERROR(staged_store_->Init());
  RETURN_IF_ERROR(checkpoints_->Recover());
  {
    ASSIGN_OR_RETURN(request_registry_, Registry::Connect(options_.registry));
    ASSIGN_OR_RETURN(apply_registry_, Registry::Connect(options_.registry));
  }

  bool found = false;
  RETURN_IF_ERROR(LoadNewestCheckpoint(&found));
  if (!found) {
    if (!options_.init_slice) return FailedPrecondition("shard has no checkpoint and no initial slice");
    ASSIGN_OR_RETURN(std::vector<float> init, options_.init_slice());
    if (static_cast<int64_t>(init.size()) != options_.slice_elements) {
      return Internal("initial slice has " + Str(init.size()) + " values, want " + Str(options_.slice_elements));
    }
    snapshots_->Reset(0, std::move(init));
    have_slice_ = true;
    reference_tokens_ = options_.ps.reference_tokens;
    if (!options_.ps.weight_by_tokens || reference_tokens_ > 0) {
      ASSIGN_OR_RETURN(optimizer_, MakeOptimizer(reference_tokens_ > 0 ? reference_tokens_ : 1));
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      version_ = 0;
    }
    ASSIGN_OR_RETURN(auto ck, WriteCheckpoint("initial"));
    LOG(INFO) << "shard " << options_.shard_index << ": initialised version 0, checkpoint " << ck.path;
  }
  RETURN_IF_ERROR(IndexStagedFiles());
  PruneAfterCheckpoint();  // the oldest kept checkpoint, for trimming; older staged files go

  auto head = apply_registry_->GlobalSeq();
  int64_t version;
  {
    std::lock_guard<std::mutex> lock(mu_);
    version = version_;
    if (head.ok()) committed_seq_ = *head;
    recovery_target_ = head.ok() ? *head : 0;
    state_ = ShardState::kRecovering;
  }
  Metric("start", {{"version", version}, {"head", recovery_target_}});
  LOG(INFO) << "shard " << options_.shard_index << ": recovering from version " << version << " to the commit-log head "
            << recovery_target_;
  auto ev = apply_registry_->AddEvent("shard_recovering", {{"shard", options_.shard_index},
                                                           {"version", version},
                                                           {"head", recovery_target_}});
  if (!ev.ok()) LOG(WARNING) << "event: " << ev.status().ToString();
  {
    std::lock_guard<std::mutex> lock(mu_);
    apply_running_ = true;
  }
  checkpoint_thread_ = std::thread([this] { CheckpointLoop(); });
  apply_thread_ = std::thread([this] {
    ApplyLoop();
    OnApplyExit();
  });
  return Status::Ok();
}

void ShardCore::SetEpoch(int64_t epoch) {
  std::lock_guard<std::mutex> lock(mu_);
  epoch_ = epoch;
}

void ShardCore::Fence(const std::string& why) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!fenced_) LOG(ERROR) << "shard " << options_.shard_index << " fenced: " << why;
  fenced_ = true;
  fence_message_ = why;
  apply_cv_.notify_all();
  version_cv_.notify_all();
}

Status ShardCore::Resume(int64_t epoch, int64_t log_version, const LogRead& log) {
  std::string diverged;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (state_ == ShardState::kHalted) return DataLoss("shard halted: " + halt_message_);
    diverged = DivergenceLocked(log_version, log);
    if (diverged.empty()) {
      epoch_ = epoch;
      fenced_ = false;
      fence_message_.clear();
      committed_seq_ = std::max(committed_seq_, log.head);
      apply_cv_.notify_all();
      version_cv_.notify_all();
      return Status::Ok();
    }
  }
  Halt(diverged);
  return DataLoss(diverged);
}

std::string ShardCore::DivergenceLocked(int64_t log_version, const LogRead& log) const {
  if (log.head < version_) return RegistryBehindMessage(log.head, version_);
  if (log_version != version_ || version_ == 0 || last_applied_id_.empty()) return "";
  const std::string here = "seq " + Str(version_);
  if (!log.at) {
    return "the registry's commit log has no entry at " + here + ", which shard " + Str(options_.shard_index) +
           " applied as update " + last_applied_id_ + " (head " + Str(log.head) +
           "): Redis lost acknowledged commits; refusing to apply what the log says now";
  }
  const bool other_id = log.at->update_id != last_applied_id_;
  const bool other_chain = !log.at->chain.empty() && !last_applied_chain_.empty() && log.at->chain != last_applied_chain_;
  if (!other_id && !other_chain) return "";
  return "the registry reused a seq: its commit record at " + here + " is update " + log.at->update_id +
         (other_id ? "" : " (chain " + log.at->chain + ")") + " but shard " + Str(options_.shard_index) +
         " applied update " + last_applied_id_ + (other_id ? "" : " (chain " + last_applied_chain_ + ")") +
         " there" + (other_id ? "" : ", after another history") +
         " (Redis lost acknowledged commits and handed their seqs to other updates); refusing to apply "
         "other updates under those seqs";
}

std::string ShardCore::RegistryBehindMessage(int64_t head, int64_t version) const {
  return "the registry went back in time: its commit log ends at seq " + Str(head) + " but shard " +
         Str(options_.shard_index) + " applied up to seq " + Str(version) + " (seq " + Str(head + 1) +
         " and later are lost: Redis restarted without its data, or lost writes it had acknowledged); "
         "refusing to apply other updates under those seqs";
}

void ShardCore::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    apply_cv_.notify_all();
    version_cv_.notify_all();
  }
  if (apply_thread_.joinable()) apply_thread_.join();
  {
    std::lock_guard<std::mutex> lock(mu_);
    checkpoint_stop_ = true;  // a checkpoint being written is finished first
    checkpoint_cv_.notify_all();
  }
  if (checkpoint_thread_.joinable()) checkpoint_thread_.join();
}

void ShardCore::OnApplyExit() {
  // Fail checkpoint requests nobody will serve now.
  std::lock_guard<std::mutex> lock(mu_);
  apply_running_ = false;
  for (auto& r : checkpoint_requests_) {
    r->done = true;
    r->status = fedps::Unavailable("shard stopping");
    r->cv.notify_all();
  }
  checkpoint_requests_.clear();
}

Status ShardCore::Drain() {
  bool halted = false, fenced = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    halted = state_ == ShardState::kHalted;
    fenced = fenced_;
    if (!halted) state_ = ShardState::kDraining;
    apply_cv_.notify_all();
  }
  // The apply thread leaves once it has applied everything committed and staged.
  if (apply_thread_.joinable()) apply_thread_.join();
  Status result = Status::Ok();
  if (halted || fenced) {
    result = FailedPrecondition(halted ? "halted: no final checkpoint" : "fenced: no final checkpoint");
  } else if (have_slice_) {
    auto ck = WriteCheckpoint("shutdown");
    result = ck.status();
  }
  Stop();
  return result;
}

// ---- checks -----------------------------------------------------------------------------

CoreError ShardCore::UnavailableLocked(const std::string& why) const {
  CoreError e = CoreError::Make(ShardErrorCode::kUnavailable, why);
  e.retry_after_ms = options_.retry_after_ms;
  e.version = version_;
  return e;
}

CoreError ShardCore::CheckHeaderLocked(const CoreHeader& h) const {
  auto mismatch = [&](const char* field, const std::string& got, const std::string& want) {
    return CoreError::Make(ShardErrorCode::kIdentityMismatch, std::string(field) + " mismatch: request has '" + got +
                                                                  "', shard " + Str(options_.shard_index) + " has '" +
                                                                  want + "'");
  };
  if (h.run_id != options_.run_id) return mismatch("run_id", h.run_id, options_.run_id);
  if (h.layout_hash != options_.layout_hash) return mismatch("layout_hash", h.layout_hash, options_.layout_hash);
  if (h.shard_index != options_.shard_index) {
    return mismatch("shard_index", Str(h.shard_index), Str(options_.shard_index));
  }
  // Halted first: a shard that stopped on lost or corrupt data says so to every caller,
  // also when its lease lapsed meanwhile (the registry that lost data lost the lease too).
  if (state_ == ShardState::kHalted) {
    return CoreError::Make(ShardErrorCode::kDataLoss, "shard halted: " + halt_message_);
  }
  if (fenced_ || (h.shard_epoch != 0 && h.shard_epoch != epoch_)) {
    CoreError e = CoreError::Make(ShardErrorCode::kFenced,
                                  fenced_ ? "this shard process was fenced: " + fence_message_
                                          : "epoch " + Str(h.shard_epoch) + " is not this shard's (" + Str(epoch_) +
                                                "): re-read the shard directory");
    e.epoch = epoch_;
    return e;
  }
  return {};
}

CoreError ShardCore::NotServingLocked() const {
  if (state_ == ShardState::kStarting || state_ == ShardState::kRecovering) {
    return UnavailableLocked(std::string("shard is ") + ShardStateName(state_));
  }
  return {};
}

// ---- pull -------------------------------------------------------------------------------

CoreError ShardCore::Pull(const PullArgs& args, PullResult* out) {
  auto kind = CodecFromName(args.codec);
  {
    std::unique_lock<std::mutex> lock(mu_);
    CoreError e = CheckHeaderLocked(args.header);
    if (!e.ok()) return e;
    e = NotServingLocked();
    if (!e.ok()) return e;
    if (args.frame_index < 0 || args.frame_index >= total_frames_) {
      return CoreError::Make(ShardErrorCode::kBadRequest, "frame_index " + Str(args.frame_index) + " not in [0, " +
                                                              Str(total_frames_) + ")");
    }
    if (!kind.ok()) return CoreError::Make(ShardErrorCode::kBadRequest, "unknown codec '" + args.codec + "'");
    if (!args.version.has_value() && args.min_version.has_value() && version_ < *args.min_version) {
      int64_t wait_ms = std::clamp<int64_t>(args.wait_ms.value_or(0), 0, options_.max_pull_wait_ms);
      version_cv_.wait_for(lock, std::chrono::milliseconds(wait_ms), [&] {
        return stop_ || fenced_ || state_ == ShardState::kHalted || version_ >= *args.min_version;
      });
      e = CheckHeaderLocked(args.header);
      if (!e.ok()) return e;
      if (version_ < *args.min_version) {
        return UnavailableLocked("version " + Str(version_) + " has not reached min_version " + Str(*args.min_version));
      }
    }
  }
  SnapshotStore::PinResult pinned = snapshots_->Pin(args.version, args.header.caller, args.frame_index);
  if (!pinned.snapshot) {
    if (!args.version.has_value()) {
      std::lock_guard<std::mutex> lock(mu_);
      return UnavailableLocked("no snapshot yet");
    }
    CoreError x = CoreError::Make(ShardErrorCode::kSnapshotExpired,
                                  "snapshot of version " + Str(*args.version) + " is no longer kept (current " +
                                      Str(pinned.version) + "): pull again from frame 0");
    x.version = pinned.version;
    return x;
  }
  auto frame = snapshots_->Frame(pinned.snapshot, *kind, args.frame_index);
  if (!frame.ok()) return CoreError::Make(ShardErrorCode::kInternal, "encoding: " + frame.status().ToString());
  out->version = pinned.version;
  out->frame_index = args.frame_index;
  out->total_frames = total_frames_;
  out->frame_elements = options_.ps.frame_elements;
  out->slice_elements = options_.slice_elements;
  out->codec = args.codec;
  out->frame = std::move(frame).value();
  out->snapshot_ttl_ms = options_.ps.snapshot_ttl_ms;
  bytes_out_ += static_cast<int64_t>(out->frame.size());
  return {};
}

// ---- push -------------------------------------------------------------------------------

nlohmann::json ShardCore::StageRecord(int64_t base_version, int64_t tokens, int64_t local_steps) const {
  // Identical on every shard for one update: the registry refuses a commit otherwise.
  return {{"base_version", base_version}, {"tokens", tokens}, {"local_steps", local_steps}};
}

// Answers for an update already staged / committed / applied. True when answered (and
// `out` filled); sets nothing otherwise.
bool ShardCore::AnswerKnownLocked(const std::string& update_id, PushResult* out) {
  auto d = done_.find(update_id);
  if (d != done_.end()) {
    out->state = d->second.skipped ? UpdateState::kSkipped : UpdateState::kApplied;
    out->seq = d->second.seq;
    out->frames_received = total_frames_;
    return true;
  }
  auto s = staged_.find(update_id);
  if (s != staged_.end() && s->second->seq > 0) {
    out->state = s->second->seq <= version_ ? UpdateState::kApplied : UpdateState::kCommitted;
    out->seq = s->second->seq;
    out->frames_received = total_frames_;
    return true;
  }
  return false;
}

CoreError ShardCore::MarkStagedAndAnswer(const std::string& update_id, PushResult* out) {
  // The caller raised staged_[update_id]->inflight under mu_, so expiry leaves it alone.
  nlohmann::json record;
  {
    std::lock_guard<std::mutex> lock(mu_);
    const auto& s = staged_.at(update_id);
    record = StageRecord(s->base_version, s->tokens, s->local_steps);
  }
  int64_t epoch;
  {
    std::lock_guard<std::mutex> lock(mu_);
    epoch = epoch_;
  }
  auto marked = request_registry_->MarkStaged(update_id, options_.shard_index, epoch, record);
  std::lock_guard<std::mutex> lock(mu_);
  auto& s = staged_.at(update_id);
  --s->inflight;
  out->version = version_;
  out->total_frames = total_frames_;
  out->frames_received = total_frames_;
  if (marked.status().code() == StatusCode::kAborted) {  // this process's lease lapsed or was taken
    CoreError e = CoreError::Make(ShardErrorCode::kFenced, "update " + update_id + " is stored but " +
                                                               marked.status().message() + ": re-read the shard directory");
    e.epoch = epoch_;
    return e;
  }
  if (!marked.ok()) {
    return UnavailableLocked("update " + update_id + " is stored but its stage record could not be written (" +
                       marked.status().ToString() + "): resend a frame");
  }
  if (*marked > 0) {
    s->seq = *marked;
    AnswerKnownLocked(update_id, out);
    return {};
  }
  s->staged_us = NowUs();
  out->state = UpdateState::kStaged;
  out->stage_ttl_ms = options_.ps.stage_ttl_ms;
  return {};
}

CoreError ShardCore::CheckNorm(const std::shared_ptr<ReceivingUpdate>& r, bool stager) {
  double sum_squares;
  {
    std::lock_guard<std::mutex> rl(r->mu);
    if (r->staging && !stager) return {};  // its last frame is in: the stager decides
    sum_squares = r->sum_squares;
  }
  const double norm = std::sqrt(sum_squares);
  std::string message;
  double median;
  bool first;  // another frame's thread may have refused it a moment ago
  {
    std::lock_guard<std::mutex> lock(mu_);
    const std::optional<double> limit = norm_bound_.Limit();
    if (!limit || norm <= *limit) return {};
    median = norm_bound_.median();
    char text[200];
    std::snprintf(text, sizeof(text), "norm %.6g of its slice exceeds %.6g = %g x the median %.6g of the last %ld "
                  "applied updates (ps.norm_bound_factor)", norm, *limit, options_.ps.norm_bound_factor, median,
                  static_cast<long>(norm_bound_.size()));
    message = "update " + r->update_id + " refused: " + text;
    if (receiving_.Find(r->update_id) == r) receiving_.Erase(r->update_id);  // its file goes with it
    first = norm_refusals_.emplace(r->update_id, message).second;
    if (first) {
      norm_refusal_order_.push_back(r->update_id);
      ++norm_refused_;
    }
    while (norm_refusal_order_.size() > kRefusedKept) {
      norm_refusals_.erase(norm_refusal_order_.front());
      norm_refusal_order_.pop_front();
    }
  }
  CoreError e = CoreError::Make(ShardErrorCode::kBadRequest, message);
  if (!first) return e;
  LOG(WARNING) << "shard " << options_.shard_index << ": " << message;
  Metric("refusal", {{"update_id", r->update_id}, {"client", r->client_id}, {"reason", "norm_bound"},
                     {"norm", norm}, {"median", median}, {"factor", options_.ps.norm_bound_factor}});
  e.refusal = "norm_bound";  // recorded once in the registry (Push)
  return e;
}

CoreError ShardCore::StageReceived(const std::shared_ptr<ReceivingUpdate>& r, PushResult* out) {
  // Every frame is here, checked (finite values included) and written (`staging` keeps
  // other threads off): the norm bound on the whole update, then make the file durable
  // under its name.
  CoreError too_large = CheckNorm(r, /*stager=*/true);
  if (!too_large.ok()) return too_large;
  const int64_t start = NowUs();
  Status w = r->file->Finish(r->checksum, r->sum_squares);
  if (!w.ok()) {
    LOG(ERROR) << "staging " << r->update_id << ": " << w.ToString();
    std::lock_guard<std::mutex> lock(mu_);
    receiving_.Erase(r->update_id);  // its file is gone with it: the client pushes it again
    return UnavailableLocked("cannot store update " + r->update_id + " (" + w.ToString() + "): push it again");
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto s = std::make_shared<Staged>();
    s->client_id = r->client_id;
    s->checksums = r->checksum;
    s->bytes = r->bytes;
    s->base_version = r->base_version;
    s->tokens = r->tokens;
    s->local_steps = r->local_steps;
    s->sum_squares = r->sum_squares;
    s->staged_us = NowUs();
    s->inflight = 1;
    staged_[r->update_id] = s;
    receiving_.Erase(r->update_id);
  }
  Metric("stage", {{"update_id", r->update_id},
                   {"client", r->client_id},
                   {"base_version", r->base_version},
                   {"tokens", r->tokens},
                   {"bytes", r->bytes},
                   {"write_ms", (NowUs() - start) / 1000.0}});
  return MarkStagedAndAnswer(r->update_id, out);
}

CoreError ShardCore::Push(const PushArgs& a, PushResult* out) {
  CoreError e = PushFrame(a, out);
  if (!e.refusal.empty() && request_registry_) {
    Refusal refusal;
    refusal.update_id = a.update_id;
    refusal.client = a.client_id;
    refusal.shard = options_.shard_index;
    refusal.reason = e.refusal;
    refusal.detail = e.message;
    Status s = request_registry_->RecordRefusal(refusal);
    if (!s.ok()) LOG(WARNING) << "could not record a refusal: " << s.ToString();
  }
  return e;
}

namespace {

// The id's "<client>/<epoch>/" prefix: an update id belongs to the client (and membership)
// that makes it, so an id cannot be staged under another client's name.
bool IdNamesClient(const std::string& update_id, const std::string& client_id, int64_t client_epoch) {
  const std::string prefix = client_id + "/" + Str(client_epoch) + "/";
  return !client_id.empty() && update_id.size() > prefix.size() && update_id.compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

CoreError ShardCore::AdmitLocked(const std::string& client_id) const {
  if (receiving_.Full()) {
    return UnavailableLocked("receiving " + Str(receiving_.size()) + " updates already (limits.receiving_updates)");
  }
  const ReceiveUsage mine = receiving_.UsageOf(client_id);
  if (mine.updates >= options_.max_receiving_per_client) {
    return UnavailableLocked("client " + client_id + " has " + Str(mine.updates) +
                             " updates being received already (limits.receiving_updates_per_client)");
  }
  int64_t staged = 0, staged_bytes = 0, my_staged = 0, my_staged_bytes = 0;
  for (const auto& [id, st] : staged_) {
    if (st->seq > 0) continue;  // committed: applied soon, then kept only as the replay log
    ++staged;
    staged_bytes += st->bytes;
    if (st->client_id == client_id) {
      ++my_staged;
      my_staged_bytes += st->bytes;
    }
  }
  auto full = [&](const char* what, int64_t have, const char* limit) {
    return UnavailableLocked(std::string(what) + " " + Str(have) + " (" + limit +
                             "): commit or let staged updates expire first");
  };
  if (staged >= options_.max_staged) return full("staged updates", staged, "limits.staged_updates");
  if (staged_bytes >= options_.max_staged_bytes) return full("staged bytes", staged_bytes, "limits.staged_bytes");
  if (my_staged >= options_.max_staged_per_client) {
    return full(("client " + client_id + " has staged updates").c_str(), my_staged, "limits.staged_updates_per_client");
  }
  if (my_staged_bytes >= options_.max_staged_bytes_per_client) {
    return full(("client " + client_id + " has staged bytes").c_str(), my_staged_bytes,
                "limits.staged_bytes_per_client");
  }
  return {};
}

CoreError ShardCore::CheckMember(const PushArgs& a) {
  auto members = request_registry_->Members();
  if (!members.ok()) {
    std::lock_guard<std::mutex> lock(mu_);
    return UnavailableLocked("cannot read the federation's members: " + members.status().ToString());
  }
  for (const Member& m : *members) {
    if (m.name != a.client_id) continue;
    // An epoch below the member's: an update made under an earlier membership of this name,
    // pushed again after a rejoin or restart (docs/client.md, "Fencing and restarts").
    if (a.client_epoch <= m.epoch) return {};
    return CoreError::Make(ShardErrorCode::kNotMember, "client " + a.client_id + " pushes under epoch " +
                                                           Str(a.client_epoch) + "; its membership has epoch " +
                                                           Str(m.epoch));
  }
  return CoreError::Make(ShardErrorCode::kNotMember,
                         "client " + a.client_id + " is not a live member of run " + options_.run_id + ": join first");
}

CoreError ShardCore::PushFrame(const PushArgs& a, PushResult* out) {
  auto bad = [](std::string m) { return CoreError::Make(ShardErrorCode::kBadRequest, std::move(m)); };
  {
    std::lock_guard<std::mutex> lock(mu_);
    CoreError e = CheckHeaderLocked(a.header);
    if (!e.ok()) return e;
    e = NotServingLocked();
    if (!e.ok()) return e;
    if (state_ == ShardState::kDraining) return UnavailableLocked("shard is draining");
    bytes_in_ += static_cast<int64_t>(a.frame.size());
    out->version = version_;
    out->total_frames = total_frames_;
  }
  // Checks of the request alone (the options are immutable).
  if (a.update_id.empty()) return bad("empty update_id");
  if (!IdNamesClient(a.update_id, a.client_id, a.client_epoch)) {
    return bad("update_id '" + a.update_id + "' is not '" + a.client_id + "/" + Str(a.client_epoch) +
               "/<counter>' (client_id/client_epoch/counter)");
  }
  if (a.frame_elements != options_.ps.frame_elements) {
    return bad("frame_elements " + Str(a.frame_elements) + " != the shard's " + Str(options_.ps.frame_elements));
  }
  if (a.total_frames != total_frames_) {
    return bad("total_frames " + Str(a.total_frames) + " != " + Str(total_frames_) + " (ceil(" +
               Str(options_.slice_elements) + " / " + Str(options_.ps.frame_elements) + "))");
  }
  if (a.frame_index < 0 || a.frame_index >= total_frames_) {
    return bad("frame_index " + Str(a.frame_index) + " not in [0, " + Str(total_frames_) + ")");
  }
  if (!CodecFromName(a.codec).ok()) return bad("unknown codec '" + a.codec + "'");
  // The frame is checked before anything is looked up or kept for it: a new update gets an
  // entry only for a frame that belongs exactly where it claims and whose checksum holds,
  // and a resend is compared by that checksum with what was received or staged before.
  // The same scan gives the frame's sum of squares, for the norm bound.
  auto checked = ReceiveTable::CheckFrame(*frame_checker_, a.frame, a.frame_index, options_.ps.frame_elements,
                                          options_.slice_elements);
  if (!checked.ok()) {
    ShardErrorCode code =
        checked.status().code() == StatusCode::kDataLoss ? ShardErrorCode::kDataLoss : ShardErrorCode::kBadRequest;
    return CoreError::Make(code,
                           "frame " + Str(a.frame_index) + " of " + a.update_id + ": " + checked.status().message());
  }
  const uint64_t checksum = checked->header.checksum;
  auto same_scalars = [&](int64_t base, int64_t tokens, int64_t steps) {
    return base == a.base_version && tokens == a.tokens && steps == a.local_steps;
  };
  auto same_sender = [&](const ReceivingUpdate& r) {
    return r.client_id == a.client_id && r.client_epoch == a.client_epoch &&
           same_scalars(r.base_version, r.tokens, r.local_steps);
  };
  const std::string differ = "update " + a.update_id +
                             ": client, epoch, base_version, tokens or local_steps differ from its earlier frames";

  std::shared_ptr<ReceivingUpdate> r;
  bool first_frame = false;  // of an update unknown here
  {
    std::lock_guard<std::mutex> lock(mu_);
    out->version = version_;
    auto st = staged_.find(a.update_id);
    if (st != staged_.end()) {
      const std::vector<uint64_t>& staged_sums = st->second->checksums;
      if (static_cast<int64_t>(staged_sums.size()) == total_frames_ && staged_sums[a.frame_index] != checksum) {
        return bad("frame " + Str(a.frame_index) + " of " + a.update_id +
                   " was staged with other bytes (an update id is never reused)");
      }
    }
    if (AnswerKnownLocked(a.update_id, out)) return {};
    if (st != staged_.end()) {
      if (!same_scalars(st->second->base_version, st->second->tokens, st->second->local_steps)) {
        return bad("update " + a.update_id + " was staged with other base_version/tokens/local_steps");
      }
      if (st->second->expiring) return UnavailableLocked("update " + a.update_id + " is being expired");
      // Re-write the stage record: it may have expired in Redis (a resend means the
      // client still wants it), and a late mark learns the seq of a commit.
      ++st->second->inflight;
    } else {
      if (a.base_version > version_) {
        return bad("base_version " + Str(a.base_version) + " is ahead of this shard's version " + Str(version_));
      }
      if (a.base_version < 0) return bad("negative base_version");
      Status stale = staleness_->Check(version_ - a.base_version);
      if (!stale.ok()) {
        CoreError x = CoreError::Make(ShardErrorCode::kStaleRefused, stale.message());
        x.version = version_;
        x.refusal = "too_stale";
        return x;
      }
      auto refused = norm_refusals_.find(a.update_id);
      if (refused != norm_refusals_.end()) return bad(refused->second);
      r = receiving_.Find(a.update_id);
      if (r) {
        if (!same_sender(*r)) return bad(differ);
      } else {
        CoreError full = AdmitLocked(a.client_id);
        if (!full.ok()) return full;
        first_frame = true;
      }
    }
  }
  if (!r && !first_frame) return MarkStagedAndAnswer(a.update_id, out);

  if (first_frame) {
    // It may have been committed and applied before a restart (the client lost the reply):
    // one lookup per update. Else only a live member may start an update.
    auto c = request_registry_->LookupCommit(a.update_id);
    if (c.ok()) {
      std::lock_guard<std::mutex> lock(mu_);
      out->state = c->seq <= version_ ? UpdateState::kApplied : UpdateState::kCommitted;
      out->seq = c->seq;
      out->frames_received = total_frames_;
      out->version = version_;
      return {};
    }
    if (c.status().code() == StatusCode::kOutOfRange) {
      // Older than its client's newest trimmed commit: applied long ago or given up; the
      // commit would be refused too (docs/registry.md, "Trimming").
      std::lock_guard<std::mutex> lock(mu_);
      CoreError x = CoreError::Make(ShardErrorCode::kStaleRefused, c.status().message());
      x.version = version_;
      x.refusal = "too_stale";
      return x;
    }
    CoreError member = CheckMember(a);
    if (!member.ok()) return member;
    // Its staged file, opened before the lock (unused, and removed, if another connection
    // created the entry meanwhile).
    auto file = staged_store_->Begin(a.update_id, a.client_id, StageRecord(a.base_version, a.tokens, a.local_steps),
                                     total_frames_);
    std::lock_guard<std::mutex> lock(mu_);
    if (AnswerKnownLocked(a.update_id, out)) return {};
    if (staged_.count(a.update_id)) return UnavailableLocked("update " + a.update_id + " changed state: resend");
    r = receiving_.Find(a.update_id);
    if (!r) {
      CoreError full = AdmitLocked(a.client_id);
      if (!full.ok()) return full;
      if (!file.ok()) {
        LOG(ERROR) << "receiving " << a.update_id << ": " << file.status().ToString();
        return UnavailableLocked("cannot store update " + a.update_id + ": " + file.status().ToString());
      }
      r = receiving_.Create(a.update_id, a.client_id, a.client_epoch, a.base_version, a.tokens, a.local_steps,
                            total_frames_, std::move(*file), NowUs());
    }
    if (!same_sender(*r)) return bad(differ);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    const ReceiveUsage mine = receiving_.UsageOf(a.client_id);
    if (mine.bytes + static_cast<int64_t>(a.frame.size()) > options_.max_receiving_bytes_per_client) {
      return UnavailableLocked("client " + a.client_id + " has " + Str(mine.bytes) +
                               " bytes of updates being received (limits.receiving_bytes_per_client)");
    }
  }

  Status write_error;
  FrameOutcome added = ReceiveTable::AcceptFrame(*r, a.frame_index, a.frame, *checked, NowUs(), &write_error);
  if (added == FrameOutcome::kConflict) {
    return bad("frame " + Str(a.frame_index) + " of " + a.update_id + " was received before with other bytes");
  }
  if (added == FrameOutcome::kFailed) {
    LOG(ERROR) << "receiving " << a.update_id << ": " << write_error.ToString();
    std::lock_guard<std::mutex> lock(mu_);
    if (receiving_.Find(a.update_id) == r) receiving_.Erase(a.update_id);  // its file has a hole
    return UnavailableLocked("cannot store frame " + Str(a.frame_index) + " of " + a.update_id + " (" +
                             write_error.ToString() + "): push the update again");
  }
  if (added == FrameOutcome::kAdded) {
    CoreError too_large = CheckNorm(r, /*stager=*/false);
    if (!too_large.ok()) return too_large;
  }
  bool stage = false;
  {
    std::lock_guard<std::mutex> rl(r->mu);
    if (r->received == r->total_frames && !r->staging) {
      r->staging = true;
      stage = true;
    } else {
      out->state = UpdateState::kReceiving;
      out->frames_received = r->received;
      out->total_frames = total_frames_;
    }
  }
  if (stage) return StageReceived(r, out);
  if (a.frame_index == total_frames_ - 1) out->missing_frames = r->Missing();
  return {};
}

// ---- commit_notify / checkpoint / status ------------------------------------------------

CoreError ShardCore::CommitNotify(const CoreHeader& header, const std::string& update_id, int64_t seq) {
  std::lock_guard<std::mutex> lock(mu_);
  CoreError e = CheckHeaderLocked(header);
  if (!e.ok()) return e;
  if (done_.count(update_id)) return {};
  if (staged_.count(update_id) == 0 && seq > version_) {
    return CoreError::Make(ShardErrorCode::kNotStaged,
                           "shard " + Str(options_.shard_index) + " holds no staged slice for " + update_id);
  }
  nudged_ = true;
  apply_cv_.notify_all();
  return {};
}

CoreError ShardCore::Checkpoint(const CoreHeader& header, const std::string& reason, CheckpointResult* out) {
  auto req = std::make_shared<CheckpointRequest>();
  req->reason = reason.empty() ? "request" : reason;
  std::unique_lock<std::mutex> lock(mu_);
  CoreError e = CheckHeaderLocked(header);
  if (!e.ok()) return e;
  e = NotServingLocked();
  if (!e.ok()) return e;
  if (stop_ || !apply_running_) return UnavailableLocked("shard is stopping");
  checkpoint_requests_.push_back(req);
  apply_cv_.notify_all();
  req->cv.wait(lock, [&] { return req->done; });
  if (!req->status.ok()) return CoreError::Make(ShardErrorCode::kInternal, req->status.ToString());
  *out = req->result;
  return {};
}

CoreStatus ShardCore::GetStatus() {
  std::lock_guard<std::mutex> lock(mu_);
  CoreStatus s;
  s.state = fenced_ && state_ != ShardState::kHalted ? ShardState::kFenced : state_;
  s.epoch = epoch_;
  s.fenced = fenced_;
  s.halt_message = halt_message_;
  s.version = version_;
  s.committed_seq = std::max(committed_seq_, version_);
  s.optimizer_steps = optimizer_steps_;
  s.buffered_updates = buffered_updates_;
  s.receiving_updates = static_cast<int32_t>(receiving_.size());
  int32_t staged = 0;
  for (const auto& [id, st] : staged_) {
    if (st->seq == 0) ++staged;
  }
  s.staged_updates = staged;
  s.checkpoint_version = checkpoint_version_;
  s.checkpoint_ms = checkpoint_ms_;
  s.applied_updates = applied_updates_;
  s.skipped_updates = skipped_updates_;
  s.bytes_in = bytes_in_;
  s.bytes_out = bytes_out_;
  s.norm_refused = norm_refused_;
  s.norm_median = norm_bound_.median();
  s.norm_limit = norm_bound_.Limit();
  return s;
}

ShardStats ShardCore::Stats() {
  CoreStatus s = GetStatus();
  ShardStats st;
  st.version = s.version;
  st.applied_updates = s.applied_updates;
  st.bytes_in = s.bytes_in;
  st.bytes_out = s.bytes_out;
  st.last_checkpoint_version = std::max<int64_t>(s.checkpoint_version, 0);
  st.last_checkpoint_ms = s.checkpoint_ms;
  st.norm_refused = s.norm_refused;
  st.norm_median = s.norm_median;
  {
    std::lock_guard<std::mutex> lock(mu_);
    st.oldest_checkpoint_version = oldest_checkpoint_version_;
  }
  return st;
}

std::vector<AppliedRecord> ShardCore::AppliedLog() {
  std::lock_guard<std::mutex> lock(mu_);
  return applied_log_;
}

bool ShardCore::WaitForVersion(int64_t v, int64_t timeout_ms) {
  std::unique_lock<std::mutex> lock(mu_);
  return version_cv_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] { return version_ >= v; });
}

std::pair<int64_t, std::vector<float>> ShardCore::CurrentSlice() { return snapshots_->CopyCurrent(); }

// ---- staging store ----------------------------------------------------------------------

Status ShardCore::IndexStagedFiles() {
  ASSIGN_OR_RETURN(std::vector<StagedUpdate> files, staged_store_->Index());
  for (const StagedUpdate& f : files) {
    auto s = std::make_shared<Staged>();
    s->client_id = f.client_id;
    s->checksums = f.checksums;
    s->bytes = f.bytes;
    s->base_version = f.record["base_version"].get<int64_t>();
    s->tokens = f.record["tokens"].get<int64_t>();
    s->local_steps = f.record["local_steps"].get<int64_t>();
    s->sum_squares = f.sum_squares;
    s->staged_us = NowUs();  // expiry counts afresh from the restart
    auto c = request_registry_->LookupCommit(f.update_id);
    if (c.ok()) {
      s->seq = c->seq;
    } else if (c.status().code() != StatusCode::kNotFound && c.status().code() != StatusCode::kOutOfRange) {
      // kOutOfRange: below its client's trim floor, never committed again; it expires.
      return c.status().WithContext("looking up staged update " + f.update_id);
    }
    std::lock_guard<std::mutex> lock(mu_);
    staged_[f.update_id] = s;
  }
  // The norm bound's window, from the updates the loaded checkpoint holds (the replay log
  // of the kept checkpoints), in commit order; those after it are recorded as they apply.
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<int64_t, double>> applied;
  for (const auto& [id, st] : staged_) {
    if (st->seq > 0 && st->seq <= version_ && st->sum_squares >= 0) applied.emplace_back(st->seq, st->sum_squares);
  }
  std::sort(applied.begin(), applied.end());
  for (const auto& [seq, sum_squares] : applied) norm_bound_.Record(std::sqrt(sum_squares));
  LOG(INFO) << "shard " << options_.shard_index << ": " << files.size() << " staged updates on disk; norm bound over "
            << norm_bound_.size() << " applied updates, median " << norm_bound_.median();
  return Status::Ok();
}

}  // namespace fedps
