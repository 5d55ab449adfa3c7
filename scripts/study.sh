#!/usr/bin/env bash
# The quality study (docs/quality.md): federated variants against centralised baselines on
# the same data, model, initial weights and token budget, all on localhost.
#
#   scripts/study.sh [--config configs/study.toml] [--runs runs/study] [--data data/<config name>]
#                    [--cache cache/corpus] [--bin build/bin] [--only NAME,NAME...]
#
# The config is an ordinary run config plus `#@study` comment lines (TOML comments, so the
# fedps programs ignore them):
#   #@study key = value                          settings of this script (see below)
#   #@study variant NAME = K PART [section.key=value ...]
#                                                one federated run: K clients, PART `iid`
#                                                (every client a random share of every
#                                                domain) or `domain` (one domain each), the
#                                                config with these keys replaced
#                                                (study.updates_per_client=N: this
#                                                variant's own update count)
# A variant with ps.mode=sync client.pipeline_depth=0 ps.round_clients=K runs synchronous
# rounds (docs/protocol.md): one update per client and round, the same tokens.
# Every federated run: a private redis-server, ps.num_shards fedps-shard, K fedps-client,
# each stopping after `updates_per_client` committed updates (--max-updates), so every run
# trains on K x updates_per_client x local_steps x micro_batch x seq_len tokens. Each
# client's train.steps (its inner schedule's length) is set to the steps it runs,
# updates_per_client x local_steps, unless the variant sets train.steps. Then
# `fedps-ctl pull-model` and `fedps-ctl eval --json` on every domain's validation split.
# Baselines (`fedps-ctl train`, pooled training domains, same seed so the same initial
# model, same tokens as the federated run): `central-dpK`, micro_batch x K per step
# (grad_accum = K: the data-parallel equivalent of K clients), and `central-1`, one
# client's batch. Runs whose eval-*.json exists are not run again (delete the folder to
# redo one). The last phase prints the table: bits per byte per domain and the ratio to
# central-dpK of the same K, and a summary row per run (losses, ratios, the mean and largest
# staleness of shard 0's applied updates, wall seconds), also written to RUNS/study.json.
#
# Settings (#@study key = value; STUDY_<KEY> environment variables override):
#   corpus_sources, max_mb_per_domain, held_out, vocab_size, tokenizer_bytes: the data, as
#   in scripts/demo.sh; updates_per_client; eval_batches (per domain, final evaluation);
#   baselines (comma list of dp, single); max_run_s (a federated run is stopped after this);
#   baseline_threads (train.threads of the baselines; 0 = LibTorch's default, all cores: on
#   a machine loaded by other work, 1 avoids idle-spinning threads).
set -euo pipefail
cd "$(dirname "$0")/.."

CONFIG=configs/study.toml
RUNS=runs/study
DATA=""
CACHE=cache/corpus
BIN=${BIN:-build/bin}
ONLY=""
while (($#)); do
  case "$1" in
    --config) CONFIG=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    --cache) CACHE=$2; shift 2 ;;
    --bin) BIN=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    -h|--help) sed -n '2,39p' "$0"; exit 0 ;;
    *) echo "study: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
die() { echo "study: error: $*" >&2; exit 1; }
[[ -f "$CONFIG" ]] || die "no config $CONFIG"
for b in fedps-ctl fedps-shard fedps-client; do
  [[ -x "$BIN/$b" ]] || die "$BIN/$b is not built (make build, or BIN=<build>/bin)"
done
for t in redis-server redis-cli python3; do
  command -v "$t" >/dev/null || die "$t is not installed (scripts/setup.sh installs it)"
done
STEM=$(basename "$CONFIG" .toml)
DATA=${DATA:-data/$STEM}
T0=$(date +%s)
since() { echo $(( $(date +%s) - $1 )); }
say() { echo "[study $(since "$T0") s] $*"; }

source scripts/lib/settings.sh
setting() { config_setting study "$@"; }
SOURCES=$(setting corpus_sources "")
MAX_MB=$(setting max_mb_per_domain 2)
HELD_OUT_OPT=$(setting held_out spanish)
VOCAB=$(setting vocab_size 4096)
TOK_BYTES=$(setting tokenizer_bytes 3000000)
UPDATES=$(setting updates_per_client 12)
EVAL_BATCHES=$(setting eval_batches 8)
BASELINES=$(setting baselines dp)
MAX_RUN_S=$(setting max_run_s 900)
BASELINE_THREADS=$(setting baseline_threads 0)
mapfile -t VARIANTS < <(sed -n 's/^#@study[[:space:]]\+variant[[:space:]]\+\(.*\)$/\1/p' "$CONFIG")
((${#VARIANTS[@]})) || die "$CONFIG has no '#@study variant NAME = K PART ...' line"

# cfg_set IN OUT section.key=value...: the config with those keys replaced (or added to
# their section); a value that is not a number or true/false is written as a string.
cfg_set() {
  python3 - "$@" <<'EOF'
import re, sys
src, dst, sets = sys.argv[1], sys.argv[2], sys.argv[3:]
lines = open(src).read().split("\n")
for s in sets:
    key, _, val = s.partition("=")
    sec, _, name = key.rpartition(".")
    if not sec or not name or not _:
        sys.exit(f"study: bad override {s!r} (want section.key=value)")
    if not re.fullmatch(r"-?[0-9.e+-]+|true|false|\".*\"", val):
        val = '"' + val + '"'
    cur, done, last = None, False, None
    for i, l in enumerate(lines):
        m = re.match(r"\s*\[([^\]]+)\]", l)
        if m:
            cur = m.group(1)
            continue
        if cur == sec:
            last = i
            if re.match(rf"\s*{re.escape(name)}\s*=", l):
                lines[i] = f"{name} = {val}"
                done = True
    if not done:
        if last is None:
            lines += [f"[{sec}]", f"{name} = {val}"]
        else:
            lines.insert(last + 1, f"{name} = {val}")
open(dst, "w").write("\n".join(lines))
EOF
}
cfg_get() {  # cfg_get FILE section key
  python3 -c "import tomllib,sys; print(tomllib.load(open(sys.argv[1],'rb'))[sys.argv[2]][sys.argv[3]])" "$@"
}

# ---- processes and clean-up -----------------------------------------------------------
PIDS=()
stop_all() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in $(seq 50); do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.2
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'rc=$?; trap - EXIT; stop_all; exit $rc' EXIT
trap 'exit 130' INT TERM
start_bg() { local log=$1; shift; "$@" > "$log" 2>&1 & BG_PID=$!; PIDS+=("$BG_PID"); }

# ---- data: corpus, tokenizer, prepared folders, partitions ----------------------------
mkdir -p "$RUNS" "$DATA"
CORPUS=$DATA/corpus
if [[ ! -f "$DATA/all/manifest.json" ]]; then
  say "data: corpus, tokenizer, token shards under $DATA"
  args=(--out "$CORPUS" --cache "$CACHE" --max-mb-per-domain "$MAX_MB" --held-out "$HELD_OUT_OPT")
  [[ -n "$SOURCES" ]] && args+=(--sources "$SOURCES")
  "$BIN"/fedps-ctl corpus build "${args[@]}" > "$RUNS/corpus.log" 2>&1 || die "corpus build failed (see $RUNS/corpus.log)"
  train_in=(); all_in=()
  for d in $(python3 -c "import json;print(' '.join(json.load(open('$CORPUS/corpus.json'))['training_domains']))"); do
    train_in+=(--input "$d=$CORPUS/$d")
  done
  all_in=("${train_in[@]}")
  HO=$(python3 -c "import json;print(json.load(open('$CORPUS/corpus.json')).get('held_out_domain') or '')")
  [[ -n "$HO" ]] && all_in+=(--input "$HO=$CORPUS/$HO")
  "$BIN"/fedps-ctl tokenizer train "${train_in[@]}" --vocab-size "$VOCAB" --max-bytes "$TOK_BYTES" \
    --out "$DATA/tokenizer.model" > "$RUNS/tokenizer.log" 2>&1 || die "tokenizer failed (see $RUNS/tokenizer.log)"
  "$BIN"/fedps-ctl prepare "${all_in[@]}" --tokenizer "$DATA/tokenizer.model" --out "$DATA/all" --force \
    > "$RUNS/prepare.log" 2>&1 || die "prepare failed (see $RUNS/prepare.log)"
fi
HELD_OUT=$(python3 -c "import json;print(json.load(open('$CORPUS/corpus.json')).get('held_out_domain') or '')")
TRAIN_DOMAINS=$(python3 -c "import json;print(','.join(json.load(open('$CORPUS/corpus.json'))['training_domains']))")
IFS=, read -r -a TRAIN_LIST <<< "$TRAIN_DOMAINS"

# partition_dir K PART: the client folders of that partition (made once), one per line.
partition_dir() {
  local k=$1 part=$2 out=$DATA/clients-$2-$1 i dom
  if [[ ! -f "$out/client-0/manifest.json" ]]; then
    if [[ $part == domain ]]; then
      # One client per training domain: partition all domains, keep the training ones.
      "$BIN"/fedps-ctl partition --data "$DATA/all" --clients "$(python3 -c "import json;print(len(json.load(open('$DATA/all/manifest.json'))['domains']))")" \
        --by domain --out "$out" --force > "$RUNS/partition-$part-$k.log" 2>&1 || die "partition failed"
    else
      "$BIN"/fedps-ctl partition --data "$DATA/all" --clients "$k" --by iid --out "$out" --force \
        > "$RUNS/partition-$part-$k.log" 2>&1 || die "partition failed"
    fi
  fi
  [[ $part != domain || $k -eq ${#TRAIN_LIST[@]} ]] || die "partition domain needs K = ${#TRAIN_LIST[@]} (one client per training domain), got $k"
  local n=0
  for i in "$out"/client-*; do
    dom=$(python3 -c "import json,sys;print(','.join(d['name'] for d in json.load(open(sys.argv[1]))['domains']))" "$i/manifest.json")
    [[ $part == domain && ( "$dom" == "$HELD_OUT" || ",$TRAIN_DOMAINS," != *",$dom,"* ) ]] && continue
    ((n < k)) || break
    echo "$i"; n=$((n + 1))
  done
}

EVAL_SEQ=$(cfg_get "$CONFIG" train seq_len)
EVAL_MB=$(cfg_get "$CONFIG" train micro_batch)
evaluate() {  # evaluate CHECKPOINT OUT.json
  "$BIN"/fedps-ctl eval --checkpoint "$1" --data "$DATA/all" --batches "$EVAL_BATCHES" --seq-len "$EVAL_SEQ" \
    --batch "$EVAL_MB" --json > "$2.tmp" 2> "${2%.json}.log" && mv "$2.tmp" "$2"
}

# ---- federated runs -------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
declare -A RUN_K RUN_TOKENS
run_federated() {  # run_federated NAME K PART OVERRIDES...
  local name=$1 k=$2 part=$3; shift 3
  local run=$RUNS/$name updates=$UPDATES over=() a
  for a in "$@"; do  # study.updates_per_client=N: this variant's own count
    if [[ $a == study.updates_per_client=* ]]; then updates=${a#*=}; else over+=("$a"); fi
  done
  set -- "${over[@]}"
  if [[ -f "$run/eval-federated.json" ]]; then
    say "$name: done before ($run), kept"
  else
    rm -rf "$run"; mkdir -p "$run/logs"
    local run_abs; run_abs=$(cd "$run" && pwd)
    local port; port=$(free_port)
    local h; h=$(cfg_get "$CONFIG" client local_steps)
    for a in "$@"; do [[ $a == client.local_steps=* ]] && h=${a#*=}; done
    local cfg=$run/config.toml
    # IID clients hold a share of every domain, the held-out one too: train on the training
    # domains only, as the baselines do.
    local only=(); [[ $part == iid ]] && only=("data.domains=$TRAIN_DOMAINS")
    cfg_set "$CONFIG" "$cfg" "run.id=study-$name" "run.dir=$run_abs/federated" "ps.redis=127.0.0.1:$port" \
      "data.prepared=$DATA/all" "train.steps=$((updates * h))" "${only[@]}" "$@"
    say "$name: $k clients ($part), $updates updates each; overrides: ${*:-none}"
    mkdir -p "$run/redis"
    start_bg "$run/logs/redis.log" redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$run_abs/redis"
    for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
    local nshards i; nshards=$(cfg_get "$cfg" ps num_shards)
    for ((i = 0; i < nshards; i++)); do
      start_bg "$run/logs/shard-$i.log" "$BIN"/fedps-shard --config "$cfg" --shard "$i" --port 0
    done
    for ((i = 0; i < nshards; i++)); do
      for _ in $(seq 300); do grep -q "listening on" "$run/logs/shard-$i.log" && break; sleep 0.2; done
      grep -q "listening on" "$run/logs/shard-$i.log" || die "$name: shard $i did not start: $(tail -3 "$run/logs/shard-$i.log")"
    done
    local cpids=() dir j=0
    while read -r dir; do
      start_bg "$run/logs/client-$j.log" "$BIN"/fedps-client --config "$cfg" --data "$dir" --name "c$j" --max-updates "$updates"
      cpids+=("$BG_PID"); j=$((j + 1))
    done < <(partition_dir "$k" "$part")
    ((j == k)) || die "$name: partition $part has $j client folders, want $k"
    # The global version counts commits; in synchronous rounds (ps.mode = sync) rounds.
    local target=$((k * updates)) mode; mode=$(cfg_get "$cfg" ps mode 2>/dev/null || echo async)
    [[ $mode == sync ]] && target=$updates
    local t=$(date +%s) alive p
    while :; do
      sleep 5
      alive=0; for p in "${cpids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
      local seq; seq=$("$BIN"/fedps-ctl status --config "$cfg" --json 2>/dev/null | python3 -c "import json,sys;print(json.load(sys.stdin).get('global_seq',0))" 2>/dev/null || echo "?")
      say "$name: global version $seq / $target, $alive clients training, $(since "$t") s"
      ((alive)) || break
      (( $(since "$t") < MAX_RUN_S )) || { say "$name: stopped at the $MAX_RUN_S s cap"; break; }
    done
    for p in "${cpids[@]}"; do wait "$p" 2>/dev/null || say "$name: a client exited with an error (see $run/logs)"; done
    local final; final=$("$BIN"/fedps-ctl status --config "$cfg" --json | python3 -c "import json,sys;print(json.load(sys.stdin).get('global_seq',0))")
    "$BIN"/fedps-ctl pull-model --config "$cfg" --out "$run/federated/model" --version-min "$final" \
      > "$run/logs/pull-model.log" 2>&1 || die "$name: pull-model failed: $(tail -3 "$run/logs/pull-model.log")"
    stop_all
    echo "{\"seconds\": $(since "$t"), \"final_version\": $final}" > "$run/federated.json"
    evaluate "$run/federated/model" "$run/eval-federated.json" || die "$name: eval failed (see $run/eval-federated.log)"
  fi
  RUN_K[$name]=$k
  RUN_TOKENS[$name]=$(python3 - "$run/federated/clients" <<'EOF'
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
}

# ---- centralised baselines ------------------------------------------------------------
run_central() {  # run_central NAME ACCUM TOKENS
  local name=$1 accum=$2 tokens=$3 run=$RUNS/$1
  local mb sl; mb=$(cfg_get "$CONFIG" train micro_batch); sl=$(cfg_get "$CONFIG" train seq_len)
  local steps=$(( (tokens + accum * mb * sl / 2) / (accum * mb * sl) ))
  if [[ -f "$run/eval-centralised.json" ]]; then say "$name: done before ($run), kept"; return; fi
  rm -rf "$run"; mkdir -p "$run"
  local run_abs; run_abs=$(cd "$run" && pwd)
  cfg_set "$CONFIG" "$run/config.toml" "run.dir=$run_abs/centralised" "data.prepared=$DATA/all" \
    "data.domains=$TRAIN_DOMAINS" "train.threads=$BASELINE_THREADS" "train.grad_accum=$accum" "train.steps=$steps" \
    "train.eval_every=0" "train.checkpoint_every=0"
  say "$name: fedps-ctl train, $steps steps x $accum x $mb x $sl = $((steps * accum * mb * sl)) tokens"
  local t=$(date +%s)
  "$BIN"/fedps-ctl train --config "$run/config.toml" > "$run/train.log" 2>&1 || die "$name: training failed (see $run/train.log)"
  echo "{\"seconds\": $(since "$t"), \"steps\": $steps}" > "$run/centralised.json"
  evaluate "$run/centralised/checkpoints" "$run/eval-centralised.json" || die "$name: eval failed"
}

DONE=()
for v in "${VARIANTS[@]}"; do
  name=$(sed 's/[[:space:]]*=.*//' <<< "$v")
  read -r -a rest <<< "$(sed 's/^[^=]*=[[:space:]]*//' <<< "$v")"
  [[ -n "$ONLY" && ",$ONLY," != *",$name,"* ]] && continue
  run_federated "$name" "${rest[@]}"
  DONE+=("$name")
  k=${RUN_K[$name]}; tok=${RUN_TOKENS[$name]}
  [[ ",$BASELINES," == *",dp,"* ]] && run_central "central-dp$k-$tok" "$k" "$tok"
  [[ ",$BASELINES," == *",single,"* ]] && run_central "central-1-$tok" 1 "$tok"
done

# ---- the table --------------------------------------------------------------------------
say "table (bits per byte; ratio = federated / central-dpK at equal tokens)"
python3 - "$RUNS" "$HELD_OUT" "${DONE[@]}" <<'EOF'
import glob, json, os, sys
runs, held, names = sys.argv[1], sys.argv[2], sys.argv[3:]
def load(path):
    if not os.path.exists(path): return None
    j = json.load(open(path))
    out = {d: v for d, v in j["domains"].items()}
    out["(all)"] = {"loss": j["loss"], "bits_per_byte": j["bits_per_byte"]}
    return out
def tokens(n):
    t = 0
    for f in glob.glob(f"{runs}/{n}/federated/clients/*/metrics.jsonl"):
        for l in open(f):
            try: r = json.loads(l)
            except ValueError: continue
            if r.get("event") == "update": t += r.get("tokens", 0)
    return t
def staleness(n):  # (mean, max) staleness of the updates shard 0 applied
    path, st = f"{runs}/{n}/federated/shard-0/metrics.jsonl", []
    if not os.path.exists(path): return (None, None)
    for l in open(path):
        try: r = json.loads(l)
        except ValueError: continue
        if r.get("event") == "apply" and "staleness" in r: st.append(r["staleness"])
    return (sum(st) / len(st), max(st)) if st else (None, None)
fmt = lambda x, p=3: "-" if x is None else f"{x:.{p}f}"
get = lambda e, d, key="bits_per_byte": e[d][key] if e and d in e else None
summary = []
for n in names:
    k = len(glob.glob(f"{runs}/{n}/federated/clients/*/metrics.jsonl"))
    toks = tokens(n)
    fed = load(f"{runs}/{n}/eval-federated.json")
    dp = load(f"{runs}/central-dp{k}-{toks}/eval-centralised.json")
    single = load(f"{runs}/central-1-{toks}/eval-centralised.json")
    domains = sorted(d for d in (fed or {}) if d != "(all)") + ["(all)"]
    w = max(12, *(len(d) + 2 for d in domains))
    print(f"\n{n}: {k} clients, {toks} tokens (bits per byte; * held out)")
    print(f"  {'domain':<{w}} {'federated':>10} {'dp' + str(k):>10} {'single':>10} {'fed/dp':>8}")
    worst = None
    for d in domains:
        f, c, s1 = get(fed, d), get(dp, d), get(single, d)
        r = f / c if f is not None and c else None
        if r is not None and d != "(all)": worst = r if worst is None else max(worst, r)
        print(f"  {d + (' *' if d == held else ''):<{w}} {fmt(f):>10} {fmt(c):>10} {fmt(s1):>10} {fmt(r):>8}")
    fl, cl = get(fed, "(all)", "loss"), get(dp, "(all)", "loss")
    secs = json.load(open(f"{runs}/{n}/federated.json")).get("seconds") if os.path.exists(f"{runs}/{n}/federated.json") else None
    summary.append((n, k, toks, fl, cl, fl / cl if fl and cl else None, worst, *staleness(n), secs))
json.dump([dict(zip(("run", "clients", "tokens", "federated_loss", "dp_loss", "loss_ratio", "worst_bpb_ratio",
                     "mean_staleness", "max_staleness", "seconds"), r))
           for r in summary], open(f"{runs}/study.json", "w"), indent=1)
print(f"\n{'run':<28} {'K':>2} {'tokens':>9} {'fed loss':>9} {'dp loss':>8} {'loss ratio':>10} {'worst bpb ratio':>15} {'staleness':>11} {'wall s':>6}")
for n, k, toks, fl, cl, r, worst, smean, smax, secs in summary:
    stale = "-" if smean is None else f"{smean:.1f} (<={smax})"
    print(f"{n:<28} {k:>2} {toks:>9} {fmt(fl):>9} {fmt(cl):>8} {fmt(r):>10} {fmt(worst):>15} {stale:>11} {secs if secs is not None else '-':>6}")
EOF
say "done; run folders under $RUNS"
