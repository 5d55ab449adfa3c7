// The codec's frame reader on arbitrary bytes, the way a shard meets a pushed frame and a
// client a pulled one: the receiver's check (ReceiveTable::CheckFrame with Codec::CheckFrame),
// then a decode into a slice. Anything may be refused; nothing may crash, read or write out
// of bounds, or decode when the check refused.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "compression/codec.h"
#include "ps/receive_table.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fedps::Codec* codec = [] {
    fedps::CodecOptions o;
    o.threads = 1;
    o.chunk_elements = 4096;
    return fedps::Codec::Create(o).value().release();
  }();
  const std::string_view frame(reinterpret_cast<const char*>(data), size);
  // The slice the frame claims (bounded, so a huge claim is refused, not allocated).
  auto header = fedps::Codec::PeekHeader(frame);
  const uint64_t slice = header.ok() && header->slice_length <= (1u << 20) ? header->slice_length : 8192;
  const int64_t index = header.ok() && header->count > 0 ? static_cast<int64_t>(header->offset / 4096) : 0;
  auto checked = fedps::ReceiveTable::CheckFrame(*codec, frame, index, 4096, static_cast<int64_t>(slice));
  std::vector<float> out(slice);
  fedps::Status decoded = codec->DecodeFrame(frame, out);
  if (checked.ok() && !decoded.ok()) __builtin_trap();  // a frame the receiver keeps must decode
  return 0;
}
