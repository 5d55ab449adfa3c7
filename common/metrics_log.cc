#include "common/metrics_log.h"

#include <sstream>

namespace fedps {

StatusOr<std::unique_ptr<MetricsLog>> MetricsLog::Open(const std::string& path, std::string source,
                                                       Env* env) {
  RETURN_IF_ERROR(env->CreateDirs(Dirname(path)));
  return std::unique_ptr<MetricsLog>(new MetricsLog(path, std::move(source), env));
}

Status MetricsLog::Write(const std::string& event, nlohmann::json fields) {
  nlohmann::json record = nlohmann::json::object();
  record["event"] = event;
  record["time"] = static_cast<double>(env_->clock()->WallMicros()) / 1e6;
  record["source"] = source_;
  for (auto& [k, v] : fields.items()) record[k] = v;
  std::string line = record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::lock_guard<std::mutex> lock(mu_);
  return env_->AppendToFile(path_, line);
}

StatusOr<std::vector<nlohmann::json>> ReadMetrics(const std::string& path, Env* env) {
  ASSIGN_OR_RETURN(std::string text, env->ReadFile(path));
  std::vector<nlohmann::json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) continue;  // a torn line from a crash
    out.push_back(std::move(j));
  }
  return out;
}

}  // namespace fedps
