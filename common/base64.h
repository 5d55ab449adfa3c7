// Base64 (RFC 4648, standard alphabet, '=' padding) through OpenSSL's EVP_EncodeBlock and
// EVP_DecodeBlock: PNG plots inlined into report.html, dictd index numbers. Pure
// functions; any thread.
#pragma once

#include <string>
#include <string_view>

#include "common/status.h"

namespace fedps {

// No line breaks.
std::string Base64Encode(std::string_view bytes);

// `text` must be whole 4-character groups (padding included) of the standard alphabet;
// anything else is InvalidArgument.
StatusOr<std::string> Base64Decode(std::string_view text);

}  // namespace fedps
