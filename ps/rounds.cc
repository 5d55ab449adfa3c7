// Synchronous rounds: the Registry's round scripts and the parsing of a closed round's
// commit-log entry (see ps/rounds.h for the design, docs/registry.md for the keys). Every
// change to a round is one Lua script, so a round's close and the set it applies are
// decided atomically by Redis; scripts take time from the Redis server (TIME).
#include "ps/rounds.h"

#include <algorithm>
#include <string>

#include "ps/registry.h"
#include "ps/registry_internal.h"

namespace fedps {

using namespace registry_internal;

namespace {

using Json = nlohmann::json;

// ---- Lua ------------------------------------------------------------------------------
// Round helpers, prepended to every round script (after the registry's prelude). P is the
// run's key prefix.
constexpr const char* kRoundLua = R"lua(
-- Opens the round of base version `base`. It awaits `clients` updates ("count"), or
-- (clients = 0) the members whose lease is live now ("members"). No deadline until its
-- first commit (deadline_ms 0).
local function open_round(P, base, now, clients, events, maxlen)
  redis.call('DEL', P .. 'round', P .. 'round:expected', P .. 'round:clients', P .. 'round:updates')
  local mode, expected = 'count', tonumber(clients)
  if expected == 0 then
    mode = 'members'
    for _, name in ipairs(redis.call('SMEMBERS', P .. 'members')) do
      if redis.call('EXISTS', P .. 'lease:' .. name) == 1 then
        redis.call('SADD', P .. 'round:expected', name)
      end
    end
    expected = redis.call('SCARD', P .. 'round:expected')
  end
  redis.call('HSET', P .. 'round', 'base_version', num(base), 'opened_ms', num(now),
             'deadline_ms', '0', 'expected', num(expected), 'committed', '0', 'mode', mode)
  emit(events, maxlen, 'round_opened', {round = base, expected = expected, mode = mode})
end
-- Awaited members that have not committed and still hold their lease (sorted).
local function round_waiting(P)
  local out = {}
  for _, name in ipairs(redis.call('SMEMBERS', P .. 'round:expected')) do
    if redis.call('SISMEMBER', P .. 'round:clients', name) == 0 and
       redis.call('EXISTS', P .. 'lease:' .. name) == 1 then
      out[#out + 1] = name
    end
  end
  table.sort(out)
  return out
end
local function round_complete(P)
  local r = redis.call('HMGET', P .. 'round', 'committed', 'expected', 'mode')
  if tonumber(r[1]) == 0 then return false end
  if r[3] == 'count' then return tonumber(r[1]) >= tonumber(r[2]) end
  return #round_waiting(P) == 0
end
-- Closes the open round (it has updates: callers check round_due): its entry in the
-- commit log at seq base + 1, and the next round opens. Returns the seq, or -1 - seq when
-- the log is not at the round's base version (async commits in a sync run; never else).
local function close_round(P, reason, now, clients, events, maxlen)
  local base = tonumber(redis.call('HGET', P .. 'round', 'base_version'))
  local ids = redis.call('HKEYS', P .. 'round:updates')
  local cur = tonumber(redis.call('GET', P .. 'seq') or '0')
  if cur ~= base then return -1 - cur end
  table.sort(ids)
  local updates, tokens = {}, 0
  for _, id in ipairs(ids) do
    local u = cjson.decode(redis.call('HGET', P .. 'round:updates', id))
    u.update_id = id
    updates[#updates + 1] = u
    tokens = tokens + (tonumber(cjson.decode(u.record).tokens) or 0)
  end
  local missing = {}
  for _, name in ipairs(redis.call('SMEMBERS', P .. 'round:expected')) do
    if redis.call('SISMEMBER', P .. 'round:clients', name) == 0 then missing[#missing + 1] = name end
  end
  table.sort(missing)
  local expected = tonumber(redis.call('HGET', P .. 'round', 'expected'))
  local seq = redis.call('INCR', P .. 'seq')
  local entry = 'round/' .. num(base)
  redis.call('HSET', P .. 'update:' .. entry, 'seq', seq, 'client', 'round', 'epoch', '0',
             'num_shards', redis.call('HGET', P .. 'run', 'num_shards') or '0',
             'meta', cjson.encode({round = base, base_version = base, tokens = tokens,
                                   updates = updates, expected = expected,
                                   closed_by = reason, missing = missing}),
             'stage_record', 'null', 'committed_ms', num(now), 'chain', chain_for(P, seq, entry))
  redis.call('ZADD', P .. 'log', seq, entry)
  emit(events, maxlen, 'round_closed', {round = base, seq = seq, updates = #ids,
       expected = expected, closed_by = reason, missing = table.concat(missing, ',')})
  open_round(P, seq, now, clients, events, maxlen)
  return seq
end
-- Makes sure a round is open (at the log head when none is) and closes it when it is due:
-- past its deadline, or complete. Returns close_round's answer, or 0 when nothing closed.
local function due_round(P, now, clients, events, maxlen)
  if redis.call('EXISTS', P .. 'round') == 0 then
    open_round(P, tonumber(redis.call('GET', P .. 'seq') or '0'), now, clients, events, maxlen)
    return 0
  end
  local deadline = tonumber(redis.call('HGET', P .. 'round', 'deadline_ms'))
  if deadline > 0 and now >= deadline then
    return close_round(P, 'timeout', now, clients, events, maxlen)
  end
  if round_complete(P) then return close_round(P, 'complete', now, clients, events, maxlen) end
  return 0
end
)lua";

// KEYS: update:<id>, lease:<client>, staged:<id>, run, events, refusals.
// ARGV: maxlen, update_id, client, epoch, meta, num_shards, base_version, prefix, clients,
//       timeout_ms
// -> {'ok', seq, closed 0|1} | {'dup', seq, client} | {'fenced', lease epoch or ''}
//    | {'num_shards', run's} | {'closed', open round} | {'future', open round}
//    | {'repeat', round} | {'missing', ...} | {'mismatch', ...} | {'base_mismatch', staged}
//    | {'diverged', seq}
constexpr const char* kCommitToRoundLua = R"lua(
local P = ARGV[8]
local function refuse(reason, extra)
  refuse_commit(KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], reason, extra)
end
local early = commit_checks(KEYS[1], KEYS[2], KEYS[4], KEYS[5])
if early then return early end
local n = tonumber(ARGV[6])
local now = now_ms()
local closed = due_round(P, now, ARGV[9], KEYS[5], ARGV[1])
if closed < 0 then return {'diverged', num(-1 - closed)} end
local base = tonumber(redis.call('HGET', P .. 'round', 'base_version'))
local mine = tonumber(ARGV[7])
if mine < base then
  redis.call('HINCRBY', KEYS[6], 'round_closed', 1)
  refuse('round_closed', {round = mine, open_round = base})
  return {'closed', num(base)}
end
if mine > base then return {'future', num(base)} end
local head = tonumber(redis.call('GET', P .. 'seq') or '0')
if head ~= base then return {'diverged', num(head)} end
if redis.call('SISMEMBER', P .. 'round:clients', ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[6], 'round_repeat', 1)
  refuse('round_repeat', {round = base})
  return {'repeat', num(base)}
end
local first, why = staged_record(KEYS[3], n)
if not first then
  refuse_unstaged(KEYS[5], ARGV[1], ARGV[2], ARGV[3], ARGV[4], why)
  return why
end
local staged_base = tonumber(cjson.decode(first).base_version)
if staged_base ~= mine then
  refuse('stage_mismatch', {staged_base_version = staged_base})
  return {'base_mismatch', num(staged_base or -1)}
end
local seq = base + 1
redis.call('HSET', KEYS[1], 'seq', num(seq), 'client', ARGV[3], 'epoch', ARGV[4],
           'num_shards', ARGV[6], 'meta', ARGV[5], 'stage_record', first,
           'committed_ms', num(now), 'round', num(base))
redis.call('HSET', P .. 'round:updates', ARGV[2],
           cjson.encode({client = ARGV[3], epoch = tonumber(ARGV[4]), record = first}))
redis.call('SADD', P .. 'round:clients', ARGV[3])
if redis.call('HINCRBY', P .. 'round', 'committed', 1) == 1 then
  -- the first update: the others have timeout_ms from now
  redis.call('HSET', P .. 'round', 'deadline_ms', num(now + tonumber(ARGV[10])))
end
redis.call('DEL', KEYS[3])
emit(KEYS[5], ARGV[1], 'round_commit', {round = base, seq = seq, update_id = ARGV[2],
     client = ARGV[3], epoch = tonumber(ARGV[4])})
local closes = 0
if round_complete(P) then
  close_round(P, 'complete', now, ARGV[9], KEYS[5], ARGV[1])
  closes = 1
end
return {'ok', num(seq), closes}
)lua";

// KEYS: round, events. ARGV: prefix, maxlen, clients
// -> {'none'} | {'ok', seq or 0} | {'diverged', seq}
constexpr const char* kCloseRoundLua = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then return {'none'} end
local s = due_round(ARGV[1], now_ms(), ARGV[3], KEYS[2], ARGV[2])
if s < 0 then return {'diverged', num(-1 - s)} end
return {'ok', num(s)}
)lua";

// KEYS: round. ARGV: prefix
// -> {'none'} | {'ok', HGETALL round, SMEMBERS round:clients, waiting members, now_ms}
constexpr const char* kCurrentRoundLua = R"lua(
if redis.call('EXISTS', KEYS[1]) == 0 then return {'none'} end
return {'ok', redis.call('HGETALL', KEYS[1]), redis.call('SMEMBERS', ARGV[1] .. 'round:clients'),
        round_waiting(ARGV[1]), num(now_ms())}
)lua";

// The round scripts as loaded: the round helpers, then the script (the registry prepends its
// own prelude to both).
const std::string kCommitToRoundScript = std::string(kRoundLua) + kCommitToRoundLua;
const std::string kCloseRoundScript = std::string(kRoundLua) + kCloseRoundLua;
const std::string kCurrentRoundScript = std::string(kRoundLua) + kCurrentRoundLua;

Status CheckRounds(const RoundOptions& rounds) {
  if (rounds.clients < 0 || rounds.timeout.count() <= 0) {
    return InvalidArgument("rounds: need clients >= 0 and a positive timeout, got " +
                           std::to_string(rounds.clients) + ", " +
                           std::to_string(rounds.timeout.count()) + " ms");
  }
  return Status::Ok();
}

Status Diverged(const redisReply* r, const std::string& what) {
  const redisReply* e = Elem(r, 1);
  return DataLoss(
      "registry: " + what + ": the commit log is at seq " + (IsString(e) ? Str(e) : "?") +
      ", not at the open round's base version: asynchronous commits in a ps.mode = sync run");
}

// A JSON array of strings, or an empty object (cjson writes an empty Lua table as {}).
StatusOr<std::vector<std::string>> Names(const Json& j, const std::string& what) {
  std::vector<std::string> out;
  if (j.is_object() && j.empty()) return out;
  if (!j.is_array()) return DataLoss(what + " is not a list");
  for (const Json& n : j) {
    if (!n.is_string()) return DataLoss(what + " holds a non-string");
    out.push_back(n.get<std::string>());
  }
  return out;
}

StatusOr<std::vector<std::string>> StringList(const redisReply* r, const std::string& what) {
  if (r == nullptr || r->type != REDIS_REPLY_ARRAY) return UnexpectedReply(what);
  std::vector<std::string> out;
  for (size_t i = 0; i < r->elements; ++i) {
    ASSIGN_OR_RETURN(std::string s, AsString(r->element[i], what));
    out.push_back(std::move(s));
  }
  std::sort(out.begin(), out.end());
  return out;
}

constexpr const char kRoundEntryPrefix[] = "round/";

}  // namespace

// ---- Registry: rounds -------------------------------------------------------------------

StatusOr<int64_t> Registry::CommitToRound(const std::string& update_id, const std::string& client,
                                          int64_t epoch, const nlohmann::json& meta, int num_shards,
                                          int64_t base_version, const RoundOptions& rounds) {
  RETURN_IF_ERROR(CheckName(update_id, "update id"));
  RETURN_IF_ERROR(CheckName(client, "client name"));
  RETURN_IF_ERROR(CheckEpoch(epoch));
  RETURN_IF_ERROR(CheckRounds(rounds));
  if (update_id.rfind(kRoundEntryPrefix, 0) == 0) {
    return InvalidArgument("update id " + update_id +
                           " is reserved for round entries of the commit log");
  }
  if (num_shards <= 0)
    return InvalidArgument("num_shards must be positive, got " + std::to_string(num_shards));
  if (base_version < 0)
    return InvalidArgument("base_version must be >= 0, got " + std::to_string(base_version));
  ASSIGN_OR_RETURN(
      Reply reply,
      Eval("commit_to_round", kCommitToRoundScript.c_str(),
           {Key("update:" + update_id), Key("lease:" + client), Key("staged:" + update_id),
            Key("run"), Key("events"), Key("refusals")},
           {std::to_string(options_.events_max_len), update_id, client, std::to_string(epoch),
            DumpJson(meta), std::to_string(num_shards), std::to_string(base_version), prefix_,
            std::to_string(rounds.clients), std::to_string(rounds.timeout.count())}));
  const redisReply* r = reply.get();
  const std::string tag = Tag(r);
  auto text = [&](size_t i) {
    const redisReply* e = Elem(r, i);
    return IsString(e) ? Str(e) : std::string("?");
  };
  const std::string what =
      "round commit of " + update_id + " by " + client + " (epoch " + std::to_string(epoch) + ")";
  const std::string round = std::to_string(base_version);
  if (tag == "ok") return AsInt(Elem(r, 1), "CommitToRound seq");
  if (tag == "dup") {
    ASSIGN_OR_RETURN(int64_t seq, AsInt(Elem(r, 1), "CommitToRound seq"));
    if (text(2) != client) {
      return AlreadyExists(what + ": update id already committed by client " + text(2) +
                           " as seq " + std::to_string(seq));
    }
    return seq;  // a retry of a commit that went through
  }
  if (tag == "trimmed") return TrimmedRefusal(what, update_id, text(1));
  if (tag == "fenced") {
    return Aborted(what + " refused: lease expired or fenced" +
                   (text(1).empty() ? std::string(" (no live lease)")
                                    : " (epoch " + text(1) + " holds the name)") +
                   ", rejoin");
  }
  if (tag == "num_shards") {
    return FailedPrecondition(what + " refused: " + std::to_string(num_shards) +
                              " shards given, the run has " + text(1));
  }
  if (tag == "closed") {
    return OutOfRange(what + " refused: round " + round + " closed without it (round " + text(1) +
                      " is open): pull version " + text(1) + " and train the next round");
  }
  if (tag == "future") {
    return InvalidArgument(what + ": base_version " + round + " is ahead of the open round " +
                           text(1));
  }
  if (tag == "repeat") {
    return OutOfRange(what + " refused: client " + client + " already has an update in round " +
                      text(1));
  }
  if (tag == "base_mismatch") {
    return FailedPrecondition(what + " refused: the shards staged it with base_version " + text(1) +
                              ", the commit says " + round);
  }
  if (tag == "diverged") return Diverged(r, what);
  if (auto unstaged = StagingRefusal(r, what)) return *unstaged;
  return UnexpectedReply("CommitToRound");
}

StatusOr<int64_t> Registry::CloseRoundIfDue(const RoundOptions& rounds) {
  RETURN_IF_ERROR(CheckRounds(rounds));
  ASSIGN_OR_RETURN(
      Reply reply,
      Eval("close_round", kCloseRoundScript.c_str(), {Key("round"), Key("events")},
           {prefix_, std::to_string(options_.events_max_len), std::to_string(rounds.clients)}));
  const std::string tag = Tag(reply.get());
  if (tag == "none") return int64_t{0};
  if (tag == "ok") return AsInt(Elem(reply.get(), 1), "CloseRoundIfDue seq");
  if (tag == "diverged") return Diverged(reply.get(), "closing a round");
  return UnexpectedReply("CloseRoundIfDue");
}

StatusOr<RoundState> Registry::CurrentRound() {
  ASSIGN_OR_RETURN(Reply reply,
                   Eval("current_round", kCurrentRoundScript.c_str(), {Key("round")}, {prefix_}));
  const redisReply* r = reply.get();
  const std::string tag = Tag(r);
  if (tag == "none") return NotFound("no synchronous round is open in run " + options_.run_id);
  if (tag != "ok") return UnexpectedReply("CurrentRound");
  const std::string where = Key("round");
  ASSIGN_OR_RETURN(Hash h, AsHash(Elem(r, 1), where));
  RoundState s;
  ASSIGN_OR_RETURN(s.base_version, IntField(h, "base_version", where));
  ASSIGN_OR_RETURN(s.opened_ms, IntField(h, "opened_ms", where));
  ASSIGN_OR_RETURN(s.deadline_ms, IntField(h, "deadline_ms", where));
  ASSIGN_OR_RETURN(s.expected, IntField(h, "expected", where));
  ASSIGN_OR_RETURN(s.committed, IntField(h, "committed", where));
  s.counted = Field(h, "mode") == "count";
  ASSIGN_OR_RETURN(s.committed_clients, StringList(Elem(r, 2), where + ":clients"));
  ASSIGN_OR_RETURN(s.waiting_for, StringList(Elem(r, 3), where + " waiting members"));
  ASSIGN_OR_RETURN(s.now_ms, AsInt(Elem(r, 4), "CurrentRound time"));
  return s;
}

// ---- closed rounds ----------------------------------------------------------------------

RoundOptions RoundOptionsFromConfig(const PsOptions& ps) {
  RoundOptions o;
  o.clients = ps.round_clients;
  o.timeout = std::chrono::milliseconds(ps.round_timeout_ms);
  return o;
}

bool IsRoundEntry(const CommittedUpdate& entry) {
  return entry.update_id.rfind(kRoundEntryPrefix, 0) == 0;
}

StatusOr<ClosedRound> ParseClosedRound(const CommittedUpdate& entry) {
  const std::string where =
      "registry: round entry " + entry.update_id + " (seq " + std::to_string(entry.seq) + ")";
  const Json& m = entry.meta;
  if (!IsRoundEntry(entry) || !m.is_object()) return DataLoss(where + " has no round record");
  ClosedRound round;
  if (!m.contains("round") || !m["round"].is_number_integer())
    return DataLoss(where + " has no integer round");
  round.round = m["round"].get<int64_t>();
  if (round.round + 1 != entry.seq) {
    return DataLoss(where + ": round " + std::to_string(round.round) +
                    " must close into seq round + 1");
  }
  round.closed_by = m.value("closed_by", std::string());
  ASSIGN_OR_RETURN(round.missing, Names(m.value("missing", Json::array()), where + " missing"));
  if (!m.contains("updates") || !m["updates"].is_array() || m["updates"].empty()) {
    return DataLoss(where + " lists no updates");
  }
  for (const Json& u : m["updates"]) {
    if (!u.is_object() || !u.contains("update_id") || !u["update_id"].is_string() ||
        !u.contains("record") || !u["record"].is_string()) {
      return DataLoss(where + " has an update without update_id and record");
    }
    RoundUpdate ru;
    ru.update_id = u["update_id"].get<std::string>();
    ru.client = u.value("client", std::string());
    ASSIGN_OR_RETURN(
        Json rec, ParseJson(u["record"].get<std::string>(), where + " record of " + ru.update_id));
    for (auto [key, field] : {std::pair{"base_version", &ru.base_version},
                              {"tokens", &ru.tokens},
                              {"local_steps", &ru.local_steps}}) {
      if (!rec.is_object() || !rec.contains(key) || !rec[key].is_number_integer()) {
        return DataLoss(where + ": the record of " + ru.update_id + " has no integer " + key);
      }
      *field = rec[key].get<int64_t>();
    }
    if (ru.base_version != round.round) {
      return DataLoss(where + ": update " + ru.update_id + " was trained from version " +
                      std::to_string(ru.base_version) + ", not the round's");
    }
    round.updates.push_back(std::move(ru));
  }
  return round;
}

StatusOr<std::vector<double>> RoundWeights(const ClosedRound& round) {
  if (round.updates.empty())
    return DataLoss("round " + std::to_string(round.round) + " has no updates");
  double total = 0;
  for (const RoundUpdate& u : round.updates) {
    if (u.tokens <= 0) {
      return DataLoss("round " + std::to_string(round.round) + ": update " + u.update_id + " has " +
                      std::to_string(u.tokens) + " tokens");
    }
    total += static_cast<double>(u.tokens);
  }
  std::vector<double> w;
  w.reserve(round.updates.size());
  for (const RoundUpdate& u : round.updates) w.push_back(static_cast<double>(u.tokens) / total);
  return w;
}

}  // namespace fedps
