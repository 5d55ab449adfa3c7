#include "tests/testing/ctl.h"

#include <sys/wait.h>

#include <cstdlib>

#include "common/env.h"
#include "tests/testing/temp_dir.h"

namespace fedps::testing {

std::string BinPath(const std::string& name) { return BinaryDir() + "/bin/" + name; }

std::string MissingBinaries(const std::vector<std::string>& names) {
  for (const std::string& name : names) {
    if (!Env::Default()->Exists(BinPath(name))) return BinPath(name) + " is not built";
  }
  return "";
}

CtlResult RunCtl(const std::string& args, const std::string& out_path, const std::string& err_path) {
  const std::string cmd = BinPath("fedps-ctl") + " " + args + " > " + out_path +
                          (err_path.empty() ? " 2>&1" : " 2> " + err_path);
  const int rc = std::system(cmd.c_str());
  CtlResult r;
  r.code = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  auto read = [](const std::string& path) {
    auto text = Env::Default()->ReadFile(path);
    return text.ok() ? *text : "(not readable: " + text.status().message() + ")";
  };
  r.out = read(out_path);
  if (!err_path.empty()) r.err = read(err_path);
  r.context = "$ " + cmd + "\n[system() status " + std::to_string(rc) + "]\n" + r.out + r.err;
  return r;
}

}  // namespace fedps::testing
