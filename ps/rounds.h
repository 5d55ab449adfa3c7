// Synchronous rounds (ps.mode = "sync"): Photon's FedAvg / DiLoCo as a mode of the
// system, beside the asynchronous default. docs/registry.md ("Rounds") has the keys,
// docs/protocol.md ("Synchronous rounds") the client's and the shards' side.
//
// A round is named by its base version v: every update of round v was trained from
// version v, and closing the round makes version v + 1. The registry keeps the open round
// (P = "fedps:{<run_id>}:"):
//   P round            hash   base_version, opened_ms, deadline_ms (0 until its first
//                             commit), expected, committed, mode ("members" | "count")
//   P round:expected   set    "members" mode: the members whose lease was live at open
//   P round:clients    set    clients that committed an update to the round
//   P round:updates    hash   update id -> {client, epoch, record (the stage record)}
// and, once the round closed, its entry in the commit log: P update:round/<v> (seq v + 1,
// client "round", meta {round, base_version, tokens, updates [...], expected, closed_by,
// missing}), ZADD P log v + 1 round/<v>. In sync mode the log holds only rounds, so the
// global version counts closed rounds.
//
// Membership of a round (RoundOptions::clients): > 0, the round waits for that many
// updates (from distinct clients); 0, for the members whose lease was live when the round
// opened (a member whose lease has lapsed since is no longer waited for; a client that
// joined after the open may still contribute). A round opens when the previous one closes,
// or with the first commit of the run.
//
// Closing, always inside one Lua script, so every shard applies the same set:
//   complete  the commit that brings the last awaited update closes the round (or, in
//             "members" mode, the lapse of the last awaited member's lease);
//   timeout   a round whose first update was committed `timeout` ago closes with what
//             was committed: the timeout bounds how long committed clients wait for the
//             rest. Registry::CloseRoundIfDue (called by every shard's apply thread when
//             idle, and by every CommitToRound before it looks at its update) closes it.
// A round with no update never closes. An update for a closed round is refused
// ("round_closed", counted in P refusals): its client drops it and trains the open round
// from the new version.
//
// Exactly once: a committed update's P update:<id> is written at commit, with seq = v + 1
// (the version that will include it), so a retry, a restarted client and a shard's
// LookupCommit see it committed; it is applied when the shards reach the round's entry.
#pragma once

#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "common/config.h"
#include "common/status.h"

namespace fedps {

struct CommittedUpdate;

// How rounds are formed (ps.round_clients, ps.round_timeout_ms).
struct RoundOptions {
  // Updates a round waits for; 0: the members live when the round opens. Default 0.
  int64_t clients = 0;
  // A round still open this long after its first commit closes with what was committed.
  // Default 10 min.
  std::chrono::milliseconds timeout{600000};
};

// ps.round_clients and ps.round_timeout_ms.
RoundOptions RoundOptionsFromConfig(const PsOptions& ps);

// The open round, as CurrentRound() reads it.
struct RoundState {
  int64_t base_version = 0;  // the round's clients train from this version
  int64_t opened_ms = 0;     // Redis server time
  int64_t deadline_ms = 0;   // 0: no update yet (no deadline)
  int64_t now_ms = 0;        // Redis server time of the read
  int64_t expected = 0;      // updates awaited (count mode) or members at open
  int64_t committed = 0;     // updates committed to the round so far
  bool counted = false;      // true: waits for `expected` updates; false: for members
  std::vector<std::string> committed_clients;  // sorted
  std::vector<std::string> waiting_for;  // members mode: awaited, live, not committed (sorted)
};

// One update of a closed round, as its log entry lists it.
struct RoundUpdate {
  std::string update_id;
  std::string client;
  int64_t base_version = 0;
  int64_t tokens = 0;
  int64_t local_steps = 0;
};

// A closed round's entry in the commit log.
struct ClosedRound {
  int64_t round = 0;                 // = base_version
  std::vector<RoundUpdate> updates;  // sorted by update id
  std::string closed_by;             // "complete" or "timeout"
  std::vector<std::string> missing;  // awaited members that did not commit
};

// Whether a commit-log entry is a closed round (its update id is "round/<v>").
bool IsRoundEntry(const CommittedUpdate& entry);
// The round of such an entry; kDataLoss when its record is malformed.
StatusOr<ClosedRound> ParseClosedRound(const CommittedUpdate& entry);

// The FedAvg weights of a round's updates: tokens_i / sum(tokens). kDataLoss for a round
// without updates or with an update of tokens <= 0.
StatusOr<std::vector<double>> RoundWeights(const ClosedRound& round);

}  // namespace fedps
