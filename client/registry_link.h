// RegistryLink: the narrow part of ps/registry.h that a client uses (join, heartbeat,
// leave, the shard directory, commit and commit look-up, synchronous rounds), in the
// client's own terms.
// TODO(next session): the name clash that motivated a separate header is gone
// (model/token_data.h's struct is now TokenShardInfo); fold this into direct Registry use.
//
// Every method forwards to fedps::Registry with the same Status semantics (see
// ps/registry.h). Thread safety: as Registry's (thread-safe; one connection, serialised).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/status.h"
#include "ps/rounds.h"

namespace fedps {

class Registry;

struct RegistryLinkOptions {
  std::string host = "127.0.0.1";
  int port = 6379;
  std::string password;
  std::string run_id;
};

// RunIdentity's fields.
struct RunIdentityFields {
  std::string model_preset;
  nlohmann::json model_config = nlohmann::json::object();
  std::string layout_hash;
  std::string tokenizer_sha256;
  std::string codec;
  int num_shards = 0;
  nlohmann::json apply_config = nullptr;  // PsApplyConfig of the client's [ps]
};

// One entry of the shard directory.
struct ShardDirectoryEntry {
  int index = 0;
  std::string address;  // host:port
  int64_t slice_begin = 0, slice_end = 0;
  int64_t epoch = 0;
  bool alive = false;
};

struct CommitRecord {
  int64_t seq = 0;
  std::string update_id;
  nlohmann::json meta;
};

class RegistryLink {
 public:
  static StatusOr<std::unique_ptr<RegistryLink>> Connect(const RegistryLinkOptions& options);
  ~RegistryLink();
  RegistryLink(const RegistryLink&) = delete;
  RegistryLink& operator=(const RegistryLink&) = delete;

  Status InitRun(const RunIdentityFields& identity);
  StatusOr<std::vector<ShardDirectoryEntry>> Shards();
  StatusOr<int64_t> Join(const std::string& client, const std::string& host, const std::vector<std::string>& domains,
                         std::chrono::milliseconds lease);
  Status Heartbeat(const std::string& client, int64_t epoch, const nlohmann::json& stats);
  Status Leave(const std::string& client, int64_t epoch);
  // max_staleness < 0: no staleness limit.
  StatusOr<int64_t> CommitUpdate(const std::string& update_id, const std::string& client, int64_t epoch,
                                 const nlohmann::json& meta, int num_shards, int64_t base_version,
                                 int64_t max_staleness);
  // ps.mode = sync: commits to the open round (Registry::CommitToRound); kOutOfRange when
  // the update's round closed without it.
  StatusOr<int64_t> CommitToRound(const std::string& update_id, const std::string& client, int64_t epoch,
                                  const nlohmann::json& meta, int num_shards, int64_t base_version,
                                  const RoundOptions& rounds);
  // The open round; kNotFound before the first one opened.
  StatusOr<RoundState> CurrentRound();
  // kNotFound when not committed.
  StatusOr<CommitRecord> LookupCommit(const std::string& update_id);
  StatusOr<std::vector<CommitRecord>> CommittedAfter(int64_t seq, int64_t limit);
  StatusOr<int64_t> GlobalSeq();
  // The sum of meta.tokens of the log entries trimmed so far (Registry::Trimmed).
  StatusOr<int64_t> TrimmedTokens();

 private:
  explicit RegistryLink(std::unique_ptr<Registry> r);
  std::unique_ptr<Registry> registry_;
};

}  // namespace fedps
