// Real text for integration tests: files every Debian machine has (the Python standard
// library as code, /usr/share/common-licenses as prose), copied into a test's folder and
// prepared with `fedps-ctl prepare`, so tests train on text rather than on noise.
#pragma once

#include <string>

#include "common/status.h"

namespace fedps::testing {

// Debian's Python standard library folder (/usr/lib/python3.X with os.py); "" if none.
std::string DebianPythonLib();

// Why the real text is not on this machine (the GTEST_SKIP reason); "" when it is.
std::string RealTextMissing();

// Copies up to `max_files` files under 150 kB of `from` (extension `ext`, "" = any), in
// name order, into `to` as <name>.txt; returns how many.
int CopyTextFiles(const std::string& from, const std::string& ext, const std::string& to, int max_files);

// The integration tests' corpus: 60 Python files into <dir>/corpus/code and 40 licences
// into <dir>/corpus/licenses, then `fedps-ctl prepare` of both domains (1024-piece
// tokenizer) into <dir>/data (log: <dir>/prepare.log, its tail in the error); with
// iid_clients > 0 also `fedps-ctl partition --by iid` of it into <dir>/clients/.
Status PrepareRealText(const std::string& dir, int iid_clients = 0);

}  // namespace fedps::testing
