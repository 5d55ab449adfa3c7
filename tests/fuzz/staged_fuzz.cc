// A shard's staged-update store (its replay log) reading an arbitrary file in its folder:
// the index at start and the full read at apply. Refusals are fine; no crash.
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

#include "common/env.h"
#include "ps/staged_store.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/staged_fuzz.XXXXXX";
    return std::string(::mkdtemp(tmpl));
  }();
  static fedps::StagedStore store(dir, fedps::StagedStore::Slice{0, 0, 4096}, fedps::Env::Default());
  const std::string id = "fuzz/1/1";
  {  // a plain write: the store's own durability is not what is fuzzed
    std::ofstream out(store.Path(id), std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
    if (!out) return 0;
  }
  auto index = store.Index();
  auto read = store.Read(id);
  (void)index;
  (void)read;
  return 0;
}
