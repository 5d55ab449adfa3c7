// The safetensors reader (shard checkpoints, staged updates, models) on an arbitrary file:
// the index, then every tensor read whole and piece by piece.
#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const int fd = ::memfd_create("safetensors_fuzz", 0);
  if (::ftruncate(fd, 0) != 0 || ::pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) return 0;
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  auto file = fedps::ReadSafetensors(path);
  if (file.ok()) {
    auto reader = fedps::SafetensorsReader::Open(path);
    if (!reader.ok()) __builtin_trap();  // ReadSafetensors read it: so must the reader
    char piece[64];
    for (const auto& e : (*reader)->index().entries) {
      for (uint64_t at = 0; at < e.bytes; at += sizeof piece) {
        const size_t n = static_cast<size_t>(std::min<uint64_t>(sizeof piece, e.bytes - at));
        if (!(*reader)->Read(e, at, piece, n).ok()) __builtin_trap();
      }
    }
  }
  return 0;
}
