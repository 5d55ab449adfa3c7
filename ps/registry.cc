// Registry: see registry.h for the key schema and the contract, docs/registry.md for the
// reasoning. Every change that touches more than one key is one Lua script, which Redis
// runs atomically; scripts take their timestamps from the server (TIME), so the Redis
// host is the only clock that matters. Scripts are loaded with SCRIPT LOAD once per
// connection and run with EVALSHA; after a Redis restart the first EVALSHA answers
// NOSCRIPT and the script is loaded again.
#include "ps/registry.h"

#include <hiredis/hiredis.h>
#include <pthread.h>
#include <sys/time.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <utility>

#include "ps/registry_internal.h"

namespace fedps {

using namespace registry_internal;

namespace {

using Json = nlohmann::json;

constexpr const char* kSchemaVersion = "1";

// ---- Lua ------------------------------------------------------------------------------
// Helpers prepended to every script.
constexpr const char* kLuaPrelude = R"lua(
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- Integers as decimal strings (Lua numbers are doubles; %.14g would round big ones).
local function num(n) return string.format('%.0f', n) end
local function emit(stream, maxlen, typ, data)
  return redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*',
                    'type', typ, 'data', cjson.encode(data))
end
local function to_table(flat)
  local t = {}
  for i = 1, #flat, 2 do t[flat[i]] = flat[i + 1] end
  return t
end
-- Ends the membership of `name`: a JSON record (the member hash plus name, end_reason,
-- ended_ms) on the past list, the member's keys removed, one event of type `reason`.
local function end_membership(prefix, name, reason, now, past_max, events, maxlen)
  local mkey = prefix .. 'member:' .. name
  local m = to_table(redis.call('HGETALL', mkey))
  local ended = now
  if reason == 'expired' and m['last_heartbeat_ms'] and m['lease_ms'] then
    -- when the lease ran out, not when somebody noticed
    ended = tonumber(m['last_heartbeat_ms']) + tonumber(m['lease_ms'])
  end
  m['name'] = name
  m['end_reason'] = reason
  m['ended_ms'] = num(ended)
  redis.call('LPUSH', prefix .. 'past_members', cjson.encode(m))
  redis.call('LTRIM', prefix .. 'past_members', 0, tonumber(past_max) - 1)
  redis.call('SREM', prefix .. 'members', name)
  redis.call('DEL', mkey)
  if reason ~= 'expired' then redis.call('DEL', prefix .. 'lease:' .. name) end
  emit(events, maxlen, reason, {client = name, epoch = tonumber(m['epoch'])})
end
-- A "commit_refused" event for update `id` of `client` (epoch), with `extra` fields.
local function refuse_commit(events, maxlen, id, client, epoch, reason, extra)
  local d = {update_id = id, client = client, epoch = tonumber(epoch), reason = reason}
  for k, v in pairs(extra) do d[k] = v end
  emit(events, maxlen, 'commit_refused', d)
end
-- Whether shards 0..n-1 all staged (hash `staged`) with the same record. Returns the
-- record, or nil and the refusal {'missing', "i,j,..."} | {'mismatch', i, rec, j, rec}.
local function staged_record(staged, n)
  local missing = {}
  local first, first_i, differ_i
  for i = 0, n - 1 do
    local rec = redis.call('HGET', staged, tostring(i))
    if not rec then
      missing[#missing + 1] = tostring(i)
    elseif first == nil then
      first, first_i = rec, i
    elseif rec ~= first and differ_i == nil then
      differ_i = i
    end
  end
  if #missing > 0 then return nil, {'missing', table.concat(missing, ',')} end
  if differ_i ~= nil then
    return nil, {'mismatch', tostring(first_i), first, tostring(differ_i),
                 redis.call('HGET', staged, tostring(differ_i))}
  end
  return first
end
-- An update id "<client>/<epoch>/<counter>" -> client, epoch, counter (nil: another form).
local function id_position(id)
  local c, e, k = string.match(id, '^(.+)/(%d+)/(%d+)$')
  if not c then return nil end
  return c, tonumber(e), tonumber(k)
end
-- The trim floor (docs/registry.md, "Trimming"): per client, the newest "<epoch>/<counter>"
-- whose commit record was trimmed. Raises the floor of id's client to id.
local function raise_floor(floor_key, id)
  local c, e, k = id_position(id)
  if not c then return end
  local cur = redis.call('HGET', floor_key, c)
  if cur then
    local ce, ck = string.match(cur, '^(%d+)/(%d+)$')
    ce, ck = tonumber(ce), tonumber(ck)
    if e < ce or (e == ce and k <= ck) then return end
  end
  redis.call('HSET', floor_key, c, num(e) .. '/' .. num(k))
end
-- The floor of id's client when id is at or below it (committed and trimmed, or given up
-- by its client), else nil.
local function below_floor(floor_key, id)
  local c, e, k = id_position(id)
  if not c then return nil end
  local cur = redis.call('HGET', floor_key, c)
  if not cur then return nil end
  local ce, ck = string.match(cur, '^(%d+)/(%d+)$')
  ce, ck = tonumber(ce), tonumber(ck)
  if e < ce or (e == ce and k <= ck) then return cur end
  return nil
end
-- The checks every commit starts with, in this order: a commit of this update already
-- recorded ({'dup', seq, client}), the id at or below its client's trim floor
-- ({'trimmed', floor}), the client's lease at another epoch ({'fenced', ...}), another
-- shard count than the run's ({'num_shards', ...}). Returns the reply, or nil when the
-- commit may go on. ARGV: maxlen, update_id, client, epoch, _, num_shards.
local function commit_checks(update_key, lease_key, run_key, events)
  local prev = redis.call('HMGET', update_key, 'seq', 'client')
  if prev[1] then return {'dup', prev[1], prev[2] or ''} end
  local P = string.sub(run_key, 1, #run_key - 3)
  local floor = below_floor(P .. 'trim_floor', ARGV[2])
  if floor then
    refuse_commit(events, ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'trimmed', {floor = floor})
    return {'trimmed', floor}
  end
  local cur = redis.call('GET', lease_key)
  if cur ~= ARGV[4] then
    refuse_commit(events, ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'fenced', {current_epoch = tonumber(cur)})
    return {'fenced', cur or ''}
  end
  local run_n = redis.call('HGET', run_key, 'num_shards')
  if run_n and tonumber(run_n) ~= tonumber(ARGV[6]) then
    refuse_commit(events, ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'num_shards', {run_num_shards = tonumber(run_n)})
    return {'num_shards', run_n}
  end
  return nil
end
-- The commit chain (docs/registry.md, "Commit chain"): the entry at `seq` gets
-- sha1(chain of the entry at seq - 1, seq, id), so one entry's chain stands for the whole
-- log up to it; a shard compares the entry at its version with the one it applied there.
-- P: the key prefix. Called before the entry is added to the log.
local function chain_for(P, seq, id)
  local prev = ''
  if tonumber(seq) > 1 then
    local ids = redis.call('ZRANGEBYSCORE', P .. 'log', tonumber(seq) - 1, tonumber(seq) - 1)
    if ids[1] then prev = redis.call('HGET', P .. 'update:' .. ids[1], 'chain') or '' end
  end
  return redis.sha1hex(prev .. '\n' .. num(seq) .. '\n' .. id)
end
-- refuse_commit for a staged_record refusal.
local function refuse_unstaged(events, maxlen, id, client, epoch, why)
  if why[1] == 'missing' then
    refuse_commit(events, maxlen, id, client, epoch, 'missing_shards', {missing = why[2]})
  else
    refuse_commit(events, maxlen, id, client, epoch, 'stage_mismatch', {shards = why[2] .. ',' .. why[4]})
  end
end
)lua";

// KEYS: run, events. ARGV: maxlen, field, value, ...
// -> {'created'|'exists', HGETALL run}
constexpr const char* kInitRunLua = R"lua(
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {'exists', redis.call('HGETALL', KEYS[1])}
end
local fields = {}
for i = 2, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(fields))
redis.call('HSET', KEYS[1], 'created_ms', num(now_ms()))
local h = to_table(redis.call('HGETALL', KEYS[1]))
emit(KEYS[2], ARGV[1], 'run_created', {model_preset = h['model_preset'],
     layout_hash = h['layout_hash'], num_shards = tonumber(h['num_shards'])})
return {'created', redis.call('HGETALL', KEYS[1])}
)lua";

// KEYS: shards, shard:<i>, shard:<i>:lease, epoch, events.
// ARGV: maxlen, index, address, slice_begin, slice_end, pid, lease_ms, lapsed epoch
//       ('' : register unconditionally, fencing any holder)
// -> {'ok', epoch} | {'held', lease epoch, pid, address}
constexpr const char* kRegisterShardLua = R"lua(
local cur = redis.call('GET', KEYS[3])
if ARGV[8] ~= '' and cur and cur ~= ARGV[8] then
  return {'held', cur, redis.call('HGET', KEYS[2], 'pid') or '', redis.call('HGET', KEYS[2], 'address') or ''}
end
local e = redis.call('INCR', KEYS[4])
local now = num(now_ms())
local prev = redis.call('HGET', KEYS[2], 'epoch')
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'index', ARGV[2], 'address', ARGV[3], 'slice_begin', ARGV[4],
           'slice_end', ARGV[5], 'pid', ARGV[6], 'epoch', e, 'lease_ms', ARGV[7],
           'registered_ms', now, 'last_heartbeat_ms', now, 'alive', '1')
redis.call('SET', KEYS[3], e, 'PX', ARGV[7])
redis.call('SADD', KEYS[1], ARGV[2])
emit(KEYS[5], ARGV[1], ARGV[8] == '' and 'shard_registered' or 'shard_reregistered',
     {shard = tonumber(ARGV[2]), address = ARGV[3], epoch = e, previous_epoch = tonumber(prev)})
return {'ok', e}
)lua";

// KEYS: shard:<i>, shard:<i>:lease, shard:<i>:stats. ARGV: epoch, with_stats, field, value...
// -> {'ok'} | {'fenced', lease epoch or '', registered epoch or ''}
constexpr const char* kShardHeartbeatLua = R"lua(
local cur = redis.call('GET', KEYS[2])
if cur ~= ARGV[1] then
  return {'fenced', cur or '', redis.call('HGET', KEYS[1], 'epoch') or ''}
end
redis.call('PEXPIRE', KEYS[2], redis.call('HGET', KEYS[1], 'lease_ms'))
local now = num(now_ms())
redis.call('HSET', KEYS[1], 'last_heartbeat_ms', now, 'alive', '1')
if ARGV[2] == '1' then
  local f = {}
  for i = 3, #ARGV do f[#f + 1] = ARGV[i] end
  redis.call('HSET', KEYS[3], unpack(f))
  redis.call('HSET', KEYS[3], 'updated_ms', now)
end
return {'ok'}
)lua";

// KEYS: shards, events. ARGV: prefix, maxlen
// -> {{index, HGETALL shard, lease pttl, HGETALL stats}, ...}
constexpr const char* kShardsLua = R"lua(
local out = {}
for _, i in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local k = ARGV[1] .. 'shard:' .. i
  local pttl = redis.call('PTTL', k .. ':lease')
  if pttl < 0 and redis.call('HGET', k, 'alive') == '1' then
    redis.call('HSET', k, 'alive', '0')
    emit(KEYS[2], ARGV[2], 'shard_lost', {shard = tonumber(i),
         epoch = tonumber(redis.call('HGET', k, 'epoch'))})
  end
  out[#out + 1] = {i, redis.call('HGETALL', k), pttl, redis.call('HGETALL', k .. ':stats')}
end
return out
)lua";

// KEYS: members, member:<name>, lease:<name>, epoch, events.
// ARGV: prefix, maxlen, past_max, name, host, domains (JSON), lease_ms, instance
// -> {'ok', epoch} | {'held', epoch, host, instance, lease ms left}
constexpr const char* kJoinLua = R"lua(
local now = now_ms()
if redis.call('EXISTS', KEYS[3]) == 1 then
  local holder = redis.call('HGET', KEYS[2], 'instance') or ''
  if holder ~= ARGV[8] then
    return {'held', redis.call('GET', KEYS[3]) or '', redis.call('HGET', KEYS[2], 'host') or '', holder,
            redis.call('PTTL', KEYS[3])}
  end
end
if redis.call('SISMEMBER', KEYS[1], ARGV[4]) == 1 then
  local reason = 'expired'
  if redis.call('EXISTS', KEYS[3]) == 1 then reason = 'replaced' end
  end_membership(ARGV[1], ARGV[4], reason, now, ARGV[3], KEYS[5], ARGV[2])
end
local e = redis.call('INCR', KEYS[4])
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], 'epoch', e, 'host', ARGV[5], 'domains', ARGV[6], 'instance', ARGV[8],
           'joined_ms', num(now), 'last_heartbeat_ms', num(now), 'heartbeats', '0',
           'lease_ms', ARGV[7], 'stats', '{}')
redis.call('SET', KEYS[3], e, 'PX', ARGV[7])
redis.call('SADD', KEYS[1], ARGV[4])
emit(KEYS[5], ARGV[2], 'join', {client = ARGV[4], epoch = e, host = ARGV[5]})
return {'ok', e}
)lua";

// KEYS: member:<name>, lease:<name>. ARGV: epoch, stats (JSON)
// -> {'ok'} | {'fenced', lease epoch or '', member epoch or ''}
constexpr const char* kHeartbeatLua = R"lua(
local cur = redis.call('GET', KEYS[2])
if cur ~= ARGV[1] then
  return {'fenced', cur or '', redis.call('HGET', KEYS[1], 'epoch') or ''}
end
redis.call('PEXPIRE', KEYS[2], redis.call('HGET', KEYS[1], 'lease_ms'))
redis.call('HSET', KEYS[1], 'last_heartbeat_ms', num(now_ms()), 'stats', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'heartbeats', 1)
return {'ok'}
)lua";

// KEYS: members, member:<name>, lease:<name>, events. ARGV: prefix, maxlen, past_max, name,
// epoch -> {'ok'} | {'gone'} | {'fenced', holder epoch}
constexpr const char* kLeaveLua = R"lua(
local cur = redis.call('GET', KEYS[3])
if cur == ARGV[5] then
  end_membership(ARGV[1], ARGV[4], 'left', now_ms(), ARGV[3], KEYS[4], ARGV[2])
  return {'ok'}
end
if cur then return {'fenced', cur} end
local stored = redis.call('HGET', KEYS[2], 'epoch')
if stored and stored ~= ARGV[5] then return {'fenced', stored} end
if stored and redis.call('SISMEMBER', KEYS[1], ARGV[4]) == 1 then
  end_membership(ARGV[1], ARGV[4], 'expired', now_ms(), ARGV[3], KEYS[4], ARGV[2])
end
return {'gone'}
)lua";

// KEYS: members, events. ARGV: prefix, maxlen, past_max
// -> {{name, HGETALL member, lease pttl}, ...} for live members; closes lapsed ones.
constexpr const char* kMembersLua = R"lua(
local out = {}
local now = now_ms()
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local pttl = redis.call('PTTL', ARGV[1] .. 'lease:' .. name)
  if pttl < 0 then
    end_membership(ARGV[1], name, 'expired', now, ARGV[3], KEYS[2], ARGV[2])
  else
    out[#out + 1] = {name, redis.call('HGETALL', ARGV[1] .. 'member:' .. name), pttl}
  end
end
return out
)lua";

// KEYS: staged:<update>, update:<update>, shard:<i>:lease.
// ARGV: shard index, record (JSON), ttl_ms, shard epoch ('0': no check)
// -> {'ok'} | {'committed', seq} | {'fenced', lease epoch or ''}
constexpr const char* kMarkStagedLua = R"lua(
if ARGV[4] ~= '0' then
  local cur = redis.call('GET', KEYS[3])
  if cur ~= ARGV[4] then return {'fenced', cur or ''} end
end
local seq = redis.call('HGET', KEYS[2], 'seq')
if seq then return {'committed', seq} end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {'ok'}
)lua";

// KEYS: staged:<update>, update:<update>. ARGV: shard index
// -> {'released'} | {'committed', seq}
constexpr const char* kReleaseStagedLua = R"lua(
local seq = redis.call('HGET', KEYS[2], 'seq')
if seq then return {'committed', seq} end
redis.call('HDEL', KEYS[1], ARGV[1])
return {'released'}
)lua";

// KEYS: update:<id>, lease:<client>, staged:<id>, seq, log, run, events, refusals.
// ARGV: maxlen, update_id, client, epoch, meta, num_shards, max_staleness (-1: none),
//       base_version, prefix
// -> {'ok', seq} | {'dup', seq, client} | {'fenced', lease epoch or ''}
//    | {'num_shards', run's} | {'stale', staleness} | {'future', seq}
//    | {'missing', "i,j,..."} | {'mismatch', i, record i, j, record j}
constexpr const char* kCommitLua = R"lua(
local function refuse(reason, extra)
  refuse_commit(KEYS[7], ARGV[1], ARGV[2], ARGV[3], ARGV[4], reason, extra)
end
local early = commit_checks(KEYS[1], KEYS[2], KEYS[6], KEYS[7])
if early then return early end
local n = tonumber(ARGV[6])
-- Staleness first: it only grows, so pushing again would not help.
local counter = tonumber(redis.call('GET', KEYS[4]) or '0')
local max_s = tonumber(ARGV[7])
if max_s >= 0 then
  local s = counter - tonumber(ARGV[8])
  if s < 0 then return {'future', num(counter)} end
  if s > max_s then
    redis.call('HINCRBY', KEYS[8], 'too_stale', 1)
    refuse('too_stale', {staleness = s, max_staleness = max_s})
    return {'stale', num(s)}
  end
end
local first, why = staged_record(KEYS[3], n)
if not first then
  refuse_unstaged(KEYS[7], ARGV[1], ARGV[2], ARGV[3], ARGV[4], why)
  return why
end
local seq = redis.call('INCR', KEYS[4])
redis.call('HSET', KEYS[1], 'seq', seq, 'client', ARGV[3], 'epoch', ARGV[4],
           'num_shards', ARGV[6], 'meta', ARGV[5], 'stage_record', first,
           'committed_ms', num(now_ms()), 'chain', chain_for(ARGV[9], seq, ARGV[2]))
redis.call('ZADD', KEYS[5], seq, ARGV[2])
redis.call('DEL', KEYS[3])
emit(KEYS[7], ARGV[1], 'commit', {seq = seq, update_id = ARGV[2], client = ARGV[3],
     epoch = tonumber(ARGV[4])})
return {'ok', seq}
)lua";

// KEYS: log, trimmed. ARGV: prefix, after seq, limit
// -> {below, {update_id, HGETALL update}, ...}
constexpr const char* kCommittedAfterLua = R"lua(
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[2], '+inf', 'LIMIT', 0, ARGV[3])
local out = {redis.call('HGET', KEYS[2], 'below') or '1'}
for _, id in ipairs(ids) do
  out[#out + 1] = {id, redis.call('HGETALL', ARGV[1] .. 'update:' .. id)}
end
return out
)lua";

// KEYS: update:<id>, trim_floor, trimmed. ARGV: update id
// -> {'found', HGETALL} | {'trimmed', floor, below} | {'none'}
constexpr const char* kLookupCommitLua = R"lua(
local h = redis.call('HGETALL', KEYS[1])
if #h > 0 then return {'found', h} end
local floor = below_floor(KEYS[2], ARGV[1])
if floor then return {'trimmed', floor, redis.call('HGET', KEYS[3], 'below') or '1'} end
return {'none'}
)lua";

// KEYS: shards, run, log, trimmed, trim_floor. ARGV: prefix, max entries
// -> {below, entries trimmed now}
// Trims the log below the oldest checkpoint every shard keeps (P shard:<i>:stats
// oldest_checkpoint_version; nothing while a shard of the run has not reported one).
constexpr const char* kTrimLogLua = R"lua(
local P = ARGV[1]
local n = tonumber(redis.call('HGET', KEYS[2], 'num_shards') or '0')
local below = tonumber(redis.call('HGET', KEYS[4], 'below') or '1')
local shards = redis.call('SMEMBERS', KEYS[1])
if n <= 0 or #shards < n then return {num(below), 0} end
local keep = nil
for _, i in ipairs(shards) do
  local v = tonumber(redis.call('HGET', P .. 'shard:' .. i .. ':stats', 'oldest_checkpoint_version') or '-1')
  if v < 0 then return {num(below), 0} end
  if keep == nil or v < keep then keep = v end
end
if keep <= below then return {num(below), 0} end
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. num(keep), 'WITHSCORES', 'LIMIT', 0, ARGV[2])
local count, tokens, last = 0, 0, below - 1
for i = 1, #ids, 2 do
  local id, seq = ids[i], tonumber(ids[i + 1])
  local ukey = P .. 'update:' .. id
  local meta = redis.call('HGET', ukey, 'meta')
  local ok, m = pcall(cjson.decode, meta or 'null')
  if ok and type(m) == 'table' and type(m.tokens) == 'number' then tokens = tokens + m.tokens end
  if string.sub(id, 1, 6) == 'round/' then
    -- a closed round: its updates' records go with it
    if ok and type(m) == 'table' and type(m.updates) == 'table' then
      for _, u in ipairs(m.updates) do
        if type(u.update_id) == 'string' then
          raise_floor(KEYS[5], u.update_id)
          redis.call('DEL', P .. 'update:' .. u.update_id)
        end
      end
    end
  else
    raise_floor(KEYS[5], id)
  end
  redis.call('DEL', ukey)
  redis.call('ZREM', KEYS[3], id)
  count = count + 1
  last = seq
end
if count > 0 then
  redis.call('HSET', KEYS[4], 'below', num(last + 1))
  redis.call('HINCRBY', KEYS[4], 'entries', count)
  redis.call('HINCRBY', KEYS[4], 'tokens', tokens)
end
return {num(last + 1), count}
)lua";

// KEYS: log, seq. ARGV: prefix, seq, limit
// -> {head, {update_id, score, HGETALL update}, ...}: the entry at seq (if any) and up to
//    `limit` after it.
constexpr const char* kReadLogLua = R"lua(
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], ARGV[2], '+inf', 'WITHSCORES', 'LIMIT', 0,
                       tonumber(ARGV[3]) + 1)
local out = {redis.call('GET', KEYS[2]) or '0'}
for i = 1, #ids, 2 do
  out[#out + 1] = {ids[i], ids[i + 1], redis.call('HGETALL', ARGV[1] .. 'update:' .. ids[i])}
end
return out
)lua";

// KEYS: refusals, events. ARGV: maxlen, reason, update_id, client, shard, detail -> id
constexpr const char* kRefusalLua = R"lua(
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
return emit(KEYS[2], ARGV[1], 'refusal', {reason = ARGV[2], update_id = ARGV[3],
            client = ARGV[4], shard = tonumber(ARGV[5]), detail = ARGV[6]})
)lua";

}  // namespace

// Reply helpers shared with ps/rounds.cc (declared in ps/registry_internal.h).
namespace registry_internal {

// ---- validation -------------------------------------------------------------------------

// Names that become part of keys and events: printable ASCII without spaces.
Status CheckName(const std::string& value, const char* what) {
  if (value.empty()) return InvalidArgument(std::string(what) + " is empty");
  if (value.size() > 256) {
    return InvalidArgument(std::string(what) + " is longer than 256 bytes: " + value.substr(0, 64) +
                           "...");
  }
  for (unsigned char c : value) {
    if (c <= 0x20 || c >= 0x7f) {
      return InvalidArgument(std::string(what) + " \"" + value +
                             "\" has a space, control or non-ASCII character");
    }
  }
  return Status::Ok();
}

Status CheckRunId(const std::string& run_id) {
  if (run_id.empty() || run_id.size() > 128) {
    return InvalidArgument("run id must have 1 to 128 characters, got \"" + run_id + "\"");
  }
  for (char c : run_id) {
    const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                    c == '.' || c == '_' || c == '-';
    if (!ok) return InvalidArgument("run id \"" + run_id + "\" may only use [A-Za-z0-9._-]");
  }
  return Status::Ok();
}

Status CheckLease(std::chrono::milliseconds lease) {
  if (lease.count() <= 0) {
    return InvalidArgument("lease must be positive, got " + std::to_string(lease.count()) + " ms");
  }
  return Status::Ok();
}

Status CheckEpoch(int64_t epoch) {
  if (epoch <= 0) return InvalidArgument("epoch must be positive, got " + std::to_string(epoch));
  return Status::Ok();
}

// ---- replies ----------------------------------------------------------------------------

std::string DumpJson(const Json& j) {
  // Invalid UTF-8 in a string would make dump() throw; replace it instead.
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

StatusOr<Json> ParseJson(const std::string& text, const std::string& what) {
  Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded())
    return DataLoss("registry: " + what + " is not valid JSON: " + text.substr(0, 200));
  return j;
}

StatusOr<int64_t> ParseInt(const std::string& text, const std::string& what) {
  int64_t v = 0;
  const char* end = text.data() + text.size();
  auto [ptr, ec] = std::from_chars(text.data(), end, v);
  if (ec != std::errc() || ptr != end) {
    return DataLoss("registry: " + what + " is not an integer: \"" + text.substr(0, 64) + "\"");
  }
  return v;
}

Status UnexpectedReply(const std::string& what) {
  return Internal("registry: unexpected reply from Redis for " + what);
}

bool IsString(const redisReply* r) {
  return r != nullptr && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

std::string Str(const redisReply* r) { return std::string(r->str, r->len); }

StatusOr<std::string> AsString(const redisReply* r, const std::string& what) {
  if (!IsString(r)) return UnexpectedReply(what);
  return Str(r);
}

StatusOr<int64_t> AsInt(const redisReply* r, const std::string& what) {
  if (r != nullptr && r->type == REDIS_REPLY_INTEGER) return static_cast<int64_t>(r->integer);
  if (IsString(r)) return ParseInt(Str(r), what);
  return UnexpectedReply(what);
}

// An array of (field, value) strings, as HGETALL answers.
StatusOr<Hash> AsHash(const redisReply* r, const std::string& what) {
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0) {
    return UnexpectedReply(what);
  }
  Hash h;
  for (size_t i = 0; i + 1 < r->elements; i += 2) {
    if (!IsString(r->element[i]) || !IsString(r->element[i + 1])) return UnexpectedReply(what);
    h[Str(r->element[i])] = Str(r->element[i + 1]);
  }
  return h;
}

// An array reply's element i, or null when it is not an array that long.
const redisReply* Elem(const redisReply* r, size_t i) {
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY || i >= r->elements) return nullptr;
  return r->element[i];
}

// The script replies {'tag', ...}: the tag.
std::string Tag(const redisReply* r) {
  const redisReply* t = Elem(r, 0);
  return IsString(t) ? Str(t) : std::string();
}

std::optional<Status> StagingRefusal(const redisReply* r, const std::string& what) {
  auto text = [&](size_t i) {
    const redisReply* e = Elem(r, i);
    return IsString(e) ? Str(e) : std::string("?");
  };
  const std::string tag = Tag(r);
  if (tag == "missing") {
    return FailedPrecondition(what + " refused: not staged on shard(s) " + text(1));
  }
  if (tag == "mismatch") {
    return FailedPrecondition(what + " refused: stage records differ: shard " + text(1) + " has " +
                              text(2) + ", shard " + text(3) + " has " + text(4));
  }
  return std::nullopt;
}

std::string Field(const Hash& h, const std::string& name) {
  auto it = h.find(name);
  return it == h.end() ? std::string() : it->second;
}

// An integer field; `fallback` when absent.
StatusOr<int64_t> IntField(const Hash& h, const std::string& name, const std::string& where,
                           int64_t fallback) {
  auto it = h.find(name);
  if (it == h.end()) return fallback;
  return ParseInt(it->second, where + "." + name);
}

}  // namespace registry_internal

namespace {

// ---- records ----------------------------------------------------------------------------

// Field/value pairs of P run, in comparison order after "schema".
std::vector<std::string> IdentityFields(const RunIdentity& id) {
  // clang-format off
  return {"schema",           kSchemaVersion,
          "model_preset",     id.model_preset,
          "model_config",     DumpJson(id.model_config),
          "layout_hash",      id.layout_hash,
          "tokenizer_sha256", id.tokenizer_sha256,
          "codec",            id.codec,
          "num_shards",       std::to_string(id.num_shards),
          "apply_config",     id.apply_config.is_null() ? std::string() : DumpJson(id.apply_config)};
  // clang-format on
}

StatusOr<RunIdentity> ParseIdentity(const Hash& h, const std::string& where) {
  const std::string schema = Field(h, "schema");
  if (schema != kSchemaVersion) {
    return FailedPrecondition(where + " has registry schema \"" + schema +
                              "\", this build uses \"" + kSchemaVersion + "\"");
  }
  RunIdentity id;
  id.model_preset = Field(h, "model_preset");
  ASSIGN_OR_RETURN(id.model_config, ParseJson(Field(h, "model_config"), where + ".model_config"));
  id.layout_hash = Field(h, "layout_hash");
  id.tokenizer_sha256 = Field(h, "tokenizer_sha256");
  id.codec = Field(h, "codec");
  ASSIGN_OR_RETURN(int64_t shards, IntField(h, "num_shards", where));
  id.num_shards = static_cast<int>(shards);
  if (const std::string apply = Field(h, "apply_config"); !apply.empty()) {
    ASSIGN_OR_RETURN(id.apply_config, ParseJson(apply, where + ".apply_config"));
  }
  ASSIGN_OR_RETURN(id.created_ms, IntField(h, "created_ms", where));
  return id;
}

std::string Quoted(const std::string& s) {
  std::string q = DumpJson(Json(s));
  return q.size() > 200 ? q.substr(0, 200) + "..." : q;
}

// FailedPrecondition naming the first field where `stored` and `mine` differ.
Status CompareIdentity(const std::string& run_id, const RunIdentity& stored,
                       const RunIdentity& mine) {
  auto mismatch = [&](const std::string& field, const std::string& theirs,
                      const std::string& ours) {
    return FailedPrecondition("run \"" + run_id + "\" identity mismatch in " + field +
                              ": the registry has " + theirs + ", this process has " + ours +
                              " (use the run's configuration, or a new run id)");
  };
  if (stored.model_preset != mine.model_preset) {
    return mismatch("model_preset", Quoted(stored.model_preset), Quoted(mine.model_preset));
  }
  // Names the first differing entry of a JSON field, not the whole blob.
  auto json_mismatch = [&](const std::string& field, const Json& theirs, const Json& ours) {
    const Json patch = Json::diff(theirs, ours);
    std::string path = patch.empty() ? "" : patch[0].value("path", "");
    const Json::json_pointer ptr(path);
    auto at = [&](const Json& j) {
      std::string s = j.contains(ptr) ? DumpJson(j.at(ptr)) : "(absent)";
      return s.size() > 200 ? s.substr(0, 200) + "..." : s;
    };
    return mismatch(field + path, at(theirs), at(ours));
  };
  if (stored.model_config != mine.model_config) {
    return json_mismatch("model_config", stored.model_config, mine.model_config);
  }
  if (stored.layout_hash != mine.layout_hash) {
    return mismatch("layout_hash", Quoted(stored.layout_hash), Quoted(mine.layout_hash));
  }
  if (stored.tokenizer_sha256 != mine.tokenizer_sha256) {
    return mismatch("tokenizer_sha256", Quoted(stored.tokenizer_sha256),
                    Quoted(mine.tokenizer_sha256));
  }
  if (stored.codec != mine.codec) {
    return mismatch("codec", Quoted(stored.codec), Quoted(mine.codec));
  }
  if (stored.num_shards != mine.num_shards) {
    return mismatch("num_shards", std::to_string(stored.num_shards),
                    std::to_string(mine.num_shards));
  }
  if (!stored.apply_config.is_null() && !mine.apply_config.is_null() &&
      stored.apply_config != mine.apply_config) {
    return json_mismatch("apply_config", stored.apply_config, mine.apply_config);
  }
  return Status::Ok();
}

// A double as text that reads back to the same value.
std::string DoubleText(double v) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.17g", v);
  return text;
}

std::vector<std::string> StatsFields(const ShardStats& s) {
  // clang-format off
  return {"version",                 std::to_string(s.version),
          "applied_updates",         std::to_string(s.applied_updates),
          "bytes_in",                std::to_string(s.bytes_in),
          "bytes_out",               std::to_string(s.bytes_out),
          "last_checkpoint_version", std::to_string(s.last_checkpoint_version),
          "last_checkpoint_ms",      std::to_string(s.last_checkpoint_ms),
          "oldest_checkpoint_version", std::to_string(s.oldest_checkpoint_version),
          "norm_refused",            std::to_string(s.norm_refused),
          "norm_median",             DoubleText(s.norm_median)};
  // clang-format on
}

StatusOr<ShardStats> ParseStats(const Hash& h, const std::string& where) {
  ShardStats s;
  ASSIGN_OR_RETURN(s.version, IntField(h, "version", where));
  ASSIGN_OR_RETURN(s.applied_updates, IntField(h, "applied_updates", where));
  ASSIGN_OR_RETURN(s.bytes_in, IntField(h, "bytes_in", where));
  ASSIGN_OR_RETURN(s.bytes_out, IntField(h, "bytes_out", where));
  ASSIGN_OR_RETURN(s.last_checkpoint_version, IntField(h, "last_checkpoint_version", where));
  ASSIGN_OR_RETURN(s.last_checkpoint_ms, IntField(h, "last_checkpoint_ms", where));
  ASSIGN_OR_RETURN(s.oldest_checkpoint_version,
                   IntField(h, "oldest_checkpoint_version", where, -1));
  ASSIGN_OR_RETURN(s.norm_refused, IntField(h, "norm_refused", where, 0));
  const std::string median = Field(h, "norm_median");
  if (!median.empty()) {
    char* end = nullptr;
    s.norm_median = std::strtod(median.c_str(), &end);
    if (end != median.c_str() + median.size() || !std::isfinite(s.norm_median) || s.norm_median < 0) {
      return DataLoss(where + ".norm_median is not a finite number >= 0: \"" + median + "\"");
    }
  }
  ASSIGN_OR_RETURN(s.updated_ms, IntField(h, "updated_ms", where));
  return s;
}

// A member hash (P member:<name>, or a past record's fields).
StatusOr<Member> ParseMember(const std::string& name, const Hash& h) {
  const std::string where = "member " + name;
  Member m;
  m.name = name;
  ASSIGN_OR_RETURN(m.epoch, IntField(h, "epoch", where));
  m.host = Field(h, "host");
  const std::string domains = Field(h, "domains");
  if (!domains.empty()) {
    ASSIGN_OR_RETURN(Json d, ParseJson(domains, where + ".domains"));
    if (!d.is_array()) return DataLoss("registry: " + where + ".domains is not a JSON array");
    for (const auto& x : d) {
      if (x.is_string()) m.data_domains.push_back(x.get<std::string>());
    }
  }
  ASSIGN_OR_RETURN(m.joined_ms, IntField(h, "joined_ms", where));
  ASSIGN_OR_RETURN(m.last_heartbeat_ms, IntField(h, "last_heartbeat_ms", where));
  ASSIGN_OR_RETURN(m.heartbeats, IntField(h, "heartbeats", where));
  ASSIGN_OR_RETURN(m.lease_ms, IntField(h, "lease_ms", where));
  const std::string stats = Field(h, "stats");
  if (!stats.empty()) {
    ASSIGN_OR_RETURN(m.stats, ParseJson(stats, where + ".stats"));
  }
  m.end_reason = Field(h, "end_reason");
  ASSIGN_OR_RETURN(m.ended_ms, IntField(h, "ended_ms", where));
  return m;
}

StatusOr<CommittedUpdate> ParseCommit(const std::string& update_id, const Hash& h) {
  const std::string where = "update " + update_id;
  CommittedUpdate u;
  u.update_id = update_id;
  ASSIGN_OR_RETURN(u.seq, IntField(h, "seq", where));
  u.client = Field(h, "client");
  ASSIGN_OR_RETURN(u.epoch, IntField(h, "epoch", where));
  ASSIGN_OR_RETURN(int64_t shards, IntField(h, "num_shards", where));
  u.num_shards = static_cast<int>(shards);
  ASSIGN_OR_RETURN(u.committed_ms, IntField(h, "committed_ms", where));
  ASSIGN_OR_RETURN(u.meta, ParseJson(Field(h, "meta"), where + ".meta"));
  ASSIGN_OR_RETURN(u.stage_record, ParseJson(Field(h, "stage_record"), where + ".stage_record"));
  u.chain = Field(h, "chain");
  return u;
}

// XRANGE-style entries: {{id, {field, value, ...}}, ...}.
StatusOr<std::vector<Event>> ParseEvents(const redisReply* r) {
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY) return UnexpectedReply("event stream");
  std::vector<Event> out;
  out.reserve(r->elements);
  for (size_t i = 0; i < r->elements; ++i) {
    const redisReply* entry = r->element[i];
    ASSIGN_OR_RETURN(std::string id, AsString(Elem(entry, 0), "event id"));
    ASSIGN_OR_RETURN(Hash fields, AsHash(Elem(entry, 1), "event " + id));
    Event e;
    e.id = id;
    ASSIGN_OR_RETURN(e.ms, ParseInt(id.substr(0, id.find('-')), "event id " + id));
    e.type = Field(fields, "type");
    auto data = fields.find("data");
    if (data != fields.end()) {
      ASSIGN_OR_RETURN(e.data, ParseJson(data->second, "event " + id + " data"));
    } else {
      // Written by something else than AddEvent: keep its raw fields.
      e.data = Json::object();
      for (const auto& [k, v] : fields) {
        if (k != "type") e.data[k] = v;
      }
    }
    out.push_back(std::move(e));
  }
  return out;
}

// A stream id "<ms>" or "<ms>-<n>".
bool ValidStreamId(const std::string& id) {
  size_t dash = id.find('-');
  auto digits = [](const std::string& s) {
    return !s.empty() && s.size() <= 20 &&
           std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
  };
  if (dash == std::string::npos) return digits(id);
  return digits(id.substr(0, dash)) && digits(id.substr(dash + 1));
}

// Maps an error reply. Not NOSCRIPT: EvalLocked handles that.
Status MapErrorReply(const std::string& message, const std::string& endpoint) {
  auto starts = [&](const char* p) { return message.rfind(p, 0) == 0; };
  const std::string text = "redis " + endpoint + ": " + message;
  if (starts("LOADING") || starts("BUSY") || starts("MASTERDOWN") || starts("TRYAGAIN") ||
      starts("CLUSTERDOWN") || starts("READONLY") || starts("OOM")) {
    return Unavailable(text);
  }
  if (starts("NOAUTH") || starts("WRONGPASS") || starts("NOPERM")) {
    return FailedPrecondition(text + " (check the Redis password)");
  }
  return Internal(text);
}

// hiredis writes with write(2): on a connection the peer reset (Redis crashed) that
// raises SIGPIPE, which would kill a process that has not ignored it. Block it on this
// thread around each command and discard one we caused; the write then fails with EPIPE
// and the call returns kUnavailable.
class ScopedSigpipeBlock {
 public:
  ScopedSigpipeBlock() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t old;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old);
    was_blocked_ = sigismember(&old, SIGPIPE) == 1;
  }
  ~ScopedSigpipeBlock() {
    if (was_blocked_) return;  // the caller handles SIGPIPE its own way
    const int saved_errno = errno;
    sigset_t pending;
    if (sigpending(&pending) == 0 && sigismember(&pending, SIGPIPE) == 1) {
      const timespec zero{0, 0};
      while (sigtimedwait(&pipe_, nullptr, &zero) == SIGPIPE) {
      }
    }
    pthread_sigmask(SIG_UNBLOCK, &pipe_, nullptr);
    errno = saved_errno;
  }
  ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
  ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;

 private:
  sigset_t pipe_;
  bool was_blocked_ = false;
};

timeval ToTimeval(std::chrono::milliseconds d) {
  timeval tv;
  tv.tv_sec = static_cast<time_t>(d.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((d.count() % 1000) * 1000);
  return tv;
}

}  // namespace

// ---- connection ---------------------------------------------------------------------------

void Registry::ContextDeleter::operator()(redisContext* c) const { redisFree(c); }

Registry::Registry(RegistryOptions options)
    : options_(std::move(options)), prefix_("fedps:{" + options_.run_id + "}:") {}

Registry::~Registry() = default;

StatusOr<std::unique_ptr<Registry>> Registry::Connect(RegistryOptions options) {
  RETURN_IF_ERROR(CheckRunId(options.run_id));
  if (options.host.empty()) return InvalidArgument("registry: Redis host is empty");
  if (options.port <= 0 || options.port > 65535) {
    return InvalidArgument("registry: Redis port " + std::to_string(options.port) +
                           " is out of range");
  }
  if (options.connect_timeout.count() <= 0 || options.command_timeout.count() <= 0) {
    return InvalidArgument("registry: connect and command timeouts must be positive");
  }
  if (options.events_max_len <= 0 || options.past_members_max <= 0 ||
      options.staged_ttl.count() <= 0) {
    return InvalidArgument(
        "registry: events_max_len, past_members_max and staged_ttl must be positive");
  }
  std::unique_ptr<Registry> registry(new Registry(std::move(options)));
  {
    std::lock_guard<std::mutex> lock(registry->mu_);
    RETURN_IF_ERROR(registry->ConnectLocked());
  }
  return registry;
}

Status Registry::ConnectLocked() {
  const std::string endpoint = options_.host + ":" + std::to_string(options_.port);
  redisContext* c = redisConnectWithTimeout(options_.host.c_str(), options_.port,
                                            ToTimeval(options_.connect_timeout));
  if (c == nullptr) return Unavailable("redis " + endpoint + ": cannot allocate a context");
  std::unique_ptr<redisContext, ContextDeleter> ctx(c);
  if (c->err) return Unavailable("redis " + endpoint + ": connect: " + c->errstr);
  if (redisSetTimeout(c, ToTimeval(options_.command_timeout)) != REDIS_OK) {
    return Unavailable("redis " + endpoint + ": cannot set the command timeout: " + c->errstr);
  }
  redisEnableKeepAlive(c);
  ctx_ = std::move(ctx);
  script_sha_.clear();  // a new server may not know our scripts
  if (!options_.password.empty()) {
    Status auth = CommandLocked({"AUTH", options_.password}).status();
    if (!auth.ok()) {
      DropConnectionLocked();
      return auth.WithContext("AUTH");
    }
  }
  return Status::Ok();
}

void Registry::DropConnectionLocked() {
  ctx_.reset();
  script_sha_.clear();
}

StatusOr<Registry::Reply> Registry::CommandLocked(const std::vector<std::string>& args) {
  if (!ctx_) RETURN_IF_ERROR(ConnectLocked());
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  argv.reserve(args.size());
  lens.reserve(args.size());
  for (const auto& a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  void* raw;
  int io_errno;
  {
    ScopedSigpipeBlock no_sigpipe;
    raw = redisCommandArgv(ctx_.get(), static_cast<int>(args.size()), argv.data(), lens.data());
    io_errno = errno;
  }
  const std::string endpoint = options_.host + ":" + std::to_string(options_.port);
  if (raw == nullptr) {
    // The connection is unusable (and may hold half an answer): drop it, reconnect later.
    std::string why = ctx_->errstr;
    if (ctx_->err == REDIS_ERR_IO && (io_errno == EAGAIN || io_errno == EWOULDBLOCK)) {
      why = "no answer within " + std::to_string(options_.command_timeout.count()) + " ms";
    }
    DropConnectionLocked();
    return Unavailable("redis " + endpoint + ": " + args[0] + ": " + why);
  }
  Reply reply{std::unique_ptr<redisReply, ReplyFree>(static_cast<redisReply*>(raw))};
  if (reply.r->type == REDIS_REPLY_ERROR) {
    const std::string message = Str(reply.get());
    if (message.rfind("NOSCRIPT", 0) == 0) return NotFound(message);  // see EvalLocked
    return MapErrorReply(message, endpoint);
  }
  return reply;
}

StatusOr<Registry::Reply> Registry::EvalLocked(const char* name, const char* lua,
                                               const std::vector<std::string>& keys,
                                               const std::vector<std::string>& args) {
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!ctx_) RETURN_IF_ERROR(ConnectLocked());
    auto sha = script_sha_.find(name);
    if (sha == script_sha_.end()) {
      ASSIGN_OR_RETURN(Reply loaded,
                       CommandLocked({"SCRIPT", "LOAD", std::string(kLuaPrelude) + lua}));
      ASSIGN_OR_RETURN(std::string digest, AsString(loaded.get(), "SCRIPT LOAD"));
      sha = script_sha_.emplace(name, digest).first;
    }
    std::vector<std::string> cmd = {"EVALSHA", sha->second, std::to_string(keys.size())};
    cmd.insert(cmd.end(), keys.begin(), keys.end());
    cmd.insert(cmd.end(), args.begin(), args.end());
    auto reply = CommandLocked(cmd);
    if (reply.ok() || reply.status().code() != StatusCode::kNotFound) {
      if (!reply.ok()) return reply.status().WithContext(std::string("script ") + name);
      return reply;
    }
    script_sha_.erase(name);  // NOSCRIPT: the server lost its script cache; load again
  }
  return Internal(std::string("registry: script ") + name + " keeps answering NOSCRIPT");
}

StatusOr<Registry::Reply> Registry::Command(const std::vector<std::string>& args) {
  std::lock_guard<std::mutex> lock(mu_);
  return CommandLocked(args);
}

StatusOr<Registry::Reply> Registry::Eval(const char* name, const char* lua,
                                         const std::vector<std::string>& keys,
                                         const std::vector<std::string>& args) {
  std::lock_guard<std::mutex> lock(mu_);
  return EvalLocked(name, lua, keys, args);
}

Status Registry::Ping() {
  ASSIGN_OR_RETURN(Reply reply, Command({"PING"}));
  ASSIGN_OR_RETURN(std::string pong, AsString(reply.get(), "PING"));
  if (pong != "PONG") return UnexpectedReply("PING");
  return Status::Ok();
}

// ---- run identity -------------------------------------------------------------------------

StatusOr<RunIdentity> Registry::InitRun(const RunIdentity& identity) {
  if (identity.num_shards <= 0) {
    return InvalidArgument("run identity: num_shards must be positive, got " +
                           std::to_string(identity.num_shards));
  }
  std::vector<std::string> args = {std::to_string(options_.events_max_len)};
  for (auto& f : IdentityFields(identity)) args.push_back(std::move(f));
  ASSIGN_OR_RETURN(Reply reply, Eval("init_run", kInitRunLua, {Key("run"), Key("events")}, args));
  const std::string tag = Tag(reply.get());
  if (tag != "created" && tag != "exists") return UnexpectedReply("InitRun");
  ASSIGN_OR_RETURN(Hash stored_hash, AsHash(Elem(reply.get(), 1), "InitRun"));
  ASSIGN_OR_RETURN(RunIdentity stored, ParseIdentity(stored_hash, Key("run")));
  RETURN_IF_ERROR(CompareIdentity(options_.run_id, stored, identity));
  return stored;
}

StatusOr<RunIdentity> Registry::GetRun() {
  ASSIGN_OR_RETURN(Reply reply, Command({"HGETALL", Key("run")}));
  ASSIGN_OR_RETURN(Hash h, AsHash(reply.get(), "GetRun"));
  if (h.empty()) {
    return NotFound("run \"" + options_.run_id + "\" is not initialised (no " + Key("run") + ")");
  }
  return ParseIdentity(h, Key("run"));
}

// ---- shard directory ----------------------------------------------------------------------

StatusOr<int64_t> Registry::RegisterShard(const ShardInfo& info, std::chrono::milliseconds lease) {
  return RegisterShardIf(info, lease, 0);
}

StatusOr<int64_t> Registry::ReclaimShard(const ShardInfo& info, std::chrono::milliseconds lease,
                                         int64_t lapsed_epoch) {
  RETURN_IF_ERROR(CheckEpoch(lapsed_epoch));
  return RegisterShardIf(info, lease, lapsed_epoch);
}

StatusOr<int64_t> Registry::RegisterShardIf(const ShardInfo& info, std::chrono::milliseconds lease,
                                            int64_t lapsed_epoch) {
  if (info.index < 0) {
    return InvalidArgument("shard index must be >= 0, got " + std::to_string(info.index));
  }
  RETURN_IF_ERROR(CheckName(info.address, "shard address"));
  RETURN_IF_ERROR(CheckLease(lease));
  if (info.slice_begin < 0 || info.slice_end < info.slice_begin) {
    return InvalidArgument("shard " + std::to_string(info.index) + ": bad slice [" +
                           std::to_string(info.slice_begin) + ", " +
                           std::to_string(info.slice_end) + ")");
  }
  const std::string shard = Key("shard:" + std::to_string(info.index));
  ASSIGN_OR_RETURN(
      Reply reply,
      Eval("register_shard", kRegisterShardLua,
           {Key("shards"), shard, shard + ":lease", Key("epoch"), Key("events")},
           {std::to_string(options_.events_max_len), std::to_string(info.index), info.address,
            std::to_string(info.slice_begin), std::to_string(info.slice_end),
            std::to_string(info.pid), std::to_string(lease.count()),
            lapsed_epoch > 0 ? std::to_string(lapsed_epoch) : std::string()}));
  const std::string tag = Tag(reply.get());
  if (tag == "ok") return AsInt(Elem(reply.get(), 1), "RegisterShard epoch");
  if (tag == "held") {
    return Aborted("shard " + std::to_string(info.index) + " is held by a live lease of epoch " +
                   Str(Elem(reply.get(), 1)) + " (pid " + Str(Elem(reply.get(), 2)) + " at " +
                   Str(Elem(reply.get(), 3)) + "): another process owns it");
  }
  return UnexpectedReply("RegisterShard");
}

Status Registry::ShardHeartbeat(int index, int64_t epoch, const ShardStats* stats) {
  if (index < 0) return InvalidArgument("shard index must be >= 0, got " + std::to_string(index));
  RETURN_IF_ERROR(CheckEpoch(epoch));
  const std::string shard = Key("shard:" + std::to_string(index));
  std::vector<std::string> args = {std::to_string(epoch), stats ? "1" : "0"};
  if (stats) {
    for (auto& f : StatsFields(*stats)) args.push_back(std::move(f));
  }
  ASSIGN_OR_RETURN(Reply reply, Eval("shard_heartbeat", kShardHeartbeatLua,
                                     {shard, shard + ":lease", shard + ":stats"}, args));
  const std::string tag = Tag(reply.get());
  if (tag == "ok") return Status::Ok();
  if (tag == "fenced") {
    const redisReply* holder = Elem(reply.get(), 1);
    const std::string held = IsString(holder) ? Str(holder) : "";
    return Aborted(
        "shard " + std::to_string(index) + " epoch " + std::to_string(epoch) +
        ": lease expired or fenced" +
        (held.empty() ? std::string(" (no live lease)") : " (epoch " + held + " holds it)") +
        "; register again");
  }
  return UnexpectedReply("ShardHeartbeat");
}

StatusOr<std::vector<ShardStatus>> Registry::Shards() {
  ASSIGN_OR_RETURN(Reply reply, Eval("shards", kShardsLua, {Key("shards"), Key("events")},
                                     {prefix_, std::to_string(options_.events_max_len)}));
  const redisReply* r = reply.get();
  if (r->type != REDIS_REPLY_ARRAY) return UnexpectedReply("Shards");
  std::vector<ShardStatus> out;
  for (size_t i = 0; i < r->elements; ++i) {
    const redisReply* e = r->element[i];
    ASSIGN_OR_RETURN(std::string index_text, AsString(Elem(e, 0), "Shards index"));
    const std::string where = "shard " + index_text;
    ASSIGN_OR_RETURN(int64_t index, ParseInt(index_text, where));
    ASSIGN_OR_RETURN(Hash h, AsHash(Elem(e, 1), where));
    ASSIGN_OR_RETURN(int64_t pttl, AsInt(Elem(e, 2), where + " lease"));
    ASSIGN_OR_RETURN(Hash stats, AsHash(Elem(e, 3), where + " stats"));
    ShardStatus s;
    s.info.index = static_cast<int>(index);
    s.info.address = Field(h, "address");
    ASSIGN_OR_RETURN(s.info.slice_begin, IntField(h, "slice_begin", where));
    ASSIGN_OR_RETURN(s.info.slice_end, IntField(h, "slice_end", where));
    ASSIGN_OR_RETURN(s.info.pid, IntField(h, "pid", where));
    ASSIGN_OR_RETURN(s.epoch, IntField(h, "epoch", where));
    ASSIGN_OR_RETURN(s.registered_ms, IntField(h, "registered_ms", where));
    ASSIGN_OR_RETURN(s.last_heartbeat_ms, IntField(h, "last_heartbeat_ms", where));
    s.alive = pttl >= 0;
    s.lease_remaining_ms = std::max<int64_t>(pttl, 0);
    ASSIGN_OR_RETURN(s.stats, ParseStats(stats, where + " stats"));
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end(),
            [](const ShardStatus& a, const ShardStatus& b) { return a.info.index < b.info.index; });
  return out;
}

// ---- client membership --------------------------------------------------------------------

StatusOr<int64_t> Registry::Join(const std::string& client, const ClientInfo& info,
                                 std::chrono::milliseconds lease) {
  RETURN_IF_ERROR(CheckName(client, "client name"));
  RETURN_IF_ERROR(CheckLease(lease));
  ASSIGN_OR_RETURN(Reply reply,
                   Eval("join", kJoinLua,
                        {Key("members"), Key("member:" + client), Key("lease:" + client),
                         Key("epoch"), Key("events")},
                        {prefix_, std::to_string(options_.events_max_len),
                         std::to_string(options_.past_members_max), client, info.host,
                         DumpJson(Json(info.data_domains)), std::to_string(lease.count()), info.instance}));
  const std::string tag = Tag(reply.get());
  if (tag == "ok") return AsInt(Elem(reply.get(), 1), "Join epoch");
  if (tag == "held") {
    auto str = [&](size_t i) {
      const redisReply* e = Elem(reply.get(), i);
      return IsString(e) ? Str(e) : std::string();
    };
    auto left = AsInt(Elem(reply.get(), 4), "Join lease left");
    return AlreadyExists("client name " + client + " is held by a live membership (epoch " + str(1) + ", host " +
                         (str(2).empty() ? "?" : str(2)) + ", process " + (str(3).empty() ? "?" : str(3)) +
                         "); its lease lapses in " + (left.ok() ? std::to_string(*left) : std::string("?")) +
                         " ms unless that process renews it");
  }
  return DataLoss("Join: unexpected reply");
}

Status Registry::Heartbeat(const std::string& client, int64_t epoch, const nlohmann::json& stats) {
  RETURN_IF_ERROR(CheckName(client, "client name"));
  RETURN_IF_ERROR(CheckEpoch(epoch));
  ASSIGN_OR_RETURN(Reply reply, Eval("heartbeat", kHeartbeatLua,
                                     {Key("member:" + client), Key("lease:" + client)},
                                     {std::to_string(epoch), DumpJson(stats)}));
  const std::string tag = Tag(reply.get());
  if (tag == "ok") return Status::Ok();
  if (tag == "fenced") {
    const redisReply* holder = Elem(reply.get(), 1);
    const std::string held = IsString(holder) ? Str(holder) : "";
    return Aborted(
        "client " + client + " epoch " + std::to_string(epoch) + ": lease expired or fenced" +
        (held.empty() ? std::string(" (no live lease)") : " (epoch " + held + " holds the name)") +
        ", rejoin");
  }
  return UnexpectedReply("Heartbeat");
}

Status Registry::Leave(const std::string& client, int64_t epoch) {
  RETURN_IF_ERROR(CheckName(client, "client name"));
  RETURN_IF_ERROR(CheckEpoch(epoch));
  ASSIGN_OR_RETURN(
      Reply reply,
      Eval("leave", kLeaveLua,
           {Key("members"), Key("member:" + client), Key("lease:" + client), Key("events")},
           {prefix_, std::to_string(options_.events_max_len),
            std::to_string(options_.past_members_max), client, std::to_string(epoch)}));
  const std::string tag = Tag(reply.get());
  if (tag == "ok" || tag == "gone") return Status::Ok();
  if (tag == "fenced") {
    const redisReply* holder = Elem(reply.get(), 1);
    return Aborted("client " + client + " epoch " + std::to_string(epoch) +
                   ": cannot leave, epoch " + (IsString(holder) ? Str(holder) : "?") +
                   " holds the name");
  }
  return UnexpectedReply("Leave");
}

StatusOr<std::vector<Member>> Registry::Members() {
  ASSIGN_OR_RETURN(Reply reply, Eval("members", kMembersLua, {Key("members"), Key("events")},
                                     {prefix_, std::to_string(options_.events_max_len),
                                      std::to_string(options_.past_members_max)}));
  const redisReply* r = reply.get();
  if (r->type != REDIS_REPLY_ARRAY) return UnexpectedReply("Members");
  std::vector<Member> out;
  for (size_t i = 0; i < r->elements; ++i) {
    const redisReply* e = r->element[i];
    ASSIGN_OR_RETURN(std::string name, AsString(Elem(e, 0), "Members name"));
    ASSIGN_OR_RETURN(Hash h, AsHash(Elem(e, 1), "member " + name));
    ASSIGN_OR_RETURN(int64_t pttl, AsInt(Elem(e, 2), "member " + name + " lease"));
    ASSIGN_OR_RETURN(Member m, ParseMember(name, h));
    m.lease_remaining_ms = std::max<int64_t>(pttl, 0);
    out.push_back(std::move(m));
  }
  std::sort(out.begin(), out.end(),
            [](const Member& a, const Member& b) { return a.name < b.name; });
  return out;
}

StatusOr<std::vector<Member>> Registry::PastMembers(int64_t limit) {
  if (limit <= 0) return std::vector<Member>{};
  ASSIGN_OR_RETURN(Reply reply,
                   Command({"LRANGE", Key("past_members"), "0", std::to_string(limit - 1)}));
  const redisReply* r = reply.get();
  if (r->type != REDIS_REPLY_ARRAY) return UnexpectedReply("PastMembers");
  std::vector<Member> out;
  for (size_t i = 0; i < r->elements; ++i) {
    ASSIGN_OR_RETURN(std::string text, AsString(r->element[i], "past member"));
    ASSIGN_OR_RETURN(Json record, ParseJson(text, "past member record"));
    if (!record.is_object()) return DataLoss("registry: past member record is not an object");
    Hash h;
    for (const auto& [k, v] : record.items()) {
      if (v.is_string()) h[k] = v.get<std::string>();
    }
    ASSIGN_OR_RETURN(Member m, ParseMember(Field(h, "name"), h));
    out.push_back(std::move(m));
  }
  return out;
}

// ---- updates ------------------------------------------------------------------------------

namespace registry_internal {
Status TrimmedRefusal(const std::string& what, const std::string& update_id,
                      const std::string& floor) {
  return OutOfRange(
      what + ": " + update_id +
      " is at or below its client's newest trimmed commit (epoch/counter " + floor +
      "): it was committed before the kept part of the commit log, or given up; it is never "
      "committed again");
}
}  // namespace registry_internal

// The {'ok'} / {'released'} / {'committed', seq} answers of the staging scripts.
static StatusOr<int64_t> StagingAnswer(const redisReply* r, const std::string& what) {
  const std::string tag = Tag(r);
  if (tag == "ok" || tag == "released") return int64_t{0};
  if (tag == "committed") return AsInt(Elem(r, 1), what + " seq");
  return UnexpectedReply(what);
}

StatusOr<int64_t> Registry::MarkStaged(const std::string& update_id, int shard_index, int64_t shard_epoch,
                                       const nlohmann::json& record) {
  RETURN_IF_ERROR(CheckName(update_id, "update id"));
  if (shard_index < 0) {
    return InvalidArgument("shard index must be >= 0, got " + std::to_string(shard_index));
  }
  if (shard_epoch < 0) return InvalidArgument("shard epoch must be >= 0, got " + std::to_string(shard_epoch));
  const std::string shard = Key("shard:" + std::to_string(shard_index));
  ASSIGN_OR_RETURN(Reply reply, Eval("mark_staged", kMarkStagedLua,
                                     {Key("staged:" + update_id), Key("update:" + update_id), shard + ":lease"},
                                     {std::to_string(shard_index), DumpJson(record),
                                      std::to_string(options_.staged_ttl.count()), std::to_string(shard_epoch)}));
  if (Tag(reply.get()) == "fenced") {
    const std::string held = Str(Elem(reply.get(), 1));
    return Aborted("stage mark of " + update_id + " by shard " + std::to_string(shard_index) + " epoch " +
                   std::to_string(shard_epoch) + " refused: " +
                   (held.empty() ? std::string("no live lease") : "epoch " + held + " holds the shard") +
                   " (fenced)");
  }
  return StagingAnswer(reply.get(), "MarkStaged");
}

StatusOr<int64_t> Registry::ReleaseStaged(const std::string& update_id, int shard_index) {
  RETURN_IF_ERROR(CheckName(update_id, "update id"));
  if (shard_index < 0) {
    return InvalidArgument("shard index must be >= 0, got " + std::to_string(shard_index));
  }
  ASSIGN_OR_RETURN(Reply reply, Eval("release_staged", kReleaseStagedLua,
                                     {Key("staged:" + update_id), Key("update:" + update_id)},
                                     {std::to_string(shard_index)}));
  return StagingAnswer(reply.get(), "ReleaseStaged");
}

StatusOr<std::vector<int>> Registry::StagedShards(const std::string& update_id) {
  RETURN_IF_ERROR(CheckName(update_id, "update id"));
  ASSIGN_OR_RETURN(Reply reply, Command({"HKEYS", Key("staged:" + update_id)}));
  const redisReply* r = reply.get();
  if (r->type != REDIS_REPLY_ARRAY) return UnexpectedReply("StagedShards");
  std::vector<int> out;
  for (size_t i = 0; i < r->elements; ++i) {
    ASSIGN_OR_RETURN(int64_t shard, AsInt(r->element[i], "staged shard of " + update_id));
    out.push_back(static_cast<int>(shard));
  }
  std::sort(out.begin(), out.end());
  return out;
}

StatusOr<int64_t> Registry::CommitUpdate(const std::string& update_id, const std::string& client,
                                         int64_t epoch, const nlohmann::json& meta, int num_shards,
                                         const std::optional<StalenessLimit>& staleness) {
  RETURN_IF_ERROR(CheckName(update_id, "update id"));
  RETURN_IF_ERROR(CheckName(client, "client name"));
  RETURN_IF_ERROR(CheckEpoch(epoch));
  if (num_shards <= 0) {
    return InvalidArgument("num_shards must be positive, got " + std::to_string(num_shards));
  }
  if (staleness && (staleness->base_version < 0 || staleness->max_staleness < 0)) {
    return InvalidArgument("staleness check needs base_version >= 0 and max_staleness >= 0");
  }
  ASSIGN_OR_RETURN(
      Reply reply,
      Eval("commit", kCommitLua,
           {Key("update:" + update_id), Key("lease:" + client), Key("staged:" + update_id),
            Key("seq"), Key("log"), Key("run"), Key("events"), Key("refusals")},
           {std::to_string(options_.events_max_len), update_id, client, std::to_string(epoch),
            DumpJson(meta), std::to_string(num_shards),
            staleness ? std::to_string(staleness->max_staleness) : "-1",
            staleness ? std::to_string(staleness->base_version) : "0", prefix_}));
  const redisReply* r = reply.get();
  const std::string tag = Tag(r);
  auto text = [&](size_t i) {
    const redisReply* e = Elem(r, i);
    return IsString(e) ? Str(e) : std::string("?");
  };
  const std::string what =
      "commit of " + update_id + " by " + client + " (epoch " + std::to_string(epoch) + ")";
  if (tag == "ok") return AsInt(Elem(r, 1), "CommitUpdate seq");
  if (tag == "dup") {
    ASSIGN_OR_RETURN(int64_t seq, AsInt(Elem(r, 1), "CommitUpdate seq"));
    const std::string by = text(2);
    if (by != client) {
      return AlreadyExists(what + ": update id already committed by client " + by + " as seq " +
                           std::to_string(seq));
    }
    return seq;  // a retry of a commit that went through
  }
  if (tag == "trimmed") return TrimmedRefusal(what, update_id, text(1));
  if (tag == "fenced") {
    const std::string held = text(1);
    return Aborted(
        what + " refused: lease expired or fenced" +
        (held.empty() ? std::string(" (no live lease)") : " (epoch " + held + " holds the name)") +
        ", rejoin");
  }
  if (tag == "num_shards") {
    return FailedPrecondition(what + " refused: " + std::to_string(num_shards) +
                              " shards given, the run has " + text(1));
  }
  if (tag == "stale") {
    return OutOfRange(what + " refused: staleness " + text(1) + " > max " +
                      std::to_string(staleness ? staleness->max_staleness : 0) +
                      ": pull and retrain");
  }
  if (tag == "future") {
    return InvalidArgument(what + ": base_version " +
                           std::to_string(staleness ? staleness->base_version : 0) +
                           " is ahead of the global seq " + text(1));
  }
  if (auto unstaged = StagingRefusal(r, what)) return *unstaged;
  return UnexpectedReply("CommitUpdate");
}

StatusOr<CommittedUpdate> Registry::LookupCommit(const std::string& update_id) {
  RETURN_IF_ERROR(CheckName(update_id, "update id"));
  ASSIGN_OR_RETURN(
      Reply reply,
      Eval("lookup_commit", kLookupCommitLua,
           {Key("update:" + update_id), Key("trim_floor"), Key("trimmed")}, {update_id}));
  const redisReply* r = reply.get();
  const std::string tag = Tag(r);
  if (tag == "none") return NotFound("update " + update_id + " is not committed");
  if (tag == "trimmed") {
    return TrimmedRefusal("lookup of " + update_id, update_id, Str(Elem(r, 1)))
        .WithContext("the commit log keeps seqs from " + Str(Elem(r, 2)) + " on");
  }
  if (tag != "found") return UnexpectedReply("LookupCommit");
  ASSIGN_OR_RETURN(Hash h, AsHash(Elem(r, 1), "LookupCommit"));
  return ParseCommit(update_id, h);
}

StatusOr<TrimResult> Registry::TrimLog(int64_t max_entries) {
  if (max_entries <= 0) return InvalidArgument("TrimLog: max_entries must be > 0");
  ASSIGN_OR_RETURN(Reply reply,
                   Eval("trim_log", kTrimLogLua,
                        {Key("shards"), Key("run"), Key("log"), Key("trimmed"), Key("trim_floor")},
                        {prefix_, std::to_string(max_entries)}));
  TrimResult out;
  ASSIGN_OR_RETURN(out.below, AsInt(Elem(reply.get(), 0), "TrimLog below"));
  ASSIGN_OR_RETURN(out.trimmed, AsInt(Elem(reply.get(), 1), "TrimLog count"));
  return out;
}

StatusOr<TrimmedLog> Registry::Trimmed() {
  ASSIGN_OR_RETURN(Reply reply, Command({"HGETALL", Key("trimmed")}));
  ASSIGN_OR_RETURN(Hash h, AsHash(reply.get(), "Trimmed"));
  TrimmedLog out;
  ASSIGN_OR_RETURN(out.below, IntField(h, "below", Key("trimmed"), 1));
  ASSIGN_OR_RETURN(out.entries, IntField(h, "entries", Key("trimmed")));
  ASSIGN_OR_RETURN(out.tokens, IntField(h, "tokens", Key("trimmed")));
  return out;
}

StatusOr<std::vector<CommittedUpdate>> Registry::CommittedAfter(int64_t seq, int64_t limit) {
  if (seq < 0 || limit <= 0) {
    return InvalidArgument("CommittedAfter: need seq >= 0 and limit > 0, got " +
                           std::to_string(seq) + ", " + std::to_string(limit));
  }
  ASSIGN_OR_RETURN(Reply reply,
                   Eval("committed_after", kCommittedAfterLua, {Key("log"), Key("trimmed")},
                        {prefix_, std::to_string(seq), std::to_string(limit)}));
  const redisReply* r = reply.get();
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 1) return UnexpectedReply("CommittedAfter");
  std::vector<CommittedUpdate> out;
  ASSIGN_OR_RETURN(int64_t below, AsInt(Elem(r, 0), "CommittedAfter below"));
  int64_t expected = std::max(seq + 1, below);  // the entries below `below` were trimmed
  for (size_t i = 1; i < r->elements; ++i) {
    ASSIGN_OR_RETURN(std::string id, AsString(Elem(r->element[i], 0), "CommittedAfter id"));
    ASSIGN_OR_RETURN(Hash h, AsHash(Elem(r->element[i], 1), "update " + id));
    if (h.empty())
      return DataLoss("registry: " + Key("log") + " lists " + id + " without a record");
    ASSIGN_OR_RETURN(CommittedUpdate u, ParseCommit(id, h));
    // Shards apply strictly in order; a hole would make them skip an update.
    if (u.seq != expected) {
      return DataLoss("registry: committed log has seq " + std::to_string(u.seq) + " (" + id +
                      ") where " + std::to_string(expected) + " was expected");
    }
    ++expected;
    out.push_back(std::move(u));
  }
  return out;
}

StatusOr<LogRead> Registry::ReadLog(int64_t seq, int64_t limit) {
  if (seq < 0 || limit < 0) {
    return InvalidArgument("ReadLog: need seq >= 0 and limit >= 0, got " + std::to_string(seq) +
                           ", " + std::to_string(limit));
  }
  ASSIGN_OR_RETURN(Reply reply, Eval("read_log", kReadLogLua, {Key("log"), Key("seq")},
                                     {prefix_, std::to_string(seq), std::to_string(limit)}));
  const redisReply* r = reply.get();
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 1) return UnexpectedReply("ReadLog");
  LogRead out;
  ASSIGN_OR_RETURN(out.head, AsInt(Elem(r, 0), "ReadLog head"));
  int64_t expected = seq + 1;
  for (size_t i = 1; i < r->elements; ++i) {
    const redisReply* e = r->element[i];
    ASSIGN_OR_RETURN(std::string id, AsString(Elem(e, 0), "ReadLog id"));
    ASSIGN_OR_RETURN(int64_t score, AsInt(Elem(e, 1), "ReadLog score of " + id));
    ASSIGN_OR_RETURN(Hash h, AsHash(Elem(e, 2), "update " + id));
    if (h.empty())
      return DataLoss("registry: " + Key("log") + " lists " + id + " without a record");
    ASSIGN_OR_RETURN(CommittedUpdate u, ParseCommit(id, h));
    if (u.seq != score) {
      return DataLoss("registry: " + Key("log") + " scores " + id + " " + std::to_string(score) +
                      " but its record has seq " + std::to_string(u.seq));
    }
    if (u.seq == seq && seq > 0 && i == 1) {
      out.at = std::move(u);
      continue;
    }
    if (static_cast<int64_t>(out.after.size()) == limit) break;
    if (u.seq != expected) {
      return DataLoss("registry: committed log has seq " + std::to_string(u.seq) + " (" + id +
                      ") where " + std::to_string(expected) + " was expected");
    }
    ++expected;
    out.after.push_back(std::move(u));
  }
  return out;
}

StatusOr<int64_t> Registry::GlobalSeq() {
  ASSIGN_OR_RETURN(Reply reply, Command({"GET", Key("seq")}));
  if (reply.get()->type == REDIS_REPLY_NIL) return int64_t{0};
  return AsInt(reply.get(), "GlobalSeq");
}

Status Registry::RecordRefusal(const Refusal& refusal) {
  RETURN_IF_ERROR(CheckName(refusal.reason, "refusal reason"));
  ASSIGN_OR_RETURN(Reply reply,
                   Eval("refusal", kRefusalLua, {Key("refusals"), Key("events")},
                        {std::to_string(options_.events_max_len), refusal.reason, refusal.update_id,
                         refusal.client, std::to_string(refusal.shard), refusal.detail}));
  return AsString(reply.get(), "RecordRefusal").status();
}

StatusOr<std::map<std::string, int64_t>> Registry::RefusalCounts() {
  ASSIGN_OR_RETURN(Reply reply, Command({"HGETALL", Key("refusals")}));
  ASSIGN_OR_RETURN(Hash h, AsHash(reply.get(), "RefusalCounts"));
  std::map<std::string, int64_t> out;
  for (const auto& [reason, count] : h) {
    ASSIGN_OR_RETURN(out[reason], ParseInt(count, "refusal count " + reason));
  }
  return out;
}

// ---- events -------------------------------------------------------------------------------

StatusOr<std::string> Registry::AddEvent(const std::string& type, const nlohmann::json& data) {
  RETURN_IF_ERROR(CheckName(type, "event type"));
  ASSIGN_OR_RETURN(Reply reply, Command({"XADD", Key("events"), "MAXLEN", "~",
                                         std::to_string(options_.events_max_len), "*", "type", type,
                                         "data", DumpJson(data)}));
  return AsString(reply.get(), "XADD");
}

StatusOr<std::vector<Event>> Registry::Events(const std::string& after_id, int64_t count) {
  if (count <= 0) return std::vector<Event>{};
  std::string start = "-";
  if (!after_id.empty() && after_id != "0") {
    if (!ValidStreamId(after_id)) {
      return InvalidArgument("event id \"" + after_id + "\" is not <ms>-<n>");
    }
    start = "(" + after_id;
  }
  ASSIGN_OR_RETURN(Reply reply,
                   Command({"XRANGE", Key("events"), start, "+", "COUNT", std::to_string(count)}));
  return ParseEvents(reply.get());
}

StatusOr<std::vector<Event>> Registry::RecentEvents(int64_t count) {
  if (count <= 0) return std::vector<Event>{};
  ASSIGN_OR_RETURN(Reply reply,
                   Command({"XREVRANGE", Key("events"), "+", "-", "COUNT", std::to_string(count)}));
  ASSIGN_OR_RETURN(std::vector<Event> events, ParseEvents(reply.get()));
  std::reverse(events.begin(), events.end());
  return events;
}

}  // namespace fedps
