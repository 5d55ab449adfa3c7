// ReceiveTable: see the header.
#include "ps/receive_table.h"

#include <algorithm>

namespace fedps {

std::vector<int64_t> ReceivingUpdate::Missing() {
  std::lock_guard<std::mutex> lock(mu);
  std::vector<int64_t> out;
  for (size_t i = 0; i < frames.size(); ++i) {
    if (frames[i] == Frame::kMissing) out.push_back(static_cast<int64_t>(i));
  }
  return out;
}

std::shared_ptr<ReceivingUpdate> ReceiveTable::Find(const std::string& update_id) const {
  auto it = map_.find(update_id);
  return it == map_.end() ? nullptr : it->second;
}

ReceiveUsage ReceiveTable::UsageOf(const std::string& client_id) const {
  ReceiveUsage u;
  for (const auto& [id, r] : map_) {
    if (r->client_id != client_id) continue;
    std::lock_guard<std::mutex> lock(r->mu);
    ++u.updates;
    u.bytes += r->bytes;
  }
  return u;
}

std::shared_ptr<ReceivingUpdate> ReceiveTable::Create(const std::string& update_id, const std::string& client_id,
                                                      int64_t client_epoch, int64_t base_version, int64_t tokens,
                                                      int64_t local_steps, int64_t total_frames,
                                                      std::unique_ptr<StagedWriter> file, int64_t now_us) {
  auto r = std::make_shared<ReceivingUpdate>();
  r->update_id = update_id;
  r->client_id = client_id;
  r->client_epoch = client_epoch;
  r->base_version = base_version;
  r->tokens = tokens;
  r->local_steps = local_steps;
  r->total_frames = total_frames;
  r->file = std::move(file);
  r->frames.assign(static_cast<size_t>(total_frames), ReceivingUpdate::Frame::kMissing);
  r->checksum.assign(static_cast<size_t>(total_frames), 0);
  r->last_activity_us = now_us;
  map_[update_id] = r;
  return r;
}

std::vector<std::string> ReceiveTable::DropIdle(int64_t now_us, int64_t timeout_us) {
  std::vector<std::string> dropped;
  for (auto it = map_.begin(); it != map_.end();) {
    bool drop;
    {
      std::lock_guard<std::mutex> lock(it->second->mu);
      drop = !it->second->staging && now_us - it->second->last_activity_us > timeout_us;
    }
    if (drop) {
      dropped.push_back(it->first);
      it = map_.erase(it);
    } else {
      ++it;
    }
  }
  return dropped;
}

StatusOr<CheckedFrame> ReceiveTable::CheckFrame(Codec& codec, std::string_view frame, int64_t frame_index,
                                                int64_t frame_elements, int64_t slice_elements) {
  ASSIGN_OR_RETURN(FrameHeader h, Codec::PeekHeader(frame));  // bounds, raw and zstd-bound sizes
  const uint64_t want_offset = static_cast<uint64_t>(frame_index * frame_elements);
  const uint64_t want_count =
      static_cast<uint64_t>(std::min(frame_elements, slice_elements - frame_index * frame_elements));
  if (h.offset != want_offset || h.count != want_count || h.slice_length != static_cast<uint64_t>(slice_elements)) {
    return InvalidArgument("frame " + std::to_string(frame_index) + " covers [" + std::to_string(h.offset) + ", +" +
                           std::to_string(h.count) + ") of " + std::to_string(h.slice_length) + ", want [" +
                           std::to_string(want_offset) + ", +" + std::to_string(want_count) + ") of " +
                           std::to_string(slice_elements));
  }
  CheckedFrame checked{h, 0};
  RETURN_IF_ERROR(codec.CheckFrame(frame, static_cast<uint64_t>(slice_elements), &checked.sum_squares));
  return checked;
}

FrameOutcome ReceiveTable::AcceptFrame(ReceivingUpdate& r, int64_t frame_index, std::string_view frame,
                                       const CheckedFrame& checked, int64_t now_us, Status* write_error) {
  using Frame = ReceivingUpdate::Frame;
  const uint64_t checksum = checked.header.checksum;
  const size_t i = static_cast<size_t>(frame_index);
  {
    std::lock_guard<std::mutex> lock(r.mu);
    r.last_activity_us = now_us;
    // Being written by another connection counts as received: the same bytes are a
    // duplicate, other bytes a conflict.
    if (r.frames[i] != Frame::kMissing) {
      return r.checksum[i] == checksum ? FrameOutcome::kDuplicate : FrameOutcome::kConflict;
    }
    r.frames[i] = Frame::kWriting;
    r.checksum[i] = checksum;
  }
  Status w = r.file->AddFrame(frame_index, frame);  // a few MB: written without holding the entry
  std::lock_guard<std::mutex> lock(r.mu);
  if (!w.ok()) {
    r.frames[i] = Frame::kMissing;
    *write_error = std::move(w);
    return FrameOutcome::kFailed;
  }
  r.frames[i] = Frame::kStored;
  r.bytes += static_cast<int64_t>(frame.size());
  r.sum_squares += checked.sum_squares;
  ++r.received;
  return FrameOutcome::kAdded;
}

}  // namespace fedps
