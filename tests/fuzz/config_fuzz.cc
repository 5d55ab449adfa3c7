// The run config parser (TOML, then every option's check) on arbitrary text.
#include <cstddef>
#include <cstdint>
#include <string>

#include "common/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto config = fedps::ParseConfig(text, "fuzz.toml");
  (void)config;
  return 0;
}
