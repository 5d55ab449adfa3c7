#include "tests/testing/real_text.h"

#include <algorithm>
#include <filesystem>
#include <vector>

#include "tests/testing/ctl.h"
#include "tests/testing/process.h"

namespace fedps::testing {

namespace fs = std::filesystem;

namespace {
constexpr const char* kLicenses = "/usr/share/common-licenses";
}  // namespace

std::string DebianPythonLib() {
  for (const char* v : {"/usr/lib/python3.11", "/usr/lib/python3.12", "/usr/lib/python3.13", "/usr/lib/python3.10"}) {
    if (fs::exists(std::string(v) + "/os.py")) return v;
  }
  return "";
}

std::string RealTextMissing() {
  if (DebianPythonLib().empty() || !fs::exists(kLicenses)) {
    return "needs Debian's /usr/lib/python3.X and /usr/share/common-licenses as real text";
  }
  return "";
}

int CopyTextFiles(const std::string& from, const std::string& ext, const std::string& to, int max_files) {
  fs::create_directories(to);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(from)) {
    if (e.is_regular_file() && (ext.empty() || e.path().extension() == ext) && e.file_size() < 150000) {
      files.push_back(e.path());
    }
  }
  std::sort(files.begin(), files.end());
  int n = 0;
  for (const auto& f : files) {
    if (n >= max_files) break;
    fs::copy_file(f, fs::path(to) / (f.filename().string() + ".txt"), fs::copy_options::overwrite_existing);
    ++n;
  }
  return n;
}

Status PrepareRealText(const std::string& dir, int iid_clients) {
  if (std::string missing = RealTextMissing(); !missing.empty()) return FailedPrecondition(missing);
  const std::string code = dir + "/corpus/code", licenses = dir + "/corpus/licenses";
  if (int n = CopyTextFiles(DebianPythonLib(), ".py", code, 60); n <= 20) {
    return FailedPrecondition("only " + std::to_string(n) + " Python files in " + DebianPythonLib());
  }
  if (int n = CopyTextFiles(kLicenses, "", licenses, 40); n <= 5) {
    return FailedPrecondition("only " + std::to_string(n) + " licences in " + kLicenses);
  }
  const std::string log = dir + "/prepare.log";
  CtlResult r = RunCtl("prepare --input code=" + code + " --input licenses=" + licenses +
                           " --vocab-size 1024 --out " + dir + "/data",
                       log);
  if (r.code != 0) return Internal("fedps-ctl prepare failed:\n" + ReadLogTail(log));
  if (iid_clients > 0) {
    r = RunCtl("partition --data " + dir + "/data --clients " + std::to_string(iid_clients) + " --by iid --out " +
                   dir + "/clients",
               dir + "/partition.log");
    if (r.code != 0) return Internal("fedps-ctl partition failed:\n" + r.context);
  }
  return Status::Ok();
}

}  // namespace fedps::testing
