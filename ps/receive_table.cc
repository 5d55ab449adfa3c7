// ReceiveTable: see the header.
#include "ps/receive_table.h"

#include <algorithm>

#include "compression/hash64.h"

namespace fedps {

namespace {

// The frame checksum of compression/codec.h's layout: Hash64 of header bytes 0..55 seeded
// with Hash64 of the payload. Checked here, before a frame's bytes are kept, so that a
// damaged frame is refused at push rather than found at apply; the codec checks it again
// when it decodes (a test pushes frames made by the codec, so a change there shows).
constexpr size_t kChecksumOffset = 56;
uint64_t FrameChecksum(std::string_view frame) {
  return Hash64(frame.data(), kChecksumOffset, Hash64(frame.substr(kFrameHeaderBytes)));
}

}  // namespace

std::vector<int64_t> ReceivingUpdate::Missing() {
  std::lock_guard<std::mutex> lock(mu);
  std::vector<int64_t> out;
  for (size_t i = 0; i < frames.size(); ++i) {
    if (frames[i].empty()) out.push_back(static_cast<int64_t>(i));
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
                                                      int64_t local_steps, int64_t total_frames, int64_t now_us) {
  auto r = std::make_shared<ReceivingUpdate>();
  r->update_id = update_id;
  r->client_id = client_id;
  r->client_epoch = client_epoch;
  r->base_version = base_version;
  r->tokens = tokens;
  r->local_steps = local_steps;
  r->total_frames = total_frames;
  r->frames.resize(static_cast<size_t>(total_frames));  // empty strings: no frame memory yet
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

StatusOr<FrameHeader> ReceiveTable::CheckFrame(std::string_view frame, int64_t frame_index, int64_t frame_elements,
                                               int64_t slice_elements) {
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
  if (frame.size() - kFrameHeaderBytes != h.payload_bytes) {
    return DataLoss("frame has " + std::to_string(frame.size() - kFrameHeaderBytes) + " payload bytes; its header says " +
                    std::to_string(h.payload_bytes));
  }
  if (FrameChecksum(frame) != h.checksum) return DataLoss("frame checksum mismatch (corrupt frame)");
  return h;
}

FrameOutcome ReceiveTable::AcceptFrame(ReceivingUpdate& r, int64_t frame_index, std::string_view frame,
                                       uint64_t checksum, int64_t now_us) {
  const size_t i = static_cast<size_t>(frame_index);
  {
    std::lock_guard<std::mutex> lock(r.mu);
    r.last_activity_us = now_us;
    if (!r.frames[i].empty()) return r.checksum[i] == checksum ? FrameOutcome::kDuplicate : FrameOutcome::kConflict;
  }
  std::string bytes(frame);  // a few MB: copied without holding the entry
  std::lock_guard<std::mutex> lock(r.mu);
  if (!r.frames[i].empty()) {  // another connection stored the same frame meanwhile
    return r.checksum[i] == checksum ? FrameOutcome::kDuplicate : FrameOutcome::kConflict;
  }
  r.frames[i] = std::move(bytes);
  r.checksum[i] = checksum;
  r.bytes += static_cast<int64_t>(r.frames[i].size());
  ++r.received;
  return FrameOutcome::kAdded;
}

}  // namespace fedps
