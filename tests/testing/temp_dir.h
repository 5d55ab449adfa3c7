// ScopedTempDir: a fresh folder per test under $TMPDIR, removed on destruction
// unless FEDPS_KEEP_TEST_DIRS=1 (to inspect a failure).
#pragma once

#include <string>

namespace fedps::testing {

class ScopedTempDir {
 public:
  ScopedTempDir();
  ~ScopedTempDir();
  ScopedTempDir(const ScopedTempDir&) = delete;
  ScopedTempDir& operator=(const ScopedTempDir&) = delete;
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

// The source tree root (FEDPS_SOURCE_DIR set by CTest; else the working folder).
std::string SourceDir();
// The build folder (FEDPS_BINARY_DIR set by CTest; else "build").
std::string BinaryDir();

}  // namespace fedps::testing
