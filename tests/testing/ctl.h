// The fedps binaries of this build, for tests that run them as a user would: their
// paths, and RunCtl for one `fedps-ctl` command (through the shell, so `args` quotes as
// a command line does). Any thread.
#pragma once

#include <string>
#include <vector>

namespace fedps::testing {

// <build>/bin/<name> (BinaryDir(): FEDPS_BINARY_DIR set by CTest, else "build").
std::string BinPath(const std::string& name);

// "<path> is not built" for the first of `names` that is not there (a GTEST_SKIP reason,
// which CI counts); "" when all are.
std::string MissingBinaries(const std::vector<std::string>& names);

struct CtlResult {
  int code = -1;        // exit code; -1 when it did not exit normally
  std::string out;      // what it wrote to stdout (and stderr, unless err_path was given)
  std::string err;      // what it wrote to stderr when err_path was given
  std::string context;  // the command, how it ended and its output: for failure messages
};

// Runs `fedps-ctl <args>` with stdout to `out_path` and stderr to `err_path` ("" = to
// out_path too), waits for it and reads both back.
CtlResult RunCtl(const std::string& args, const std::string& out_path, const std::string& err_path = "");

}  // namespace fedps::testing
