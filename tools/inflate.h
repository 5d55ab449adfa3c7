// DEFLATE-compressed inputs of the corpus readers (SWORD zText blocks, R lazy-load
// databases, gzip and dictzip files), decoded with zlib. Pure functions; any thread.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

#include "common/status.h"

namespace fedps::tools {

// gzip (RFC 1952), including concatenated members and dictzip (.dz) files (zlib skips
// the chunk table in FEXTRA). Each member's CRC-32 and length are checked; bytes after
// the last member that do not start another one are ignored (tar-style padding).
// Empty input gives an empty text; corrupt or truncated input: DataLoss.
StatusOr<std::string> Gunzip(std::string_view in);

// One zlib (RFC 1950) stream at the start of `in`, its Adler-32 checked. `consumed`, when
// given, receives the bytes the stream took (the input may go on with other data).
StatusOr<std::string> ZlibInflate(std::string_view in, size_t* consumed = nullptr);

}  // namespace fedps::tools
