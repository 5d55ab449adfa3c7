// The codec's frame reader on arbitrary bytes, the way a shard meets a pushed frame and a
// client a pulled one: the receiver's check (ReceiveTable::CheckFrame with Codec::CheckFrame),
// then a decode into a slice. Anything may be refused; nothing may crash, read or write out
// of bounds, or decode when the check refused; and the sum of squares the check reports (the
// shard's update norm) must be that of the decoded values (fp32: of them truncated to
// bfloat16, so up to 2^-6 below).
#include <cmath>
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
  if (checked.ok()) {
    double want = 0;
    for (float x : out) want += double{x} * double{x};  // `out` was zero beyond the frame
    const double got = checked->sum_squares;
    // Denormals lose relative precision (fp32 truncation, int8 products); absolutely they
    // are below 1e-70 in all.
    const double low = checked->header.kind == fedps::CodecKind::kFp32 ? want * (1 - 1.0 / 64) : want * (1 - 1e-5);
    if (!std::isfinite(got) || got < low - 1e-70 || got > want * (1 + 1e-5) + 1e-70) __builtin_trap();
  }
  return 0;
}
