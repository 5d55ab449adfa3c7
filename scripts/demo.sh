#!/usr/bin/env bash
# The federated demo (`make demo`; docs/demo.md). On localhost, from text built out of
# Debian packages: corpus -> tokenizer -> one prepared folder per training domain ->
# a private redis-server, 2 fedps-shard, one fedps-client per training domain (one
# throttled, one killed with kill -9 part-way and restarted) and an evaluator -> stop at an
# update budget -> the centralised baseline (`fedps-ctl train`) on the pooled training
# domains with the same number of tokens -> final evaluation of both models on every domain
# (the held-out one included) -> samples -> `fedps-ctl report` writes report.html.
#
#   scripts/demo.sh [--config configs/demo.toml] [--runs runs/demo] [--data data/<config name>]
#                   [--cache cache/corpus] [--bin build/bin]
#
# Everything of one run lands in RUNS/<timestamp>/ (RUNS/latest points at it); all started
# processes are stopped on exit, however the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=configs/demo.toml
RUNS=runs/demo
DATA=""
CACHE=cache/corpus
BIN=${BIN:-build/bin}
while (($#)); do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
STEM=$(basename "$CONFIG" .toml)
DATA=${DATA:-data/$STEM}
T_START=$(date +%s.%N)

die() { echo "demo: error: $*" >&2; exit 1; }
[[ -f "$CONFIG" ]] || die "no config $CONFIG"
for b in fedps-ctl fedps-shard fedps-client; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b is not built (make build, or BIN=<build>/bin)"
done
for t in redis-server redis-cli python3; do
  command -v "$t" >/dev/null || die "$t is not installed (scripts/setup.sh installs it)"
done
command -v gnuplot >/dev/null || [[ -n "${FEDPS_GNUPLOT:-}" ]] || \
  die "gnuplot is not installed; the report needs it (apt-get install gnuplot-nox, or scripts/setup.sh)"

# The demo's own settings: `#@demo key = value` lines of the config; DEMO_<KEY> overrides.
source scripts/lib/settings.sh
setting() { config_setting demo "$@"; }
SOURCES=$(setting corpus_sources "")
MAX_MB=$(setting max_mb_per_domain 4)
HELD_OUT_OPT=$(setting held_out spanish)
VOCAB=$(setting vocab_size 4096)
TOK_BYTES=$(setting tokenizer_bytes 5000000)
BUDGET=$(setting update_budget 100)
MAX_FED_S=$(setting max_federated_s 300)
THROTTLE=$(setting throttle 4)
KILL_AT=$(setting kill_at 30)
DOWN_S=$(setting down_s 15)
FINAL_BATCHES=$(setting final_eval_batches 16)
SAMPLE_TOKENS=$(setting sample_tokens 60)
# Samples for the report are drawn (generate is greedy by default, which loops on a small model).
SAMPLING=(--temperature 0.8 --top-k 40)
POLL_S=$(setting poll_s 5)

STAMP=$(date +%Y%m%d-%H%M%S)
RUN=$RUNS/$STAMP
mkdir -p "$RUN"/{logs,status}
ln -sfn "$STAMP" "$RUNS/latest"
RUN_ABS=$(cd "$RUN" && pwd)
EVENTS=$RUN/demo-events.jsonl
: > "$EVENTS"

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.0f}')" "$1" "$(now)"; }
event() {  # event NAME [key value]...: one record in demo-events.jsonl (the report reads it)
  python3 - "$EVENTS" "$(now)" "$@" <<'EOF'
import json, sys
path, t, name, rest = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
rec = {"event": name, "time": t, "source": "demo"}
rec.update(dict(zip(rest[0::2], rest[1::2])))
open(path, "a").write(json.dumps(rec) + "\n")
EOF
}
phase() { echo; echo "== [$(since "$T_START") s] $*"; }
jget() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(eval(sys.argv[2], {}, {'d': d}))" "$@"; }

# ---- processes and clean-up -----------------------------------------------------------
PIDS=()
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if ((${#PIDS[@]})); then
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for _ in $(seq 50); do
      local alive=0
      for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      ((alive)) || break
      sleep 0.2
    done
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  fi
  if ((rc != 0)); then
    echo "demo: failed (exit $rc); logs in $RUN/logs/" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_bg() {  # start_bg LOG CMD...: runs CMD in the background, its PID in $BG_PID
  local log=$1; shift
  "$@" > "$log" 2>&1 &
  BG_PID=$!
  PIDS+=("$BG_PID")
}
wait_gone() {  # wait_gone PID [seconds]: wait for it to exit, SIGKILL after the time
  local p=$1 t=${2:-30}
  for _ in $(seq $((t * 5))); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
  forget "$p"
}
forget() {  # a reaped PID may be reused by another process: drop it from the clean-up list
  local keep=() q
  for q in "${PIDS[@]}"; do [[ "$q" != "$1" ]] && keep+=("$q"); done
  PIDS=("${keep[@]}")
}
# One SIGTERM only: fedps processes treat a second signal as "exit now".
stop_pid() { kill -TERM "$1" 2>/dev/null || return 0; wait_gone "$@"; }

echo "fedps demo: config $CONFIG, run folder $RUN, $(nproc) cores"

# ---- 1. corpus ------------------------------------------------------------------------
phase "corpus: fedps-ctl corpus build (Debian packages, cached in $CACHE)"
CORPUS=$DATA/corpus
corpus_args=(--out "$CORPUS" --cache "$CACHE" --max-mb-per-domain "$MAX_MB" --held-out "$HELD_OUT_OPT")
[[ -n "$SOURCES" ]] && corpus_args+=(--sources "$SOURCES")
mkdir -p "$DATA"
"$BIN"/fedps-ctl corpus build "${corpus_args[@]}" 2>&1 | tee "$RUN/logs/corpus.log" \
  || die "corpus build failed (see $RUN/logs/corpus.log)"
cp "$CORPUS/corpus.json" "$RUN/corpus.json"
HELD_OUT=$(jget "$CORPUS/corpus.json" "d.get('held_out_domain') or ''")
read -r -a TRAIN_DOMAINS <<< "$(jget "$CORPUS/corpus.json" "' '.join(d['training_domains'])")"
((${#TRAIN_DOMAINS[@]} >= 1)) || die "the corpus has no training domain"
echo "training domains: ${TRAIN_DOMAINS[*]}; held out: ${HELD_OUT:-none}"

# ---- 2. tokenizer + token shards ------------------------------------------------------
phase "tokenizer ($VOCAB pieces, trained on the training domains only) and token shards"
train_inputs=(); all_inputs=()
for d in "${TRAIN_DOMAINS[@]}"; do train_inputs+=(--input "$d=$CORPUS/$d"); done
all_inputs=("${train_inputs[@]}")
[[ -n "$HELD_OUT" ]] && all_inputs+=(--input "$HELD_OUT=$CORPUS/$HELD_OUT")
"$BIN"/fedps-ctl tokenizer train "${train_inputs[@]}" --vocab-size "$VOCAB" --max-bytes "$TOK_BYTES" \
  --out "$DATA/tokenizer.model" > "$RUN/logs/tokenizer.log" 2>&1 || die "tokenizer training failed: $(tail -3 "$RUN/logs/tokenizer.log")"
"$BIN"/fedps-ctl prepare "${all_inputs[@]}" --tokenizer "$DATA/tokenizer.model" --out "$DATA/all" --force \
  2> "$RUN/logs/prepare.err" | tee "$RUN/logs/prepare.log" || die "prepare failed: $(tail -3 "$RUN/logs/prepare.err")"
NDOM=$(jget "$DATA/all/manifest.json" "len(d['domains'])")
"$BIN"/fedps-ctl partition --data "$DATA/all" --clients "$NDOM" --by domain --out "$DATA/clients" --force \
  > "$RUN/logs/partition.log" 2>&1 || die "partition failed: $(tail -3 "$RUN/logs/partition.log")"
# One client per training domain; the held-out domain's folder is not used by anyone.
CLIENT_NAMES=(); CLIENT_DATA=()
for ((k = 0; k < NDOM; k++)); do
  dom=$(jget "$DATA/clients/client-$k/manifest.json" "d['domains'][0]['name']")
  [[ "$dom" == "$HELD_OUT" ]] && continue
  CLIENT_NAMES+=("site-$dom"); CLIENT_DATA+=("$DATA/clients/client-$k")
done
NCLIENTS=${#CLIENT_NAMES[@]}
SLOW=""; KILLED=""
((NCLIENTS >= 2)) && SLOW=${CLIENT_NAMES[1]}
((NCLIENTS >= 3)) && KILLED=${CLIENT_NAMES[NCLIENTS - 2]}
((NCLIENTS == 2)) && KILLED=${CLIENT_NAMES[0]}

# ---- 3. the run config and the private redis-server -----------------------------------
phase "federation: redis-server, 2 shards, $NCLIENTS clients, 1 evaluator (logs in $RUN/logs/)"
REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
CFG=$RUN/config.toml
sed -e "s|^dir = .*|dir = \"$RUN_ABS/federated\"|" \
    -e "s|^redis = .*|redis = \"127.0.0.1:$REDIS_PORT\"|" \
    -e "s|^prepared = .*|prepared = \"$DATA/all\"|" "$CONFIG" > "$CFG"
"$BIN"/fedps-ctl status --config "$CFG" --json >/dev/null 2>&1 && die "port $REDIS_PORT is taken"
mkdir -p "$RUN/redis"
start_bg "$RUN/logs/redis.log" redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$RUN_ABS/redis"
REDIS_PID=$BG_PID
for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 || die "redis-server did not start: $(tail -3 "$RUN/logs/redis.log")"
event redis_started port "$REDIS_PORT"

# Mutual TLS on every shard connection (docs/security.md), with certificates the demo makes
# for itself: a CA in $RUN/tls, one certificate per shard, per client, for the evaluator and
# for the operator's pull-model.
TLS=$RUN_ABS/tls
"$BIN"/fedps-ctl tls init --ca-dir "$TLS" --ca-name "fedps demo CA" --days 30 > "$RUN/logs/tls.log" 2>&1 \
  || die "fedps-ctl tls init failed: $(tail -3 "$RUN/logs/tls.log")"
issue() {  # issue NAME ROLE
  "$BIN"/fedps-ctl tls issue --ca-dir "$TLS" --name "$1" --role "$2" --days 30 >> "$RUN/logs/tls.log" 2>&1 \
    || die "fedps-ctl tls issue $1 failed: $(tail -3 "$RUN/logs/tls.log")"
}
tls_flags() {  # tls_flags NAME: the flags of NAME's certificate
  local f=${1//\//_}
  echo --tls-mode mutual --tls-ca "$TLS/ca.pem" --tls-cert "$TLS/$f.pem" --tls-key "$TLS/$f.key"
}
for i in 0 1; do issue "shard-$i" shard; done
for name in "${CLIENT_NAMES[@]}"; do issue "$name" client; done
issue evaluator operator
issue ops operator
echo "certificates: $TLS (CA, 2 shards, ${#CLIENT_NAMES[@]} clients, evaluator, operator)"

SHARD_PIDS=()
for i in 0 1; do
  # shellcheck disable=SC2046
  start_bg "$RUN/logs/shard-$i.log" "$BIN"/fedps-shard --config "$CFG" --shard "$i" --port 0 \
    $(tls_flags "shard-$i") --tls-crl "$TLS/crl.pem"
  SHARD_PIDS+=("$BG_PID")
done
for i in 0 1; do
  for _ in $(seq 300); do grep -q "listening on" "$RUN/logs/shard-$i.log" && break
    kill -0 "${SHARD_PIDS[i]}" 2>/dev/null || die "shard $i exited: $(tail -5 "$RUN/logs/shard-$i.log")"; sleep 0.2; done
  grep -q "listening on" "$RUN/logs/shard-$i.log" || die "shard $i did not start: $(tail -5 "$RUN/logs/shard-$i.log")"
done
echo "$(grep -h 'listening on' "$RUN"/logs/shard-*.log)"

# shellcheck disable=SC2046
start_bg "$RUN/logs/evaluator.log" "$BIN"/fedps-client --config "$CFG" --evaluate --data "$DATA/all" --name evaluator \
  $(tls_flags evaluator)
EVAL_PID=$BG_PID

declare -A CPID
start_client() {  # start_client INDEX
  local k=$1 name=${CLIENT_NAMES[$1]} extra=()
  [[ "$name" == "$SLOW" ]] && extra+=(--throttle "$THROTTLE")
  # shellcheck disable=SC2046
  start_bg "$RUN/logs/$name.log" "$BIN"/fedps-client --config "$CFG" --data "${CLIENT_DATA[k]}" --name "$name" \
    "${extra[@]}" $(tls_flags "$name")
  CPID[$name]=$BG_PID
}
for ((k = 0; k < NCLIENTS; k++)); do start_client "$k"; done
echo "clients: ${CLIENT_NAMES[*]} (slow: ${SLOW:-none}, ${THROTTLE}x; killed and restarted: ${KILLED:-none})"

# ---- 4. live progress until the budget -------------------------------------------------
T_FED=$(now)
KILL_T=""; KILL_V=""; RESTART_T=""; RESTARTED=0; SEQ=0; N=0
seq_now() { python3 -c "import json,sys; print(json.load(sys.stdin).get('global_seq', 0))" < "$1" 2>/dev/null || echo 0; }
while :; do
  sleep "$POLL_S"
  N=$((N + 1))
  snap=$RUN/status/status-$(printf %05d "$N").json
  "$BIN"/fedps-ctl status --config "$CFG" --json --events 1000 > "$snap" 2>/dev/null || true
  SEQ=$(seq_now "$snap")
  "$BIN"/fedps-ctl watch --config "$CFG" --count 1 2>/dev/null || true
  echo "[demo] global version $SEQ / $BUDGET  federated for $(since "$T_FED") s (cap $MAX_FED_S s)  total $(since "$T_START") s"
  for name in "${!CPID[@]}"; do
    if ! kill -0 "${CPID[$name]}" 2>/dev/null && [[ "$name" != "$KILLED" || $RESTARTED -eq 1 ]]; then
      die "client $name exited early: $(tail -5 "$RUN/logs/$name.log")"
    fi
  done
  kill -0 "$EVAL_PID" 2>/dev/null || die "the evaluator exited: $(tail -5 "$RUN/logs/evaluator.log")"
  if [[ -n "$KILLED" && -z "$KILL_T" && $SEQ -ge $KILL_AT ]]; then
    kill -KILL "${CPID[$KILLED]}"; wait "${CPID[$KILLED]}" 2>/dev/null || true; forget "${CPID[$KILLED]}"
    KILL_T=$(now); KILL_V=$SEQ; event kill client "$KILLED" version "$SEQ"
    echo "[demo] kill -9 $KILLED at version $SEQ; restarting it in $DOWN_S s from its state folder"
  fi
  if [[ -n "$KILL_T" && $RESTARTED -eq 0 ]] && (( $(since "$KILL_T") >= DOWN_S )); then
    for ((k = 0; k < NCLIENTS; k++)); do [[ "${CLIENT_NAMES[k]}" == "$KILLED" ]] && start_client "$k"; done
    RESTARTED=1; RESTART_T=$(now); event restart client "$KILLED" version "$SEQ"
    echo "[demo] restarted $KILLED (it resumes from $RUN/federated/clients/$KILLED)"
  fi
  # The budget ends the run once the killed client has been back for a while (it must be
  # seen resuming); the time cap ends it regardless.
  if ((SEQ >= BUDGET)) && [[ -z "$KILLED" || ( $RESTARTED -eq 1 && $(since "$RESTART_T") -ge $DOWN_S ) ]]; then break; fi
  (( $(since "$T_FED") >= MAX_FED_S )) && { echo "[demo] time cap of $MAX_FED_S s reached"; break; }
done
event budget_reached version "$SEQ"
phase "stopping the clients (SIGTERM: they leave the federation)"
for name in "${!CPID[@]}"; do kill -TERM "${CPID[$name]}" 2>/dev/null || true; done
for name in "${!CPID[@]}"; do wait_gone "${CPID[$name]}" 60; done
stop_pid "$EVAL_PID" 30
FED_S=$(since "$T_FED")
"$BIN"/fedps-ctl status --config "$CFG" --json --events 5000 > "$RUN/status/status-final.json"
FINAL=$(seq_now "$RUN/status/status-final.json")
echo "federation stopped at global version $FINAL after $FED_S s"
# One last evaluation at the final version, so the curves end where the model ends.
# shellcheck disable=SC2046
"$BIN"/fedps-client --config "$CFG" --evaluate --data "$DATA/all" --name evaluator --max-updates 1 $(tls_flags evaluator) \
  >> "$RUN/logs/evaluator.log" 2>&1 || die "final evaluator run failed: $(tail -5 "$RUN/logs/evaluator.log")"
FED_TOKENS=$(python3 - "$RUN/federated/clients" <<'EOF'
import json, os, sys
total = 0
for root, _, files in os.walk(sys.argv[1]):
    if "metrics.jsonl" in files:
        for line in open(os.path.join(root, "metrics.jsonl")):
            try: r = json.loads(line)
            except ValueError: continue
            if r.get("event") == "update": total += r.get("tokens", 0)
print(total)
EOF
)
echo "tokens in committed updates: $FED_TOKENS"

# ---- 5. the federated model ------------------------------------------------------------
phase "final federated model: fedps-ctl pull-model, eval on every domain, samples"
EVAL_ARGS=(--data "$DATA/all" --batches "$FINAL_BATCHES" --json
           --seq-len "$(sed -n 's/^seq_len = \([0-9]*\).*/\1/p' "$CFG")"
           --batch "$(sed -n 's/^micro_batch = \([0-9]*\).*/\1/p' "$CFG")")
PROMPTS=(--prompt "def " --prompt "The " --prompt "Chapter 1" --prompt "NAME")
FED_MODEL=""
if "$BIN"/fedps-ctl pull-model --help >/dev/null 2>&1; then
  # shellcheck disable=SC2046
  if "$BIN"/fedps-ctl pull-model --config "$CFG" --out "$RUN/federated/model" --version-min "$FINAL" $(tls_flags ops) \
       > "$RUN/logs/pull-model.log" 2>&1; then
    FED_MODEL=$RUN/federated/model
  else
    echo "pull-model failed ($(tail -2 "$RUN/logs/pull-model.log")); the report uses the evaluator's last record"
  fi
else
  echo "this fedps-ctl has no pull-model: the report uses the evaluator's last record, no federated samples"
fi
if [[ -n "$FED_MODEL" ]]; then
  "$BIN"/fedps-ctl eval --checkpoint "$FED_MODEL" "${EVAL_ARGS[@]}" > "$RUN/eval-federated.json" 2> "$RUN/logs/eval-federated.log" \
    || die "eval of the federated model failed: $(tail -3 "$RUN/logs/eval-federated.log")"
  "$BIN"/fedps-ctl generate --checkpoint "$FED_MODEL" "${PROMPTS[@]}" -n "$SAMPLE_TOKENS" "${SAMPLING[@]}" --json \
    > "$RUN/samples-federated.json" 2> "$RUN/logs/generate-federated.log" || die "generate failed"
fi
for i in "${!SHARD_PIDS[@]}"; do stop_pid "${SHARD_PIDS[i]}" 60; done
stop_pid "$REDIS_PID" 10

# ---- 6. the centralised baseline -------------------------------------------------------
MB=$(sed -n 's/^micro_batch = \([0-9]*\).*/\1/p' "$CFG"); SL=$(sed -n 's/^seq_len = \([0-9]*\).*/\1/p' "$CFG")
# The data-parallel equivalent (docs/quality.md): every step takes the training clients'
# batches together (grad_accum = clients), as many steps as give the federation's tokens.
ACCUM=$NCLIENTS
STEPS=$(( (FED_TOKENS + ACCUM * MB * SL / 2) / (ACCUM * MB * SL) )); ((STEPS >= 1)) || STEPS=1
phase "centralised baseline: fedps-ctl train on the pooled training domains, $STEPS steps of $ACCUM x $MB sequences = $((STEPS * ACCUM * MB * SL)) tokens"
BCFG=$RUN/baseline.toml
DOMAINS_CSV=$(IFS=,; echo "${TRAIN_DOMAINS[*]}")
sed -e "s|^dir = .*|dir = \"$RUN_ABS/centralised\"|" \
    -e "/^\[data\]/a domains = \"$DOMAINS_CSV\"" \
    -e "/^\[train\]/,/^\[/ s|^threads = .*|threads = 0|" \
    -e "/^\[train\]/,/^\[/ s|^eval_every = .*|eval_every = $(( STEPS / 10 > 0 ? STEPS / 10 : 1 ))|" \
    -e "/^\[train\]/a grad_accum = $ACCUM" \
    -e "/^\[train\]/,/^\[/ s|^steps = .*|steps = $STEPS|" "$CFG" > "$BCFG"
T_BASE=$(now)
"$BIN"/fedps-ctl train --config "$BCFG" 2>&1 | tee "$RUN/logs/centralised.log" \
  | awk '/^\[train\] (step|done)|parameters|^\[eval\]/ { print; fflush() }' \
  || die "baseline training failed (see $RUN/logs/centralised.log)"
BASE_S=$(since "$T_BASE")
"$BIN"/fedps-ctl eval --checkpoint "$RUN/centralised/checkpoints" "${EVAL_ARGS[@]}" > "$RUN/eval-centralised.json" \
  2> "$RUN/logs/eval-centralised.log" || die "eval of the baseline failed: $(tail -3 "$RUN/logs/eval-centralised.log")"
"$BIN"/fedps-ctl generate --checkpoint "$RUN/centralised/checkpoints" "${PROMPTS[@]}" -n "$SAMPLE_TOKENS" "${SAMPLING[@]}" --json \
  > "$RUN/samples-centralised.json" 2> "$RUN/logs/generate-centralised.log" || die "generate failed"

# ---- 7. report -------------------------------------------------------------------------
phase "report: fedps-ctl report $RUN"
python3 - "$RUN/demo.json" <<EOF
import json, sys
json.dump({
  "config": "$CONFIG", "machine": "$(nproc) cores, $(uname -m), $(. /etc/os-release 2>/dev/null; echo "${PRETTY_NAME:-}")",
  "clients": "${CLIENT_NAMES[*]}", "slow client": "${SLOW:-none} (--throttle $THROTTLE)",
  "killed client": "${KILLED:-none} (kill -9 at version ${KILL_V:-?}, restarted $DOWN_S s later)",
  "held_out_domain": "$HELD_OUT", "update budget": "$BUDGET (cap $MAX_FED_S s)",
  "final global version": "$FINAL", "federated tokens (committed)": "$FED_TOKENS",
  "federated phase (s)": "$FED_S", "centralised steps": "$STEPS (grad_accum $ACCUM)", "centralised phase (s)": "$BASE_S",
  "federated model": "${FED_MODEL:-none (no pull-model): final numbers from the evaluator}",
}, open(sys.argv[1], "w"), indent=1)
EOF
"$BIN"/fedps-ctl report "$RUN" --title "fedps demo $STAMP" > /dev/null
python3 - "$RUN/eval-federated.json" "$RUN/eval-centralised.json" "$HELD_OUT" <<'EOF' || true
import json, os, sys
rows = {}
for label, path in (("federated", sys.argv[1]), ("centralised", sys.argv[2])):
    if os.path.exists(path):
        for d, v in json.load(open(path))["domains"].items():
            rows.setdefault(d, {})[label] = v["bits_per_byte"]
print(f"{'domain':<24}{'federated bpb':>15}{'centralised bpb':>17}")
for d, v in rows.items():
    f = lambda x: f"{x:.3f}" if x is not None else "-"
    print(f"{d + (' (held out)' if d == sys.argv[3] else ''):<24}{f(v.get('federated')):>15}{f(v.get('centralised')):>17}")
EOF
WALL=$(since "$T_START")
echo "{\"wall_s\": $WALL}" > "$RUN/wall.json"
echo
echo "== done in $WALL s ($(date -u -d "@$WALL" +%M:%S) min:s): open $RUN/report.html"
