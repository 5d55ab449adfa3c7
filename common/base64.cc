#include "common/base64.h"

#include <openssl/evp.h>

#include <limits>

namespace fedps {
namespace {

const unsigned char* Bytes(std::string_view s) { return reinterpret_cast<const unsigned char*>(s.data()); }

}  // namespace

std::string Base64Encode(std::string_view bytes) {
  std::string out(4 * ((bytes.size() + 2) / 3), '\0');
  if (bytes.empty()) return out;
  // EVP_EncodeBlock takes an int length: encode in pieces of a multiple of 3 bytes.
  constexpr size_t kPiece = size_t{3} << 28;
  size_t at = 0;
  for (size_t pos = 0; pos < bytes.size(); pos += kPiece) {
    const std::string_view piece = bytes.substr(pos, kPiece);
    at += static_cast<size_t>(EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data() + at), Bytes(piece),
                                              static_cast<int>(piece.size())));
  }
  return out;
}

StatusOr<std::string> Base64Decode(std::string_view text) {
  if (text.size() % 4 != 0) return InvalidArgument("Base64 text of " + std::to_string(text.size()) + " characters");
  if (text.size() > static_cast<size_t>(std::numeric_limits<int>::max())) return InvalidArgument("Base64 text over 2 GiB");
  // EVP_DecodeBlock would skip surrounding white space; RFC 4648 text has none.
  for (char c : text) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r') return InvalidArgument("white space in Base64 text");
  }
  std::string out(text.size() / 4 * 3, '\0');
  const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()), Bytes(text), static_cast<int>(text.size()));
  if (n < 0) return InvalidArgument("not Base64: '" + std::string(text.substr(0, 40)) + "'");
  // EVP_DecodeBlock counts the bytes that '=' padding stands for; drop them.
  size_t pad = 0;
  if (!text.empty() && text.back() == '=') pad = text[text.size() - 2] == '=' ? 2 : 1;
  out.resize(static_cast<size_t>(n) - pad);
  return out;
}

}  // namespace fedps
