// MetricsLog: appends one JSON object per event to <run dir>/metrics.jsonl.
//
// Every record carries "event", "time" (Unix seconds, float) and "source" (the
// process: "train", "client-2", "shard-0", ...). Lines are written whole with a
// single append, so concurrent writers of different files never interleave and a
// crash loses at most the record being written. Thread-safe.
#pragma once

#include <mutex>
#include <string>

#include <nlohmann/json.hpp>

#include "common/env.h"
#include "common/status.h"

namespace fedps {

class MetricsLog {
 public:
  // `path` is the .jsonl file; its folder is created.
  static StatusOr<std::unique_ptr<MetricsLog>> Open(const std::string& path, std::string source,
                                                    Env* env = Env::Default());
  Status Write(const std::string& event, nlohmann::json fields);
  const std::string& path() const { return path_; }

 private:
  MetricsLog(std::string path, std::string source, Env* env)
      : path_(std::move(path)), source_(std::move(source)), env_(env) {}
  std::string path_;
  std::string source_;
  Env* env_;
  std::mutex mu_;
};

// Reads every record of a metrics.jsonl file; a torn last line is skipped.
StatusOr<std::vector<nlohmann::json>> ReadMetrics(const std::string& path, Env* env = Env::Default());

}  // namespace fedps
