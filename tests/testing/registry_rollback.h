// RollBackCommitLog: rewrites a run's registry state in a test's redis-server the way Redis
// losing its last acknowledged writes would (appendonly with appendfsync everysec, killed
// within a second of the writes): the commit records and log entries above `keep_seq`
// vanish and the sequence counter goes back to `keep_seq`, so the next commit is handed a
// seq that a shard may already have applied for another update. One script, so nobody sees
// a half-rolled-back log. The stage marks those commits deleted are not brought back: a
// test that commits again marks again.
#pragma once

#include <cstdint>
#include <string>

#include "common/status.h"
#include "tests/testing/redis_server.h"

namespace fedps::testing {

inline Status RollBackCommitLog(ScopedRedisServer& redis, const std::string& run_id,
                                int64_t keep_seq) {
  static const char* kLua = R"lua(
local P = ARGV[1]
local ids = redis.call('ZRANGEBYSCORE', P .. 'log', '(' .. ARGV[2], '+inf')
for _, id in ipairs(ids) do
  redis.call('DEL', P .. 'update:' .. id)
  redis.call('ZREM', P .. 'log', id)
end
redis.call('SET', P .. 'seq', ARGV[2])
return #ids
)lua";
  auto r = redis.Command({"EVAL", kLua, "0", "fedps:{" + run_id + "}:", std::to_string(keep_seq)});
  return r.status();
}

}  // namespace fedps::testing
