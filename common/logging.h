// One-time glog set-up for every fedps executable: logs go to stderr (never to
// /tmp files), with the program name; FEDPS_VERBOSE=1 or --verbose raises VLOG.
#pragma once

namespace fedps {

void InitLogging(const char* argv0, bool verbose = false);

}  // namespace fedps
