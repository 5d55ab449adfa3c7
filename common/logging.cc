#include "common/logging.h"

#include <cstdlib>

#include <glog/logging.h>

namespace fedps {

void InitLogging(const char* argv0, bool verbose) {
  static bool done = false;
  if (done) return;
  done = true;
  FLAGS_logtostderr = true;
  FLAGS_colorlogtostderr = false;
  const char* env = std::getenv("FEDPS_VERBOSE");
  if (verbose || (env && *env && *env != '0')) FLAGS_v = 1;
  google::InitGoogleLogging(argv0);
  google::InstallFailureSignalHandler();
}

}  // namespace fedps
