// ShardCore: see the header for the design and the concurrency contract.
#include "ps/shard_core.h"

#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <span>

#include "common/safetensors.h"
#include "common/sha256.h"

namespace fedps {

namespace {

constexpr const char* kCheckpointFormat = "fedps-shard-checkpoint-1";
constexpr const char* kStagedFormat = "fedps-staged-1";
// Checkpoint folders being built, and ones set aside while being replaced.
constexpr const char* kTmpPrefix = ".tmp-";
constexpr const char* kOldPrefix = ".old-";
constexpr int64_t kCommitBatch = 256;

std::string Str(int64_t v) { return std::to_string(v); }

std::string_view AsBytes(const std::vector<float>& v) {
  return std::string_view(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// "bf16", "bf16+zstd" -> bf16 (the zstd stage is implied by every codec).
StatusOr<CodecKind> CodecFromName(const std::string& name) {
  std::string base = name;
  const std::string suffix = "+zstd";
  if (base.size() > suffix.size() && base.compare(base.size() - suffix.size(), suffix.size(), suffix) == 0) {
    base.resize(base.size() - suffix.size());
  }
  return ParseCodecKind(base);
}

StatusOr<int64_t> JsonInt(const nlohmann::json& j, const char* key) {
  if (!j.is_object() || !j.contains(key) || !j[key].is_number_integer()) {
    return DataLoss(std::string("missing integer '") + key + "'");
  }
  return j[key].get<int64_t>();
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
  }
  return "?";
}

struct ShardCore::Snapshot {
  int64_t version = 0;
  std::vector<float> data;
};

struct ShardCore::EncodedFrames {
  std::mutex mu;  // guards all below
  bool done = false;
  Status status;
  std::vector<std::string> frames;
};

struct ShardCore::Pinned {
  std::shared_ptr<const Snapshot> snap;
  int64_t last_used_us = 0;  // guarded by ShardCore::mu_; 0: never pulled
  std::mutex mu;             // guards cache
  std::map<CodecKind, std::shared_ptr<EncodedFrames>> cache;
};

struct ShardCore::Receiving {
  // Immutable after creation.
  std::string update_id;
  std::string client_id;
  int64_t client_epoch = 0;
  int64_t base_version = 0;
  int64_t tokens = 0;
  int64_t local_steps = 0;
  int64_t total_frames = 0;
  // Written by the decoding thread of each frame (disjoint ranges; a frame is decoded by
  // one thread at a time, see frame_state).
  std::vector<float> data;
  std::mutex mu;  // guards all below
  enum : uint8_t { kMissing = 0, kDecoding = 1, kHave = 2 };
  std::vector<uint8_t> frame_state;
  std::vector<uint64_t> frame_checksum;
  int64_t received = 0;
  bool staging = false;  // a thread is staging it
  int64_t last_activity_us = 0;
};

// A staged slice on disk (guarded by ShardCore::mu_).
struct ShardCore::Staged {
  std::string client_id;
  int64_t base_version = 0;
  int64_t tokens = 0;
  int64_t local_steps = 0;
  int64_t staged_us = 0;  // last (re)mark; expiry counts from here
  int inflight = 0;       // MarkStaged calls in flight
  bool expiring = false;  // ReleaseStaged in flight
  int64_t seq = 0;        // committed seq when known, else 0
};

struct ShardCore::CheckpointRequest {
  std::string reason;
  bool done = false;  // guarded by ShardCore::mu_
  Status status;
  CheckpointResult result;
  std::condition_variable cv;
};

// ---- creation ---------------------------------------------------------------------------

ShardCore::ShardCore(ShardCoreOptions options) : options_(std::move(options)), env_(options_.env) {}

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

  for (CodecKind kind : {CodecKind::kFp32, CodecKind::kBf16, CodecKind::kInt8}) {
    CodecOptions co;
    co.kind = kind;
    co.zstd_level = static_cast<int>(o.compression.zstd_level);
    co.threads = static_cast<int>(o.compression.threads);
    co.chunk_elements = o.ps.frame_elements;
    co.int8_block = static_cast<int>(o.compression.int8_block);
    ASSIGN_OR_RETURN(auto codec, Codec::Create(co));
    core->codecs_[kind] = std::move(codec);
  }
  return core;
}

StatusOr<std::unique_ptr<OuterOptimizer>> ShardCore::MakeOptimizer(int64_t reference_tokens) const {
  OuterOptimizerOptions oo;
  oo.name = options_.ps.optimizer;
  oo.lr = options_.ps.outer_lr;
  oo.momentum = options_.ps.momentum;
  oo.dn_period = options_.ps.dn_period;
  oo.buffer_size = options_.ps.buffer_size;
  oo.weight_by_tokens = options_.ps.weight_by_tokens;
  oo.reference_tokens = reference_tokens;
  return OuterOptimizer::Create(oo, options_.slice_elements);
}

std::vector<std::string> ShardCore::codecs() const { return {"fp32", "bf16", "int8"}; }

int64_t ShardCore::NowUs() const { return env_->clock()->NowMicros(); }

std::string ShardCore::StagedPath(const std::string& update_id) const {
  return JoinPath(JoinPath(options_.dir, "staged"), Sha256Hex(update_id).substr(0, 32) + ".safetensors");
}

std::string ShardCore::CheckpointRoot() const { return JoinPath(options_.dir, "checkpoints"); }

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
  RETURN_IF_ERROR(env_->CreateDirs(JoinPath(options_.dir, "staged")));
  RETURN_IF_ERROR(env_->CreateDirs(CheckpointRoot()));
  {
    ASSIGN_OR_RETURN(request_registry_, Registry::Connect(options_.registry));
    ASSIGN_OR_RETURN(apply_registry_, Registry::Connect(options_.registry));
  }

  bool found = false;
  RETURN_IF_ERROR(LoadNewestCheckpoint(&found));
  if (!found) {
    if (!options_.init_slice) return FailedPrecondition("shard has no checkpoint and no initial slice");
    ASSIGN_OR_RETURN(params_, options_.init_slice());
    if (static_cast<int64_t>(params_.size()) != options_.slice_elements) {
      return Internal("initial slice has " + Str(params_.size()) + " values, want " + Str(options_.slice_elements));
    }
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
  PublishSnapshot();

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

void ShardCore::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    apply_cv_.notify_all();
    version_cv_.notify_all();
  }
  if (apply_thread_.joinable()) apply_thread_.join();
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
  } else if (params_.size() == static_cast<size_t>(options_.slice_elements)) {
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
  if (fenced_ || (h.shard_epoch != 0 && h.shard_epoch != epoch_)) {
    CoreError e = CoreError::Make(ShardErrorCode::kFenced,
                                  fenced_ ? "this shard process was fenced: " + fence_message_
                                          : "epoch " + Str(h.shard_epoch) + " is not this shard's (" + Str(epoch_) +
                                                "): re-read the shard directory");
    e.epoch = epoch_;
    return e;
  }
  if (state_ == ShardState::kHalted) {
    return CoreError::Make(ShardErrorCode::kDataLoss, "shard halted: " + halt_message_);
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

void ShardCore::ExpireSnapshotsLocked(int64_t now_us) {
  const int64_t ttl_us = options_.ps.snapshot_ttl_ms * 1000;
  for (auto it = snapshots_.begin(); it != snapshots_.end();) {
    if (now_us - it->second->last_used_us > ttl_us) {
      it = snapshots_.erase(it);
    } else {
      ++it;
    }
  }
  while (static_cast<int>(snapshots_.size()) > options_.max_pinned_snapshots) {
    auto oldest = snapshots_.begin();
    for (auto it = snapshots_.begin(); it != snapshots_.end(); ++it) {
      if (it->second->last_used_us < oldest->second->last_used_us) oldest = it;
    }
    snapshots_.erase(oldest);
  }
}

StatusOr<std::shared_ptr<ShardCore::EncodedFrames>> ShardCore::FramesFor(const std::shared_ptr<Pinned>& pinned,
                                                                         CodecKind kind) {
  std::shared_ptr<EncodedFrames> cell;
  {
    std::lock_guard<std::mutex> lock(pinned->mu);
    auto& slot = pinned->cache[kind];
    if (!slot) slot = std::make_shared<EncodedFrames>();
    cell = slot;
  }
  std::lock_guard<std::mutex> lock(cell->mu);
  if (!cell->done) {
    auto frames = codecs_.at(kind)->Encode(std::span<const float>(pinned->snap->data));
    cell->done = true;
    if (frames.ok()) {
      cell->frames = std::move(frames).value();
      if (static_cast<int64_t>(cell->frames.size()) != total_frames_) {
        cell->status = Internal("encoder made " + Str(cell->frames.size()) + " frames, want " + Str(total_frames_));
      }
    } else {
      cell->status = frames.status();
    }
  }
  if (!cell->status.ok()) return cell->status;
  return cell;
}

CoreError ShardCore::Pull(const PullArgs& args, PullResult* out) {
  std::shared_ptr<Pinned> pinned;
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
    if (!args.version.has_value()) {
      if (args.min_version.has_value() && version_ < *args.min_version) {
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
      pinned = current_;
    } else if (current_ && current_->snap->version == *args.version) {
      pinned = current_;
    } else {
      auto it = snapshots_.find(*args.version);
      if (it == snapshots_.end()) {
        CoreError x = CoreError::Make(ShardErrorCode::kSnapshotExpired,
                                      "snapshot of version " + Str(*args.version) + " is no longer kept (current " +
                                          Str(version_) + "): pull again from frame 0");
        x.version = version_;
        return x;
      }
      pinned = it->second;
    }
    if (!pinned) return UnavailableLocked("no snapshot yet");
    const int64_t now = NowUs();
    pinned->last_used_us = now;
    ExpireSnapshotsLocked(now);
  }
  auto kind = CodecFromName(args.codec);
  if (!kind.ok()) return CoreError::Make(ShardErrorCode::kBadRequest, "unknown codec '" + args.codec + "'");
  auto frames = FramesFor(pinned, *kind);
  if (!frames.ok()) return CoreError::Make(ShardErrorCode::kInternal, "encoding: " + frames.status().ToString());
  out->version = pinned->snap->version;
  out->frame_index = args.frame_index;
  out->total_frames = total_frames_;
  out->frame_elements = options_.ps.frame_elements;
  out->slice_elements = options_.slice_elements;
  out->codec = args.codec;
  out->frame = (*frames)->frames[static_cast<size_t>(args.frame_index)];
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
  auto marked = request_registry_->MarkStaged(update_id, options_.shard_index, record);
  std::lock_guard<std::mutex> lock(mu_);
  auto& s = staged_.at(update_id);
  --s->inflight;
  out->version = version_;
  out->total_frames = total_frames_;
  out->frames_received = total_frames_;
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

CoreError ShardCore::StageReceived(const std::shared_ptr<Receiving>& r, PushResult* out) {
  for (float v : r->data) {
    if (!std::isfinite(v)) {
      std::lock_guard<std::mutex> lock(mu_);
      receiving_.erase(r->update_id);
      return CoreError::Make(ShardErrorCode::kBadRequest,
                             "update " + r->update_id + " holds NaN or infinite values: dropped");
    }
  }
  const int64_t start = NowUs();
  Status w = WriteStaged(r->update_id, StageRecord(r->base_version, r->tokens, r->local_steps), r->data);
  if (!w.ok()) {
    LOG(ERROR) << "staging " << r->update_id << ": " << w.ToString();
    std::lock_guard<std::mutex> rl(r->mu);
    r->staging = false;
    return CoreError::Make(ShardErrorCode::kInternal, "cannot store update " + r->update_id + ": " + w.ToString());
  }
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto s = std::make_shared<Staged>();
    s->client_id = r->client_id;
    s->base_version = r->base_version;
    s->tokens = r->tokens;
    s->local_steps = r->local_steps;
    s->staged_us = NowUs();
    s->inflight = 1;
    staged_[r->update_id] = s;
    receiving_.erase(r->update_id);
  }
  Metric("stage", {{"update_id", r->update_id},
                   {"client", r->client_id},
                   {"base_version", r->base_version},
                   {"tokens", r->tokens},
                   {"write_ms", (NowUs() - start) / 1000.0}});
  return MarkStagedAndAnswer(r->update_id, out);
}

CoreError ShardCore::Push(const PushArgs& a, PushResult* out) {
  CoreError e = PushFrame(a, out);
  if (e.code == ShardErrorCode::kStaleRefused && request_registry_) {
    Refusal refusal;
    refusal.update_id = a.update_id;
    refusal.client = a.client_id;
    refusal.shard = options_.shard_index;
    refusal.reason = "too_stale";
    refusal.detail = e.message;
    Status s = request_registry_->RecordRefusal(refusal);
    if (!s.ok()) LOG(WARNING) << "could not record a refusal: " << s.ToString();
  }
  return e;
}

CoreError ShardCore::PushFrame(const PushArgs& a, PushResult* out) {
  std::shared_ptr<Receiving> r;
  bool maybe_committed = false;  // first frame of an update unknown here
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
    auto bad = [](std::string m) { return CoreError::Make(ShardErrorCode::kBadRequest, std::move(m)); };
    if (a.update_id.empty()) return bad("empty update_id");
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
    if (AnswerKnownLocked(a.update_id, out)) return {};

    auto same_scalars = [&](int64_t base, int64_t tokens, int64_t steps) {
      return base == a.base_version && tokens == a.tokens && steps == a.local_steps;
    };
    auto st = staged_.find(a.update_id);
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
        return x;
      }
      auto it = receiving_.find(a.update_id);
      if (it != receiving_.end()) {
        r = it->second;
        if (!same_scalars(r->base_version, r->tokens, r->local_steps)) {
          return bad("update " + a.update_id + ": base_version/tokens/local_steps differ from its earlier frames");
        }
      } else {
        if (static_cast<int>(receiving_.size()) >= options_.max_receiving) {
          return UnavailableLocked("receiving " + Str(receiving_.size()) + " updates already");
        }
        maybe_committed = true;
      }
    }
  }
  if (!r && !maybe_committed) return MarkStagedAndAnswer(a.update_id, out);

  if (maybe_committed) {
    // A first frame of an update this shard does not know: it may have been committed
    // and applied before a restart (the client lost the reply). One lookup per update.
    auto c = request_registry_->LookupCommit(a.update_id);
    std::lock_guard<std::mutex> lock(mu_);
    if (c.ok()) {
      out->state = c->seq <= version_ ? UpdateState::kApplied : UpdateState::kCommitted;
      out->seq = c->seq;
      out->frames_received = total_frames_;
      out->version = version_;
      return {};
    }
    if (AnswerKnownLocked(a.update_id, out)) return {};
    if (staged_.count(a.update_id)) return UnavailableLocked("update " + a.update_id + " changed state: resend");
    auto it = receiving_.find(a.update_id);
    if (it != receiving_.end()) {
      r = it->second;
    } else {
      if (static_cast<int>(receiving_.size()) >= options_.max_receiving) {
        return UnavailableLocked("receiving " + Str(receiving_.size()) + " updates already");
      }
      r = std::make_shared<Receiving>();
      r->update_id = a.update_id;
      r->client_id = a.client_id;
      r->client_epoch = a.client_epoch;
      r->base_version = a.base_version;
      r->tokens = a.tokens;
      r->local_steps = a.local_steps;
      r->total_frames = total_frames_;
      r->data.assign(static_cast<size_t>(options_.slice_elements), 0.0f);
      r->frame_state.assign(static_cast<size_t>(total_frames_), Receiving::kMissing);
      r->frame_checksum.assign(static_cast<size_t>(total_frames_), 0);
      r->last_activity_us = NowUs();
      receiving_[a.update_id] = r;
    }
    if (r->base_version != a.base_version || r->tokens != a.tokens || r->local_steps != a.local_steps) {
      return CoreError::Make(ShardErrorCode::kBadRequest,
                             "update " + a.update_id + ": base_version/tokens/local_steps differ from its earlier frames");
    }
  }

  // Check where the frame claims to belong before decoding into the slice buffer.
  auto header = Codec::PeekHeader(a.frame);
  if (!header.ok()) {
    return CoreError::Make(ShardErrorCode::kDataLoss, "frame " + Str(a.frame_index) + " of " + a.update_id + ": " +
                                                          header.status().message());
  }
  const uint64_t want_offset = static_cast<uint64_t>(a.frame_index * options_.ps.frame_elements);
  const uint64_t want_count = static_cast<uint64_t>(
      std::min(options_.ps.frame_elements, options_.slice_elements - a.frame_index * options_.ps.frame_elements));
  if (header->offset != want_offset || header->count != want_count ||
      header->slice_length != static_cast<uint64_t>(options_.slice_elements)) {
    return CoreError::Make(ShardErrorCode::kBadRequest,
                           "frame " + Str(a.frame_index) + " covers [" + std::to_string(header->offset) + ", +" +
                               std::to_string(header->count) + ") of " + std::to_string(header->slice_length) +
                               ", want [" + std::to_string(want_offset) + ", +" + std::to_string(want_count) + ") of " +
                               Str(options_.slice_elements));
  }
  const size_t fi = static_cast<size_t>(a.frame_index);
  auto answer_receiving = [&](int64_t received) {
    out->state = UpdateState::kReceiving;
    out->frames_received = received;
    out->total_frames = total_frames_;
  };
  bool decode = false;
  {
    std::lock_guard<std::mutex> rl(r->mu);
    r->last_activity_us = NowUs();
    if (r->frame_state[fi] == Receiving::kHave) {
      if (r->frame_checksum[fi] != header->checksum) {
        return CoreError::Make(ShardErrorCode::kBadRequest, "frame " + Str(a.frame_index) + " of " + a.update_id +
                                                                " was received before with other bytes");
      }
    } else if (r->frame_state[fi] == Receiving::kMissing) {
      r->frame_state[fi] = Receiving::kDecoding;
      decode = true;
    }
  }
  if (decode) {
    Status d = codecs_.at(header->kind)->DecodeFrame(a.frame, std::span<float>(r->data));
    std::lock_guard<std::mutex> rl(r->mu);
    if (!d.ok()) {
      r->frame_state[fi] = Receiving::kMissing;
      ShardErrorCode code =
          d.code() == StatusCode::kDataLoss ? ShardErrorCode::kDataLoss : ShardErrorCode::kBadRequest;
      return CoreError::Make(code, "frame " + Str(a.frame_index) + " of " + a.update_id + ": " + d.message());
    }
    r->frame_state[fi] = Receiving::kHave;
    r->frame_checksum[fi] = header->checksum;
    ++r->received;
  }
  bool stage = false;
  {
    std::lock_guard<std::mutex> rl(r->mu);
    if (r->received == r->total_frames && !r->staging) {
      r->staging = true;
      stage = true;
    } else {
      answer_receiving(r->received);
      if (a.frame_index == total_frames_ - 1) {
        std::vector<int64_t> missing;
        for (size_t i = 0; i < r->frame_state.size(); ++i) {
          if (r->frame_state[i] != Receiving::kHave) missing.push_back(static_cast<int64_t>(i));
        }
        out->missing_frames = std::move(missing);
      }
    }
  }
  if (stage) return StageReceived(r, out);
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
  s.state = state_;
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

std::pair<int64_t, std::vector<float>> ShardCore::CurrentSlice() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!current_) return {version_, {}};
  return {current_->snap->version, current_->snap->data};
}

// ---- staging store ----------------------------------------------------------------------

Status ShardCore::WriteStaged(const std::string& update_id, const nlohmann::json& record,
                              const std::vector<float>& delta) {
  TensorRef t;
  t.dtype = DType::kF32;
  t.shape = {static_cast<int64_t>(delta.size())};
  t.data = delta.data();
  t.bytes = delta.size() * sizeof(float);
  std::map<std::string, std::string> meta = {
      {"format", kStagedFormat},
      {"update_id", update_id},
      {"record", record.dump()},
      {"shard_index", Str(options_.shard_index)},
      {"slice_begin", Str(options_.slice_begin)},
      {"slice_elements", Str(options_.slice_elements)},
      {"sha256", Sha256Hex(AsBytes(delta))},
  };
  return WriteSafetensors(StagedPath(update_id), {{"delta", t}}, meta, env_);
}

StatusOr<std::vector<float>> ShardCore::ReadStaged(const std::string& update_id) {
  const std::string path = StagedPath(update_id);
  if (!env_->Exists(path)) return DataLoss("staged slice of " + update_id + " is missing (" + path + ")");
  auto file = ReadSafetensors(path, env_);
  if (!file.ok()) return DataLoss("staged slice of " + update_id + ": " + file.status().message());
  auto meta = [&](const char* k) {
    auto it = file->metadata.find(k);
    return it == file->metadata.end() ? std::string() : it->second;
  };
  if (meta("update_id") != update_id) {
    return DataLoss("staged file " + path + " holds '" + meta("update_id") + "', not " + update_id);
  }
  const TensorBytes* t = file->Find("delta");
  if (t == nullptr || t->dtype != DType::kF32 || t->numel() != options_.slice_elements) {
    return DataLoss("staged file " + path + ": no F32 'delta' of " + Str(options_.slice_elements) + " values");
  }
  if (Sha256Hex(t->data) != meta("sha256")) return DataLoss("staged file " + path + ": checksum mismatch");
  std::vector<float> out(static_cast<size_t>(options_.slice_elements));
  std::memcpy(out.data(), t->data.data(), t->data.size());
  return out;
}

Status ShardCore::IndexStagedFiles() {
  const std::string dir = JoinPath(options_.dir, "staged");
  ASSIGN_OR_RETURN(auto names, env_->ListDir(dir));
  int kept = 0;
  for (const std::string& name : names) {
    const std::string path = JoinPath(dir, name);
    if (name.find(".tmp.") != std::string::npos) {  // a write that never finished
      env_->RemoveFile(path).IgnoreError();
      continue;
    }
    if (name.size() < 12 || name.substr(name.size() - 12) != ".safetensors") continue;
    auto index = ReadSafetensorsIndex(path);
    if (!index.ok()) {
      // Kept: if its update is committed, applying it halts the shard with this reason.
      LOG(ERROR) << "staged file " << path << " is unreadable: " << index.status().ToString();
      continue;
    }
    auto m = [&](const char* k) {
      auto it = index->metadata.find(k);
      return it == index->metadata.end() ? std::string() : it->second;
    };
    std::string update_id = m("update_id");
    auto record = nlohmann::json::parse(m("record"), nullptr, false);
    auto base = JsonInt(record, "base_version");
    auto tokens = JsonInt(record, "tokens");
    auto steps = JsonInt(record, "local_steps");
    if (update_id.empty() || !base.ok() || !tokens.ok() || !steps.ok() || StagedPath(update_id) != path) {
      LOG(ERROR) << "staged file " << path << " has bad metadata";
      continue;
    }
    auto s = std::make_shared<Staged>();
    s->base_version = *base;
    s->tokens = *tokens;
    s->local_steps = *steps;
    s->staged_us = NowUs();  // expiry counts afresh from the restart
    auto c = request_registry_->LookupCommit(update_id);
    if (c.ok()) {
      s->seq = c->seq;
    } else if (c.status().code() != StatusCode::kNotFound) {
      return c.status().WithContext("looking up staged update " + update_id);
    }
    std::lock_guard<std::mutex> lock(mu_);
    staged_[update_id] = s;
    ++kept;
  }
  LOG(INFO) << "shard " << options_.shard_index << ": " << kept << " staged slices on disk";
  return Status::Ok();
}

// ---- apply thread -----------------------------------------------------------------------

void ShardCore::PublishSnapshot() {
  auto snap = std::make_shared<Snapshot>();
  snap->data = params_;
  auto pinned = std::make_shared<Pinned>();
  std::lock_guard<std::mutex> lock(mu_);
  snap->version = version_;
  pinned->snap = snap;
  if (current_ && current_->last_used_us > 0 && current_->snap->version != version_) {
    snapshots_[current_->snap->version] = current_;
  }
  current_ = pinned;
  ExpireSnapshotsLocked(NowUs());
  version_cv_.notify_all();
}

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
  // The staged slice must exist even for a skip: its absence means lost data.
  auto delta = ReadStaged(c.update_id);
  if (!delta.ok()) {
    Halt("committed update " + c.update_id + " (seq " + Str(c.seq) + "): " + delta.status().message());
    return false;
  }
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
        auto applied = optimizer_->Apply(std::span<float>(params_), std::span<const float>(*delta), weight);
        if (!applied.ok()) skip_reason = applied.status().message();
      }
    }
  }
  const bool skipped = !skip_reason.empty();
  if (skipped) {
    LOG(WARNING) << "shard " << options_.shard_index << ": skipping seq " << c.seq << " (" << c.update_id
                 << "): " << skip_reason;
  }
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
  }
  PublishSnapshot();
  nlohmann::json m = {{"seq", c.seq},
                      {"update_id", c.update_id},
                      {"client", c.client},
                      {"skipped", skipped},
                      {"weight", weight},
                      {"apply_ms", (NowUs() - start) / 1000.0}};
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
      env_->RemoveFile(StagedPath(id)).IgnoreError();
      LOG(INFO) << "shard " << options_.shard_index << ": dropped expired staged update " << id;
      Metric("stage_expired", {{"update_id", id}});
    }
  }
}

void ShardCore::DropIdleReceiving() {
  const int64_t now = NowUs();
  std::lock_guard<std::mutex> lock(mu_);
  for (auto it = receiving_.begin(); it != receiving_.end();) {
    bool drop;
    {
      std::lock_guard<std::mutex> rl(it->second->mu);
      drop = !it->second->staging && now - it->second->last_activity_us > options_.receive_timeout_ms * 1000;
    }
    if (drop) {
      LOG(INFO) << "shard " << options_.shard_index << ": dropped idle partial update " << it->first;
      it = receiving_.erase(it);
    } else {
      ++it;
    }
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
    ExpireSnapshotsLocked(NowUs());
  }
}

// ---- checkpoints ------------------------------------------------------------------------

std::vector<std::string> ShardCore::CheckpointFolders() {
  std::vector<std::string> out;
  auto names = env_->ListDir(CheckpointRoot());
  if (!names.ok()) return out;
  for (const std::string& n : *names) {
    // "v-" + 12 digits
    if (n.size() == 14 && n.rfind("v-", 0) == 0 &&
        std::all_of(n.begin() + 2, n.end(), [](char c) { return c >= '0' && c <= '9'; })) {
      out.push_back(n);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

StatusOr<CheckpointResult> ShardCore::WriteCheckpoint(const std::string& reason) {
  const int64_t start = NowUs();
  int64_t version, applied, skipped, checkpoint_version;
  {
    std::lock_guard<std::mutex> lock(mu_);
    version = version_;
    checkpoint_version = checkpoint_version_;
    applied = applied_updates_;
    skipped = skipped_updates_;
  }
  char name[32];
  std::snprintf(name, sizeof(name), "v-%012" PRId64, version);
  const std::string root = CheckpointRoot();
  const std::string folder = JoinPath(root, name);
  if (version == checkpoint_version && env_->Exists(JoinPath(folder, "meta.json"))) {
    // This process wrote or loaded (and verified) the checkpoint of this version, and
    // nothing was applied since: the folder already holds this exact state.
    CheckpointResult r;
    r.version = version;
    r.optimizer_steps = optimizer_ ? optimizer_->steps() : 0;
    r.path = folder;
    LOG(INFO) << "shard " << options_.shard_index << ": checkpoint " << folder << " is current (" << reason << ")";
    Metric("checkpoint", {{"version", version}, {"reason", reason}, {"path", folder}, {"ms", 0}, {"unchanged", true}});
    return r;
  }
  const std::string tmp = JoinPath(root, std::string(kTmpPrefix) + name);
  env_->RemoveAll(tmp).IgnoreError();
  RETURN_IF_ERROR(env_->CreateDirs(tmp));

  std::vector<std::pair<std::string, TensorRef>> tensors;
  auto add = [&](const std::string& n, std::span<const float> data) {
    TensorRef t;
    t.dtype = DType::kF32;
    t.shape = {static_cast<int64_t>(data.size())};
    t.data = data.data();
    t.bytes = data.size() * sizeof(float);
    tensors.emplace_back(n, t);
  };
  add("slice", std::span<const float>(params_));
  if (optimizer_) {
    for (const auto& [n, data] : optimizer_->StateTensors()) add("optimizer." + n, data);
  }
  RETURN_IF_ERROR(WriteSafetensors(JoinPath(tmp, "slice.safetensors"), tensors, {{"version", Str(version)}}, env_));
  nlohmann::json state = {{"format", kCheckpointFormat},
                          {"version", version},
                          {"run_id", options_.run_id},
                          {"layout_hash", options_.layout_hash},
                          {"shard_index", options_.shard_index},
                          {"num_shards", options_.num_shards},
                          {"slice_begin", options_.slice_begin},
                          {"slice_elements", options_.slice_elements},
                          {"optimizer_name", options_.ps.optimizer},
                          {"optimizer", optimizer_ ? optimizer_->StateJson() : nlohmann::json()},
                          {"reference_tokens", reference_tokens_},
                          {"applied_updates", applied},
                          {"skipped_updates", skipped},
                          {"reason", reason},
                          {"wall_ms", env_->clock()->WallMicros() / 1000}};
  RETURN_IF_ERROR(env_->WriteFileAtomic(JoinPath(tmp, "state.json"), state.dump(2)));
  nlohmann::json meta = {{"format", kCheckpointFormat}, {"version", version}, {"files", nlohmann::json::object()}};
  for (const char* f : {"slice.safetensors", "state.json"}) {
    ASSIGN_OR_RETURN(std::string sha, Sha256File(JoinPath(tmp, f)));
    meta["files"][f] = sha;
  }
  RETURN_IF_ERROR(env_->WriteFileAtomic(JoinPath(tmp, "meta.json"), meta.dump(2)));
  // A folder of this version that this process did not verify (an unverifiable leftover,
  // or one written before a restart that replayed to the same version): set it aside,
  // rename the new one in, then remove the old one, so that some folder holds the
  // version at every instant. RecoverCheckpointRoot finishes the job after a crash.
  const std::string aside = JoinPath(root, std::string(kOldPrefix) + name);
  const bool replace = env_->Exists(folder);
  if (replace) {
    RETURN_IF_ERROR(env_->RemoveAll(aside));
    RETURN_IF_ERROR(env_->Rename(folder, aside));
  }
  RETURN_IF_ERROR(env_->Rename(tmp, folder));
  RETURN_IF_ERROR(env_->SyncDir(root));
  if (replace) {
    Status removed = env_->RemoveAll(aside);
    if (!removed.ok()) LOG(WARNING) << "removing the replaced checkpoint: " << removed.ToString();
  }

  CheckpointResult r;
  r.version = version;
  r.optimizer_steps = optimizer_ ? optimizer_->steps() : 0;
  r.path = folder;
  r.duration_ms = (NowUs() - start) / 1000;
  {
    std::lock_guard<std::mutex> lock(mu_);
    checkpoint_version_ = version;
    checkpoint_ms_ = env_->clock()->WallMicros() / 1000;
  }
  applied_since_checkpoint_ = 0;
  PruneAfterCheckpoint();
  LOG(INFO) << "shard " << options_.shard_index << ": checkpoint " << folder << " (" << reason << ", "
            << r.duration_ms << " ms)";
  Metric("checkpoint", {{"version", version}, {"reason", reason}, {"path", folder}, {"ms", r.duration_ms}});
  if (apply_registry_) {
    auto ev = apply_registry_->AddEvent("shard_checkpoint",
                                        {{"shard", options_.shard_index}, {"version", version}, {"reason", reason}});
    if (!ev.ok()) LOG(WARNING) << "event: " << ev.status().ToString();
  }
  return r;
}

void ShardCore::PruneAfterCheckpoint() {
  std::vector<std::string> folders = CheckpointFolders();
  while (static_cast<int>(folders.size()) > options_.keep_checkpoints) {
    env_->RemoveAll(JoinPath(CheckpointRoot(), folders.front())).IgnoreError();
    folders.erase(folders.begin());
  }
  if (folders.empty()) return;
  // Staged slices are the log the kept checkpoints replay from: keep those above the
  // oldest kept checkpoint's version.
  const int64_t oldest = std::stoll(folders.front().substr(2));
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
  for (const std::string& id : remove) env_->RemoveFile(StagedPath(id)).IgnoreError();
}

Status ShardCore::LoadCheckpoint(const std::string& folder) {
  ASSIGN_OR_RETURN(std::string meta_text, env_->ReadFile(JoinPath(folder, "meta.json")));
  auto meta = nlohmann::json::parse(meta_text, nullptr, false);
  if (!meta.is_object() || !meta.contains("files") || !meta["files"].is_object()) {
    return DataLoss(folder + ": bad meta.json");
  }
  for (const char* f : {"slice.safetensors", "state.json"}) {
    if (!meta["files"].contains(f) || !meta["files"][f].is_string()) return DataLoss(folder + ": meta.json lacks " + f);
    ASSIGN_OR_RETURN(std::string sha, Sha256File(JoinPath(folder, f)));
    if (sha != meta["files"][f].get<std::string>()) return DataLoss(folder + "/" + f + ": checksum mismatch");
  }
  ASSIGN_OR_RETURN(std::string state_text, env_->ReadFile(JoinPath(folder, "state.json")));
  auto state = nlohmann::json::parse(state_text, nullptr, false);
  if (!state.is_object()) return DataLoss(folder + ": bad state.json");
  ASSIGN_OR_RETURN(int64_t version, JsonInt(state, "version"));
  // A checkpoint of another run / layout / slice is not a damaged file: refuse to start.
  auto same = [&](const char* k, const nlohmann::json& want) -> Status {
    if (!state.contains(k) || state[k] != want) {
      return FailedPrecondition(folder + ": " + k + " is " + (state.contains(k) ? state[k].dump() : "absent") +
                                ", this shard runs with " + want.dump() + " (wrong --dir?)");
    }
    return Status::Ok();
  };
  RETURN_IF_ERROR(same("run_id", options_.run_id));
  RETURN_IF_ERROR(same("layout_hash", options_.layout_hash));
  RETURN_IF_ERROR(same("shard_index", options_.shard_index));
  RETURN_IF_ERROR(same("slice_begin", options_.slice_begin));
  RETURN_IF_ERROR(same("slice_elements", options_.slice_elements));
  RETURN_IF_ERROR(same("optimizer_name", options_.ps.optimizer));

  ASSIGN_OR_RETURN(auto file, ReadSafetensors(JoinPath(folder, "slice.safetensors"), env_));
  const TensorBytes* slice = file.Find("slice");
  if (slice == nullptr || slice->dtype != DType::kF32 || slice->numel() != options_.slice_elements) {
    return DataLoss(folder + ": no F32 'slice' of " + Str(options_.slice_elements) + " values");
  }
  std::vector<float> params(static_cast<size_t>(options_.slice_elements));
  std::memcpy(params.data(), slice->data.data(), slice->data.size());

  int64_t ref = state.value("reference_tokens", int64_t{0});
  std::unique_ptr<OuterOptimizer> opt;
  if (!state["optimizer"].is_null()) {
    ASSIGN_OR_RETURN(opt, MakeOptimizer(ref > 0 ? ref : 1));
    std::vector<std::vector<float>> storage;
    OuterOptimizer::NamedTensors views;
    const std::string prefix = "optimizer.";
    storage.reserve(file.tensors.size());
    for (const auto& [n, t] : file.tensors) {
      if (n.rfind(prefix, 0) != 0) continue;
      if (t.dtype != DType::kF32) return DataLoss(folder + ": " + n + " is not F32");
      storage.emplace_back(static_cast<size_t>(t.numel()));
      std::memcpy(storage.back().data(), t.data.data(), t.data.size());
      views.emplace_back(n.substr(prefix.size()), std::span<const float>(storage.back()));
    }
    RETURN_IF_ERROR(opt->LoadState(state["optimizer"], views));
  } else if (!options_.ps.weight_by_tokens || options_.ps.reference_tokens > 0) {
    ASSIGN_OR_RETURN(opt, MakeOptimizer(options_.ps.reference_tokens > 0 ? options_.ps.reference_tokens : 1));
    ref = options_.ps.reference_tokens;
  }
  params_ = std::move(params);
  optimizer_ = std::move(opt);
  reference_tokens_ = ref;
  std::lock_guard<std::mutex> lock(mu_);
  version_ = version;
  checkpoint_version_ = version;
  checkpoint_ms_ = state.value("wall_ms", int64_t{0});
  applied_updates_ = state.value("applied_updates", int64_t{0});
  skipped_updates_ = state.value("skipped_updates", int64_t{0});
  optimizer_steps_ = optimizer_ ? optimizer_->steps() : 0;
  buffered_updates_ = optimizer_ ? static_cast<int32_t>(optimizer_->pending()) : 0;
  return Status::Ok();
}

Status ShardCore::RecoverCheckpointRoot() {
  const std::string root = CheckpointRoot();
  ASSIGN_OR_RETURN(auto names, env_->ListDir(root));
  for (const std::string& n : names) {
    const std::string path = JoinPath(root, n);
    if (n.rfind(kTmpPrefix, 0) == 0) {  // a checkpoint that was never finished
      RETURN_IF_ERROR(env_->RemoveAll(path));
    } else if (n.rfind(kOldPrefix, 0) == 0) {
      // Set aside while its replacement was renamed in: keep it only if that never happened.
      const std::string original = JoinPath(root, n.substr(std::strlen(kOldPrefix)));
      if (env_->Exists(original)) {
        RETURN_IF_ERROR(env_->RemoveAll(path));
      } else {
        RETURN_IF_ERROR(env_->Rename(path, original));
      }
    }
  }
  return Status::Ok();
}

Status ShardCore::LoadNewestCheckpoint(bool* found) {
  *found = false;
  RETURN_IF_ERROR(RecoverCheckpointRoot());
  std::vector<std::string> folders = CheckpointFolders();
  for (auto it = folders.rbegin(); it != folders.rend(); ++it) {
    const std::string folder = JoinPath(CheckpointRoot(), *it);
    Status s = LoadCheckpoint(folder);
    if (s.ok()) {
      *found = true;
      LOG(INFO) << "shard " << options_.shard_index << ": loaded checkpoint " << folder;
      return Status::Ok();
    }
    if (s.code() == StatusCode::kFailedPrecondition) return s;
    LOG(WARNING) << "shard " << options_.shard_index << ": skipping checkpoint " << folder << ": " << s.ToString();
  }
  if (!folders.empty()) {
    // Checkpoints exist but none verifies: starting from the initial model would silently
    // lose every update before the replayable log. The operator decides.
    return DataLoss("no checkpoint under " + CheckpointRoot() + " verifies");
  }
  return Status::Ok();
}

}  // namespace fedps
