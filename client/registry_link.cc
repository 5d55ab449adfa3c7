#include "client/registry_link.h"

#include <unistd.h>

#include <cstdio>
#include <random>

#include "ps/registry.h"

namespace fedps {
namespace {

// This process as a member: host/pid/64 random bits, made once per process, so a second
// process under the same name (another host, or a pid reused after a restart) differs.
const std::string& ProcessInstance(const std::string& host) {
  static const std::string instance = [&] {
    std::random_device rd;
    const uint64_t nonce = (static_cast<uint64_t>(rd()) << 32) ^ rd();
    char hex[17];
    std::snprintf(hex, sizeof hex, "%016llx", static_cast<unsigned long long>(nonce));
    return (host.empty() ? std::string("?") : host) + "/" + std::to_string(::getpid()) + "/" + hex;
  }();
  return instance;
}

}  // namespace

RegistryLink::RegistryLink(std::unique_ptr<Registry> r) : registry_(std::move(r)) {}
RegistryLink::~RegistryLink() = default;

StatusOr<std::unique_ptr<RegistryLink>> RegistryLink::Connect(const RegistryLinkOptions& options) {
  RegistryOptions o;
  o.host = options.host;
  o.port = options.port;
  o.password = options.password;
  o.run_id = options.run_id;
  ASSIGN_OR_RETURN(std::unique_ptr<Registry> r, Registry::Connect(o));
  return std::unique_ptr<RegistryLink>(new RegistryLink(std::move(r)));
}

Status RegistryLink::InitRun(const RunIdentityFields& f) {
  RunIdentity id;
  id.model_preset = f.model_preset;
  id.model_config = f.model_config;
  id.layout_hash = f.layout_hash;
  id.tokenizer_sha256 = f.tokenizer_sha256;
  id.codec = f.codec;
  id.num_shards = f.num_shards;
  id.apply_config = f.apply_config;
  auto r = registry_->InitRun(id);
  return r.ok() ? Status::Ok() : r.status();
}

StatusOr<std::vector<ShardDirectoryEntry>> RegistryLink::Shards() {
  ASSIGN_OR_RETURN(auto shards, registry_->Shards());
  std::vector<ShardDirectoryEntry> out;
  out.reserve(shards.size());
  for (const auto& s : shards) {
    out.push_back({s.info.index, s.info.address, s.info.slice_begin, s.info.slice_end, s.epoch, s.alive});
  }
  return out;
}

StatusOr<int64_t> RegistryLink::Join(const std::string& client, const std::string& host,
                                     const std::vector<std::string>& domains, std::chrono::milliseconds lease) {
  ClientInfo info;
  info.host = host;
  info.data_domains = domains;
  info.instance = ProcessInstance(host);
  return registry_->Join(client, info, lease);
}

Status RegistryLink::Heartbeat(const std::string& client, int64_t epoch, const nlohmann::json& stats) {
  return registry_->Heartbeat(client, epoch, stats);
}

Status RegistryLink::Leave(const std::string& client, int64_t epoch) { return registry_->Leave(client, epoch); }

StatusOr<int64_t> RegistryLink::CommitUpdate(const std::string& update_id, const std::string& client, int64_t epoch,
                                             const nlohmann::json& meta, int num_shards, int64_t base_version,
                                             int64_t max_staleness) {
  std::optional<StalenessLimit> limit;
  if (max_staleness >= 0) limit = StalenessLimit{base_version, max_staleness};
  return registry_->CommitUpdate(update_id, client, epoch, meta, num_shards, limit);
}

StatusOr<int64_t> RegistryLink::CommitToRound(const std::string& update_id, const std::string& client, int64_t epoch,
                                              const nlohmann::json& meta, int num_shards, int64_t base_version,
                                              const RoundOptions& rounds) {
  return registry_->CommitToRound(update_id, client, epoch, meta, num_shards, base_version, rounds);
}

StatusOr<RoundState> RegistryLink::CurrentRound() { return registry_->CurrentRound(); }

StatusOr<CommitRecord> RegistryLink::LookupCommit(const std::string& update_id) {
  ASSIGN_OR_RETURN(CommittedUpdate c, registry_->LookupCommit(update_id));
  return CommitRecord{c.seq, c.update_id, c.meta};
}

StatusOr<std::vector<CommitRecord>> RegistryLink::CommittedAfter(int64_t seq, int64_t limit) {
  ASSIGN_OR_RETURN(auto batch, registry_->CommittedAfter(seq, limit));
  std::vector<CommitRecord> out;
  for (auto& c : batch) out.push_back({c.seq, c.update_id, c.meta});
  return out;
}

StatusOr<int64_t> RegistryLink::GlobalSeq() { return registry_->GlobalSeq(); }

StatusOr<int64_t> RegistryLink::TrimmedTokens() {
  ASSIGN_OR_RETURN(TrimmedLog t, registry_->Trimmed());
  return t.tokens;
}

}  // namespace fedps
