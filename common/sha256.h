// SHA-256 of bytes and files (OpenSSL), as lowercase hex.
#pragma once

#include <span>
#include <string>
#include <string_view>

#include "common/status.h"

namespace fedps {

std::string Sha256Hex(std::string_view bytes);
// Of the concatenation of `pieces` (not joined in memory).
std::string Sha256Hex(std::span<const std::string_view> pieces);
// Streams the file; does not load it whole.
StatusOr<std::string> Sha256File(const std::string& path);

}  // namespace fedps
