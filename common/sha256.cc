#include "common/sha256.h"

#include <openssl/evp.h>

#include <cstdio>
#include <memory>
#include <vector>

namespace fedps {
namespace {

struct MdCtxDeleter {
  void operator()(EVP_MD_CTX* c) const { EVP_MD_CTX_free(c); }
};
using MdCtx = std::unique_ptr<EVP_MD_CTX, MdCtxDeleter>;

std::string ToHex(const unsigned char* d, unsigned n) {
  static const char* kHex = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (unsigned i = 0; i < n; ++i) {
    s[2 * i] = kHex[d[i] >> 4];
    s[2 * i + 1] = kHex[d[i] & 15];
  }
  return s;
}

}  // namespace

std::string Sha256Hex(std::string_view bytes) { return Sha256Hex(std::span<const std::string_view>(&bytes, 1)); }

std::string Sha256Hex(std::span<const std::string_view> pieces) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned n = 0;
  MdCtx ctx(EVP_MD_CTX_new());
  CHECK(ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1);
  for (std::string_view p : pieces) CHECK(EVP_DigestUpdate(ctx.get(), p.data(), p.size()) == 1);
  CHECK(EVP_DigestFinal_ex(ctx.get(), md, &n) == 1);
  return ToHex(md, n);
}

StatusOr<std::string> Sha256File(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) return NotFound("cannot open " + path);
  MdCtx ctx(EVP_MD_CTX_new());
  CHECK(ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1);
  std::vector<char> buf(1 << 20);
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) {
    CHECK(EVP_DigestUpdate(ctx.get(), buf.data(), n) == 1);
  }
  if (std::ferror(f.get())) return Internal("cannot read " + path);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  CHECK(EVP_DigestFinal_ex(ctx.get(), md, &len) == 1);
  return ToHex(md, len);
}

}  // namespace fedps
