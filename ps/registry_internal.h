// Registry internals shared by the files that implement Registry (ps/registry.cc: the
// membership, directory and commit-log scripts; ps/rounds.cc: the synchronous rounds):
// the owned hiredis reply, the argument checks and the reply readers. Not for other
// callers: everything here assumes a reply of one of the Registry's own scripts.
#pragma once

#include <hiredis/hiredis.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "common/status.h"
#include "ps/registry.h"

namespace fedps {

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};

struct Registry::Reply {
  std::unique_ptr<redisReply, ReplyFree> r;
  const redisReply* get() const { return r.get(); }
};

namespace registry_internal {

using Hash = std::map<std::string, std::string>;

// Names that become part of keys and events: printable ASCII without spaces.
Status CheckName(const std::string& value, const char* what);
Status CheckRunId(const std::string& run_id);
Status CheckLease(std::chrono::milliseconds lease);
Status CheckEpoch(int64_t epoch);

// JSON text; invalid UTF-8 is replaced rather than thrown on.
std::string DumpJson(const nlohmann::json& j);
// kDataLoss naming `what` when the text is not JSON.
StatusOr<nlohmann::json> ParseJson(const std::string& text, const std::string& what);
StatusOr<int64_t> ParseInt(const std::string& text, const std::string& what);
Status UnexpectedReply(const std::string& what);

bool IsString(const redisReply* r);
std::string Str(const redisReply* r);
StatusOr<std::string> AsString(const redisReply* r, const std::string& what);
StatusOr<int64_t> AsInt(const redisReply* r, const std::string& what);
// An array of (field, value) strings, as HGETALL answers.
StatusOr<Hash> AsHash(const redisReply* r, const std::string& what);
// An array reply's element i, or null when it is not an array that long.
const redisReply* Elem(const redisReply* r, size_t i);
// The script replies {'tag', ...}: the tag.
std::string Tag(const redisReply* r);
// The FailedPrecondition for a staged_record refusal ({'missing', ...} or {'mismatch', ...}:
// the Lua prelude) of the commit `what`; nullopt for any other reply.
std::optional<Status> StagingRefusal(const redisReply* r, const std::string& what);
// kOutOfRange for `update_id` at or below its client's trim floor `floor` (docs/registry.md,
// "Trimming"): committed before the kept part of the log, or given up; never committed again.
Status TrimmedRefusal(const std::string& what, const std::string& update_id, const std::string& floor);
std::string Field(const Hash& h, const std::string& name);
// An integer field; `fallback` when absent.
StatusOr<int64_t> IntField(const Hash& h, const std::string& name, const std::string& where,
                           int64_t fallback = 0);

}  // namespace registry_internal
}  // namespace fedps
