// SnapshotStore: see the header.
#include "ps/snapshots.h"

#include <algorithm>
#include <cstring>
#include <thread>

namespace fedps {

namespace {

struct EncodedFrames {
  std::mutex mu;  // guards all below
  bool done = false;
  Status status;
  std::vector<std::string> frames;
};

}  // namespace

struct SnapshotStore::Snapshot {
  int64_t version = 0;
  std::shared_ptr<const std::vector<float>> data;  // never written while this snapshot lives
  // Guarded by SnapshotStore::mu_: the pulls under way, puller -> the time its pin ends (its
  // last frame request + snapshot_ttl_ms, or a short grace after its last frame), and the
  // last frame request of any pull (0: never pulled).
  std::map<std::string, int64_t> pulls;
  int64_t last_used_us = 0;
  std::mutex mu;                                   // guards cache
  std::map<CodecKind, std::shared_ptr<EncodedFrames>> cache;
};

namespace {

int CopyThreads(int wanted) {
  return wanted > 0 ? wanted : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

// dst = src over a whole slice, in 16 MiB pieces on the pool: one core cannot saturate the
// memory bus, and the slice is GBs at LLM scale.
void ParallelCopy(ThreadPool& pool, const std::vector<float>& src, std::vector<float>& dst) {
  constexpr size_t kPiece = size_t{1} << 22;
  const size_t n = src.size();
  pool.ParallelFor((n + kPiece - 1) / kPiece, [&](size_t i) {
    const size_t begin = i * kPiece;
    std::memcpy(dst.data() + begin, src.data() + begin, std::min(kPiece, n - begin) * sizeof(float));
  });
}

}  // namespace

SnapshotStore::SnapshotStore(Options options, std::map<CodecKind, std::unique_ptr<Codec>> codecs, Clock* clock)
    : options_(options), codecs_(std::move(codecs)), clock_(clock), copy_pool_(CopyThreads(options.copy_threads)) {}

SnapshotStore::~SnapshotStore() = default;

void SnapshotStore::Reset(int64_t version, std::vector<float> slice) {
  auto master = std::make_shared<std::vector<float>>(std::move(slice));
  auto s = std::make_shared<Snapshot>();
  s->version = version;
  s->data = master;
  std::lock_guard<std::mutex> lock(mu_);
  master_ = std::move(master);
  current_ = std::move(s);
  older_.clear();
  writing_ = false;
  published_.notify_all();
}

std::span<const float> SnapshotStore::master() const { return std::span<const float>(*master_); }

bool SnapshotStore::PinnedLocked(Snapshot& s, int64_t now_us) const {
  for (auto it = s.pulls.begin(); it != s.pulls.end();) {
    it = it->second < now_us ? s.pulls.erase(it) : std::next(it);
  }
  return !s.pulls.empty();
}

std::span<float> SnapshotStore::BeginWrite() {
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowMicros();
  // References to the master's buffer besides master_ itself: the current snapshot's, an
  // older snapshot's (a skipped update publishes without writing), an in-flight pull's.
  const bool shared = current_ && current_->data == master_ && master_.use_count() > 2;
  const bool pinned = current_ && PinnedLocked(*current_, now);
  if (current_ && current_->data == master_ && !pinned && !shared && current_.use_count() == 1) {
    writing_ = true;  // pulls of the current version wait for Publish
    current_.reset();
  } else {
    if (pinned) older_[current_->version] = current_;
    // The one copy of this version: into the spare buffer of a released snapshot when there
    // is one (no fresh pages to zero and fault in: ~1 s for a 2.7 GB slice).
    ExpireLocked(now);
    std::shared_ptr<std::vector<float>> reuse = std::move(spare_);
    if (!reuse) reuse = std::make_shared<std::vector<float>>(master_->size());
    ParallelCopy(copy_pool_, *master_, *reuse);
    master_ = std::move(reuse);
  }
  return std::span<float>(*master_);
}

void SnapshotStore::Publish(int64_t version) {
  auto s = std::make_shared<Snapshot>();
  s->version = version;
  s->data = master_;
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t now = clock_->NowMicros();
  if (current_ && current_->version != version && PinnedLocked(*current_, now)) {
    older_[current_->version] = current_;
  }
  current_ = std::move(s);
  writing_ = false;
  ExpireLocked(now);
  published_.notify_all();
}

void SnapshotStore::ExpireLocked(int64_t now_us) {
  auto drop = [&](std::map<int64_t, std::shared_ptr<Snapshot>>::iterator it) {
    // Nobody else holds the snapshot or its buffer (no pull under way, not the master):
    // the buffer may be written again; keep one such buffer for the next copy.
    if (!spare_ && it->second.use_count() == 1 && it->second->data.use_count() == 1) {
      spare_ = std::const_pointer_cast<std::vector<float>>(it->second->data);
    }
    return older_.erase(it);
  };
  for (auto it = older_.begin(); it != older_.end();) {
    if (!PinnedLocked(*it->second, now_us)) {
      it = drop(it);
    } else {
      ++it;
    }
  }
  while (static_cast<int>(older_.size()) > options_.max_pinned_snapshots) {
    auto oldest = older_.begin();
    for (auto it = older_.begin(); it != older_.end(); ++it) {
      if (it->second->last_used_us < oldest->second->last_used_us) oldest = it;
    }
    drop(oldest);
  }
}

SnapshotStore::PinResult SnapshotStore::Pin(std::optional<int64_t> version, const std::string& puller,
                                            int64_t frame_index) {
  std::unique_lock<std::mutex> lock(mu_);
  const int64_t now = clock_->NowMicros();
  PinResult r;
  if (!version.has_value() || (current_ && current_->version == *version)) {
    published_.wait(lock, [&] { return !writing_; });
    if (current_ && (!version.has_value() || current_->version == *version)) r.snapshot = current_;
  } else {
    auto it = older_.find(*version);
    if (it != older_.end() && PinnedLocked(*it->second, now)) r.snapshot = it->second;
  }
  if (r.snapshot) {
    r.snapshot->last_used_us = now;
    // The pull's pin lasts snapshot_ttl_ms past this frame request; after its last frame
    // only a short grace (a lost reply re-asks for that frame), so a finished pull does not
    // keep a whole slice alive for the TTL.
    const int64_t ttl_us = options_.snapshot_ttl_ms * 1000;
    const bool last = frame_index + 1 >= options_.total_frames;
    r.snapshot->pulls[puller] = now + (last ? std::min<int64_t>(ttl_us, kFinishedPullGraceUs) : ttl_us);
    r.version = r.snapshot->version;
  } else {
    r.version = current_ ? current_->version : -1;
  }
  ExpireLocked(now);
  return r;
}

StatusOr<std::string> SnapshotStore::Frame(const std::shared_ptr<Snapshot>& snapshot, CodecKind kind, int64_t index) {
  auto codec = codecs_.find(kind);
  if (codec == codecs_.end()) return InvalidArgument("no encoder for codec " + std::string(CodecKindName(kind)));
  if (index < 0 || index >= options_.total_frames) return InvalidArgument("frame index out of range");
  std::shared_ptr<EncodedFrames> cell;
  {
    std::lock_guard<std::mutex> lock(snapshot->mu);
    auto& slot = snapshot->cache[kind];
    if (!slot) slot = std::make_shared<EncodedFrames>();
    cell = slot;
  }
  std::lock_guard<std::mutex> lock(cell->mu);
  if (!cell->done) {
    auto frames = codec->second->Encode(std::span<const float>(*snapshot->data));
    cell->done = true;
    if (frames.ok()) {
      cell->frames = std::move(frames).value();
      if (static_cast<int64_t>(cell->frames.size()) != options_.total_frames) {
        cell->status = Internal("encoder made " + std::to_string(cell->frames.size()) + " frames, want " +
                                std::to_string(options_.total_frames));
      }
    } else {
      cell->status = frames.status();
    }
  }
  if (!cell->status.ok()) return cell->status;
  return cell->frames[static_cast<size_t>(index)];
}

std::shared_ptr<SnapshotStore::Snapshot> SnapshotStore::Hold() {
  std::lock_guard<std::mutex> lock(mu_);
  return current_;
}

std::span<const float> SnapshotStore::Values(const Snapshot& snapshot) { return std::span<const float>(*snapshot.data); }

std::pair<int64_t, std::vector<float>> SnapshotStore::CopyCurrent() {
  std::unique_lock<std::mutex> lock(mu_);
  published_.wait(lock, [&] { return !writing_; });
  if (!current_) return {-1, {}};
  return {current_->version, *current_->data};
}

bool SnapshotStore::has_spare() {
  std::lock_guard<std::mutex> lock(mu_);
  return spare_ != nullptr;
}

int SnapshotStore::pinned_count() {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int>(older_.size());
}

}  // namespace fedps
