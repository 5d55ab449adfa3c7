#include "tools/inflate.h"

#include <zlib.h>

#include <limits>
#include <memory>
#include <string>
#include <vector>

namespace fedps::tools {
namespace {

// windowBits for inflateInit2: 15 (the largest window) with a zlib or a gzip wrapper.
constexpr int kZlibWindow = MAX_WBITS;
constexpr int kGzipWindow = MAX_WBITS + 16;

struct InflateEnd {
  void operator()(z_stream* s) const {
    inflateEnd(s);
    delete s;
  }
};
using Stream = std::unique_ptr<z_stream, InflateEnd>;

StatusOr<Stream> NewStream(int window_bits) {
  auto* s = new z_stream{};
  if (inflateInit2(s, window_bits) != Z_OK) {
    delete s;
    return Internal("zlib inflateInit2 failed");
  }
  return Stream(s);
}

// Inflates one stream (zlib or gzip member, as the stream was set up) from the start of
// `in`, appending to `out`; returns the input bytes it took.
StatusOr<size_t> InflateOne(z_stream& s, std::string_view in, std::string& out) {
  if (in.size() > std::numeric_limits<uInt>::max()) return InvalidArgument("compressed input over 4 GiB");
  s.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data()));
  s.avail_in = static_cast<uInt>(in.size());
  std::vector<Bytef> chunk(256 << 10);
  for (;;) {
    s.next_out = chunk.data();
    s.avail_out = static_cast<uInt>(chunk.size());
    const int rc = inflate(&s, Z_NO_FLUSH);
    out.append(reinterpret_cast<const char*>(chunk.data()), chunk.size() - s.avail_out);
    if (rc == Z_STREAM_END) return in.size() - s.avail_in;
    if (rc == Z_OK) continue;
    if (rc == Z_BUF_ERROR && s.avail_in == 0) return DataLoss("compressed data ends early");
    return DataLoss(std::string("corrupt compressed data: ") + (s.msg ? s.msg : zError(rc)));
  }
}

}  // namespace

StatusOr<std::string> Gunzip(std::string_view in) {
  if (in.empty()) return std::string();  // an empty .gz file: an empty text
  ASSIGN_OR_RETURN(Stream s, NewStream(kGzipWindow));
  std::string out;
  size_t pos = 0;
  do {
    if (pos > 0 && inflateReset(s.get()) != Z_OK) return Internal("zlib inflateReset failed");
    ASSIGN_OR_RETURN(size_t used, InflateOne(*s, in.substr(pos), out));
    pos += used;
  } while (in.size() - pos >= 2 && in[pos] == '\x1f' && in[pos + 1] == '\x8b');
  return out;
}

StatusOr<std::string> ZlibInflate(std::string_view in, size_t* consumed) {
  ASSIGN_OR_RETURN(Stream s, NewStream(kZlibWindow));
  std::string out;
  ASSIGN_OR_RETURN(size_t used, InflateOne(*s, in, out));
  if (consumed) *consumed = used;
  return out;
}

}  // namespace fedps::tools
