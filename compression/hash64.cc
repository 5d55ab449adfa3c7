// xxHash is used header-only (XXH_INLINE_ALL, a mode xxHash documents): the checksum runs
// over every byte of every frame, and inlined it compiles with this build's flags and
// vector instructions; no libxxhash.so is needed at run time (CMakeLists.txt finds the
// header through pkg-config).
#include "compression/hash64.h"

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace fedps {

static_assert(XXH_VERSION_NUMBER >= 800, "XXH3 is stable from xxHash 0.8.0 on");

uint64_t Hash64(std::string_view bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

uint64_t Hash64(std::initializer_list<std::string_view> parts) {
  XXH3_state_t state;
  XXH3_64bits_reset(&state);
  for (std::string_view part : parts) XXH3_64bits_update(&state, part.data(), part.size());
  return XXH3_64bits_digest(&state);
}

}  // namespace fedps
