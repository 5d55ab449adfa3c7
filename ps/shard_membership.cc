// ShardMembership: see the header.
#include "ps/shard_membership.h"

#include <glog/logging.h>

#include <algorithm>

namespace fedps {

ShardMembership::ShardMembership(ShardCore* core, ShardInfo info, ShardMembershipOptions options)
    : core_(core), info_(std::move(info)), options_(std::move(options)) {}

ShardMembership::~ShardMembership() { Stop(); }

Status ShardMembership::Start() {
  ASSIGN_OR_RETURN(registry_, Registry::Connect(options_.registry));
  ASSIGN_OR_RETURN(int64_t epoch, registry_->RegisterShard(info_, std::chrono::milliseconds(options_.lease_ms)));
  epoch_ = epoch;
  core_->SetEpoch(epoch);
  LOG(INFO) << "shard " << info_.index << " registered at " << info_.address << " with epoch " << epoch;
  heartbeat_thread_ = std::thread([this] { HeartbeatLoop(); });
  return Status::Ok();
}

void ShardMembership::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
    cv_.notify_all();
  }
  if (heartbeat_thread_.joinable()) heartbeat_thread_.join();
}

Status ShardMembership::lost() const {
  std::lock_guard<std::mutex> lock(mu_);
  return lost_;
}

Status ShardMembership::Beat() {
  ShardStats stats = core_->Stats();
  Status s = registry_->ShardHeartbeat(info_.index, epoch_, &stats);
  if (s.code() == StatusCode::kUnavailable) s = registry_->ShardHeartbeat(info_.index, epoch_, &stats);
  return s;
}

void ShardMembership::HeartbeatLoop() {
  const auto period = std::chrono::milliseconds(std::max<int64_t>(options_.lease_ms / 5, 10));
  int64_t failures = 0;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (cv_.wait_for(lock, period, [&] { return stop_; })) return;
    }
    if (lapsed_epoch_ > 0) {
      Reclaim(Aborted("lease of epoch " + std::to_string(lapsed_epoch_) + " lapsed"));
    } else {
      Status s = Beat();
      if (s.ok()) {
        if (failures > 0) LOG(INFO) << "shard " << info_.index << ": heartbeat answered again after " << failures
                                    << " failure(s)";
        failures = 0;
        Trim();
      } else if (s.code() == StatusCode::kAborted) {
        lapsed_epoch_ = epoch_;
        Reclaim(s);
      } else if (failures++ % 20 == 0) {
        LOG(WARNING) << "shard heartbeat: " << s.ToString();
      }
    }
    if (!resumed_) Resume();
    std::lock_guard<std::mutex> lock(mu_);
    if (!lost_.ok()) return;  // another process owns the shard: nothing more to do
  }
}

void ShardMembership::Trim() {
  auto trimmed = registry_->TrimLog(kTrimBatch);
  if (!trimmed.ok()) {
    LOG_EVERY_N(WARNING, 20) << "shard " << info_.index << ": trimming the commit log: " << trimmed.status().ToString();
  } else if (trimmed->trimmed > 0) {
    VLOG(1) << "shard " << info_.index << ": trimmed " << trimmed->trimmed << " log entries; the log starts at seq "
            << trimmed->below;
  }
}

void ShardMembership::Reclaim(const Status& why) {
  core_->Fence("registry: " + why.message());
  auto epoch = registry_->ReclaimShard(info_, std::chrono::milliseconds(options_.lease_ms), lapsed_epoch_);
  if (epoch.ok()) {
    LOG(WARNING) << "shard " << info_.index << ": lease of epoch " << lapsed_epoch_
                 << " lapsed (Redis was away or restarted) and no other process holds the shard: registered "
                    "again as epoch "
                 << *epoch;
    lapsed_epoch_ = 0;
    epoch_ = *epoch;
    resumed_ = false;
    return;
  }
  if (epoch.status().code() == StatusCode::kAborted) {
    Status lost = Aborted("shard " + std::to_string(info_.index) + " epoch " + std::to_string(lapsed_epoch_) +
                          " was fenced: " + epoch.status().message());
    LOG(ERROR) << lost.message();
    std::lock_guard<std::mutex> lock(mu_);
    lost_ = lost;
    return;
  }
  LOG_EVERY_N(WARNING, 20) << "shard " << info_.index << ": registering again: " << epoch.status().ToString();
}

void ShardMembership::Resume() {
  // Fenced, the core applies nothing: its version stays put while the log is compared.
  const int64_t version = core_->GetStatus().version;
  auto log = registry_->ReadLog(version, 0);
  if (!log.ok()) {
    LOG_EVERY_N(WARNING, 20) << "shard " << info_.index << ": reading the commit log: " << log.status().ToString();
    return;  // still fenced; tried again next beat
  }
  resumed_ = true;
  Status s = core_->Resume(epoch_, version, *log);
  if (s.ok()) {
    LOG(WARNING) << "shard " << info_.index << ": serving again as epoch " << epoch_ << " at version " << version
                 << " (commit-log head " << log->head << ")";
  }
}

}  // namespace fedps
