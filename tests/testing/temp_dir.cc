#include "tests/testing/temp_dir.h"

#include <cstdlib>
#include <filesystem>
#include <string>

#include <gtest/gtest.h>

namespace fedps::testing {

ScopedTempDir::ScopedTempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl = std::string(base && *base ? base : "/tmp") + "/fedps-test-";
  if (const auto* info = ::testing::UnitTest::GetInstance()->current_test_info()) {
    tmpl += std::string(info->name()).substr(0, 40) + "-";
  }
  tmpl += "XXXXXX";
  char* made = ::mkdtemp(tmpl.data());
  if (made == nullptr) {
    ADD_FAILURE() << "mkdtemp failed for " << tmpl;
    return;
  }
  path_ = made;
}

ScopedTempDir::~ScopedTempDir() {
  const char* keep = std::getenv("FEDPS_KEEP_TEST_DIRS");
  if (path_.empty() || (keep && *keep == '1')) return;
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string SourceDir() {
  const char* s = std::getenv("FEDPS_SOURCE_DIR");
  return s && *s ? s : std::filesystem::current_path().string();
}

std::string BinaryDir() {
  const char* s = std::getenv("FEDPS_BINARY_DIR");
  return s && *s ? s : "build";
}

}  // namespace fedps::testing
