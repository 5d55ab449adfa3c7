#!/usr/bin/env bash
# A whole federation on one GPU host: a private redis-server (AOF), SHARDS fedps-shard and
# CLIENTS fedps-client on one GPU, the prepared corpus partitioned by domain over the
# clients. Samples GPU, host memory and disk every SAMPLE_S seconds, stops cleanly, and
# writes per-phase times, compute utilisation, GPU samples, RAM/disk peaks and the shard
# apply rate beside a memcpy reference (bench/federation_summary.py). docs/performance.md
# ("A federation on one GPU") says how the lead's runs use it.
#
# From the project root, with build-gpu-deps/{deps,redis,data} carried (scripts/gpu_deps.sh):
#   BUILD=1 bash bench/gpu_federation.sh            # configure + build the three binaries only
#   PRESET=125m SECONDS_RUN=240 bash bench/gpu_federation.sh
#   BUILD=1 PRESET=1.3b LOCAL_STEPS=20 MICRO_BATCH=4 bash bench/gpu_federation.sh   # both
#
# Environment (defaults in brackets):
#   PRESET       model preset [125m]; the base config is configs/$PRESET.toml, else
#                configs/125m.toml with [model] preset = $PRESET (there is no configs/1.3b.toml)
#   CONFIG       base config instead of the above
#   SECONDS_RUN  seconds the federation runs after the clients start [240]
#   LOCAL_STEPS  [client] local_steps, H [50]
#   MICRO_BATCH  [train] micro_batch [the base config's]
#   CLIENTS      clients [2]; the corpus is split by domain (K <= its domains)
#   SHARDS       [ps] num_shards, one fedps-shard each [2]
#   DEVICE       [train] device of the clients [cuda]
#   SET          more config keys, space separated: "ps.checkpoint_every=0 train.threads=1"
#   EVALUATE     1: also an evaluator client on the same device [off]
#   SAMPLE_S     seconds between samples [5]
#   GRACE_S      seconds after SIGTERM before SIGKILL, per process group [20]
#   MAX_TOTAL_S  stop the federation early once the script has run this long, build
#                included, so that stopping and the summary fit a 600 s device call [510]
#   BUILD        1: configure + build fedps-shard fedps-client fedps-ctl into BUILD_DIR first
#                (as scripts/gpu_train.sh does), then run unless SECONDS_RUN=0;
#                without PRESET/SECONDS_RUN set, BUILD=1 only builds
#   BUILD_DIR    [/tmp/build-gpu];  BIN: the binaries [$BUILD_DIR/bin]
#   GPU_TESTS    1 (with BUILD=1): also build the gpu-labelled tests (gpu_test) and run
#                `ctest -L gpu` before the federation; results in $OUT/gpu_tests.log
#   DATA         prepared corpus [build-gpu-deps/data/corpus-v32k]
#   REDIS        redis-server binary [build-gpu-deps/redis/redis-server, run with
#                LD_LIBRARY_PATH=its folder]; REDIS_PORT [a free port]; REDIS_FSYNC [always]
#   RUN_DIR      the run folder [/tmp/fedps-fed-$PRESET] (emptied first)
#   OUT          results [/tmp/fedps-fed-out]: summary.md summary.json samples.tsv
#                config.toml run.log federation.tgz (metrics, logs, status; <= 8 files)
#   DRY          1: write $OUT/config.toml, print it and stop
#   FEDPS_REV    the source revision, named in the summary (the device copy has no .git)
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
stamp() { echo "[gpu_federation] $(date -u +%H:%M:%S) $*"; }
die() { echo "[gpu_federation] error: $*" >&2; exit 1; }

ONLY_BUILD=0
[[ "${BUILD:-0}" == 1 && -z "${PRESET:-}" && -z "${SECONDS_RUN:-}" ]] && ONLY_BUILD=1
PRESET=${PRESET:-125m}
RUN_S=${SECONDS_RUN:-240}
LOCAL_STEPS=${LOCAL_STEPS:-50}
CLIENTS=${CLIENTS:-2}
SHARDS=${SHARDS:-2}
DEVICE=${DEVICE:-cuda}
SAMPLE_S=${SAMPLE_S:-5}
GRACE_S=${GRACE_S:-20}
MAX_TOTAL_S=${MAX_TOTAL_S:-510}
OUT=${OUT:-/tmp/fedps-fed-out}
DEPS=$ROOT/build-gpu-deps/deps
LIB=$DEPS/lib/x86_64-linux-gnu
BUILD_DIR=${BUILD_DIR:-/tmp/build-gpu}
BIN=${BIN:-$BUILD_DIR/bin}
DATA=${DATA:-$ROOT/build-gpu-deps/data/corpus-v32k}
REDIS=${REDIS:-$ROOT/build-gpu-deps/redis/redis-server}
RUN_DIR=${RUN_DIR:-/tmp/fedps-fed-$PRESET}
JOBS=${JOBS:-$(nproc)}
export PATH=$DEPS/bin:/usr/local/cuda/bin:$PATH
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$OUT"
W=$(mktemp -d /tmp/fedps-fed-work.XXXXXX)   # logs, metrics copies, status -> federation.tgz
exec > >(tee -a "$OUT/run.log") 2>&1
T0=$(date +%s)

# ---- build (optional) -------------------------------------------------------------------
if [[ "${BUILD:-0}" == 1 ]]; then
  stamp "configure + build fedps-shard fedps-client fedps-ctl into $BUILD_DIR"
  TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)') || die "no PyTorch for LibTorch"
  (
    set -e
    targets=(fedps-shard fedps-client fedps-ctl)
    [[ "${GPU_TESTS:-0}" == 1 ]] && targets+=(gpu_test)
    cmake -S . -B "$BUILD_DIR" -G Ninja -Wno-dev \
      -DFEDPS_BUILD_TESTS=$([[ "${GPU_TESTS:-0}" == 1 ]] && echo ON || echo OFF) -DFEDPS_BUILD_BENCH=OFF \
      -DCMAKE_PREFIX_PATH="$DEPS;$TORCH_PREFIX" \
      -DOPENSSL_ROOT_DIR="$DEPS" \
      -DPKG_CONFIG_EXECUTABLE="$DEPS/bin/pkg-config" \
      -DTHRIFT_EXECUTABLE="$DEPS/bin/thrift" \
      -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
    time timeout "${BUILD_TIMEOUT_S:-540}" cmake --build "$BUILD_DIR" --target "${targets[@]}" -j "$JOBS"
  ) >"$OUT/build.log" 2>&1
  rc=$?
  grep -E "error|FAILED" "$OUT/build.log" | head -20; tail -4 "$OUT/build.log"
  stamp "build rc=$rc ($(( $(date +%s) - T0 )) s)"
  [[ $rc -eq 0 ]] || exit $rc
  if [[ "${GPU_TESTS:-0}" == 1 ]]; then
    LD_LIBRARY_PATH=$DEPS/lib/x86_64-linux-gnu ctest --test-dir "$BUILD_DIR" -L gpu --output-on-failure \
      >"$OUT/gpu_tests.log" 2>&1
    stamp "ctest -L gpu rc=$? ($(grep -E 'tests passed|tests failed' "$OUT/gpu_tests.log" | tail -1))"
  fi
  (( ONLY_BUILD )) && exit 0
fi
(( RUN_S > 0 )) || exit 0

# ---- checks -------------------------------------------------------------------------------
if [[ "${DRY:-0}" != 1 ]]; then
  for b in fedps-shard fedps-client fedps-ctl; do [[ -x "$BIN/$b" ]] || die "$BIN/$b missing (BUILD=1, or BIN=...)"; done
  [[ -f "$DATA/manifest.json" ]] || die "no prepared corpus $DATA (scripts/gpu_deps.sh)"
  [[ -x "$REDIS" ]] || die "no redis-server $REDIS (scripts/gpu_deps.sh, or REDIS=...)"
fi
REDIS_LIB=$(dirname "$REDIS")
# The carried Debian libraries for the fedps binaries alone (the redis folder for redis).
FEDPS_LD="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[[ -d "$LIB" ]] || FEDPS_LD=${LD_LIBRARY_PATH:-}
if [[ -n "${CONFIG:-}" ]]; then BASE=$CONFIG
elif [[ -f "configs/$PRESET.toml" ]]; then BASE=configs/$PRESET.toml
else BASE=configs/125m.toml; fi
[[ -f "$BASE" ]] || die "no base config $BASE"
REDIS_PORT=${REDIS_PORT:-$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')}

RUN_DIR=$(realpath -m "$RUN_DIR")
CFG=$W/config.toml

# ---- the run's config ---------------------------------------------------------------------
python3 - "$BASE" "$CFG" <<PY || die "writing the config"
import json, sys, tomllib
base, out = sys.argv[1], sys.argv[2]
c = tomllib.load(open(base, "rb"))
def put(key, v):
    t, k = key.split(".", 1)
    c.setdefault(t, {})[k] = v
put("run.id", "fed-$PRESET"); put("run.dir", "$RUN_DIR")
put("data.prepared", "$DATA")
if "$PRESET" != c.get("model", {}).get("preset"):
    c["model"] = {"preset": "$PRESET"}   # the base's overrides belong to its own preset
put("train.device", "$DEVICE")
put("ps.redis", "127.0.0.1:$REDIS_PORT"); put("ps.base_port", 0); put("ps.num_shards", int("$SHARDS"))
put("client.local_steps", int("$LOCAL_STEPS"))
if "${MICRO_BATCH:-}": put("train.micro_batch", int("${MICRO_BATCH:-0}"))
for kv in "${SET:-}".split():
    k, v = kv.split("=", 1)
    for conv in (int, float):
        try: v = conv(v); break
        except ValueError: pass
    else:
        v = {"true": True, "false": False}.get(v, v.strip('"'))
    put(k, v)
def val(v):
    if isinstance(v, bool): return "true" if v else "false"
    if isinstance(v, (int, float)): return repr(v)
    if isinstance(v, list): return "[" + ", ".join(val(x) for x in v) + "]"
    return json.dumps(v)
with open(out, "w") as f:
    f.write(f"# bench/gpu_federation.sh: from {base}\n")
    for t, kv in c.items():
        f.write(f"\n[{t}]\n")
        for k, v in kv.items(): f.write(f"{k} = {val(v)}\n")
PY
cp "$CFG" "$OUT/config.toml"
[[ "${DRY:-0}" == 1 ]] && { cat "$CFG"; rm -rf "$W"; exit 0; }
rm -rf "$RUN_DIR" "$RUN_DIR-data"; mkdir -p "$RUN_DIR"
stamp "preset $PRESET, $CLIENTS clients, $SHARDS shards, H $LOCAL_STEPS, micro-batch ${MICRO_BATCH:-base}, device $DEVICE, ${RUN_S} s; run folder $RUN_DIR"
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "fedps_rev: ${FEDPS_REV:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
  echo "preset: $PRESET"; echo "clients: $CLIENTS"; echo "shards: $SHARDS"; echo "local_steps: $LOCAL_STEPS"
  echo "micro_batch: ${MICRO_BATCH:-base}"; echo "device: $DEVICE"; echo "seconds_run: $RUN_S"; echo "set: ${SET:-}"
  echo "nproc: $(nproc)"; grep -m1 "model name" /proc/cpuinfo
  echo "mem_total_bytes: $(free -b | awk '/Mem:/ {print $2}')"
  echo "disk_avail_bytes: $(df -B1 --output=avail "$RUN_DIR" | tail -1)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
} >"$W/env.txt" 2>&1

# ---- memcpy reference, on the quiet machine -------------------------------------------
stamp "memcpy reference"
python3 bench/federation_summary.py memcpy --out "$W/memcpy.json"

# ---- processes and clean-up -----------------------------------------------------------
CLIENT_PIDS=(); SHARD_PIDS=(); REDIS_PID=""; SAMPLER_PID=""
stop_group() {  # stop_group PID...: one SIGTERM each (a second one means "exit now"), KILL after GRACE_S
  local p alive
  (($#)) || return 0
  for p in "$@"; do kill -TERM "$p" 2>/dev/null; done
  for _ in $(seq $((GRACE_S * 5))); do
    alive=0; for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    ((alive)) || break; sleep 0.2
  done
  for p in "$@"; do
    if kill -0 "$p" 2>/dev/null; then echo "[gpu_federation] pid $p outlived ${GRACE_S} s: SIGKILL"; kill -KILL "$p" 2>/dev/null; fi
    wait "$p" 2>/dev/null
  done
}
STOPPED=0
stop_all() {
  ((STOPPED)) && return; STOPPED=1
  [[ -n "$SAMPLER_PID" ]] && { kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; }
  stamp "stopping clients"; stop_group "${CLIENT_PIDS[@]}"
  stamp "stopping shards"; stop_group "${SHARD_PIDS[@]}"
  [[ -n "$REDIS_PID" ]] && { stamp "stopping redis"; stop_group "$REDIS_PID"; }
}
trap stop_all EXIT
trap 'exit 130' INT TERM

# ---- redis, partition, shards, clients ------------------------------------------------
LD_LIBRARY_PATH=$REDIS_LIB "$REDIS" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly yes \
  --appendfsync "${REDIS_FSYNC:-always}" --dir "$RUN_DIR" >"$W/redis.log" 2>&1 & REDIS_PID=$!
for _ in $(seq 100); do grep -q "Ready to accept" "$W/redis.log" 2>/dev/null && break; sleep 0.1; done
grep -q "Ready to accept" "$W/redis.log" || { cat "$W/redis.log"; die "redis-server did not start"; }

stamp "partition $DATA by domain over $CLIENTS clients"
LD_LIBRARY_PATH=$FEDPS_LD "$BIN/fedps-ctl" partition --data "$DATA" --clients "$CLIENTS" --by domain \
  --out "$RUN_DIR-data" --force >"$W/partition.log" 2>&1 || { cat "$W/partition.log"; die "partition failed"; }
cat "$W/partition.log"

for ((i = 0; i < SHARDS; i++)); do
  LD_LIBRARY_PATH=$FEDPS_LD "$BIN/fedps-shard" --config "$CFG" --shard "$i" --port 0 >"$W/shard-$i.log" 2>&1 &
  SHARD_PIDS+=($!)
done
for ((i = 0; i < SHARDS; i++)); do
  for _ in $(seq 600); do grep -q "listening on" "$W/shard-$i.log" && break; kill -0 "${SHARD_PIDS[$i]}" 2>/dev/null || break; sleep 0.2; done
  grep -q "listening on" "$W/shard-$i.log" || { tail -20 "$W/shard-$i.log"; die "shard $i did not start"; }
done
stamp "shards up ($(( $(date +%s) - T0 )) s)"

for ((k = 0; k < CLIENTS; k++)); do
  LD_LIBRARY_PATH=$FEDPS_LD "$BIN/fedps-client" --config "$CFG" --data "$RUN_DIR-data/client-$k" --name "site-$k" \
    --device "$DEVICE" >"$W/client-$k.log" 2>&1 &
  CLIENT_PIDS+=($!)
done
if [[ "${EVALUATE:-}" == 1 ]]; then
  LD_LIBRARY_PATH=$FEDPS_LD "$BIN/fedps-client" --config "$CFG" --evaluate --data "$DATA" --name evaluator \
    --device "$DEVICE" >"$W/evaluator.log" 2>&1 &
  CLIENT_PIDS+=($!)
fi
stamp "clients started"

# ---- samples: GPU utilisation + memory, host memory, run folder, our processes' RSS ----
SAMPLES=$W/samples.tsv
sampler() {
  local t0 gpu p r rss crss srss
  t0=$(date +%s.%N)
  echo -e "time\tt_s\tgpu_util_pct\tgpu_mem_mib\thost_used_bytes\trun_dir_bytes\tdisk_avail_bytes\tfedps_rss_bytes\tclients_rss_bytes\tshards_rss_bytes" >"$SAMPLES"
  while :; do
    gpu="NA\tNA"
    if command -v nvidia-smi >/dev/null; then
      gpu=$(nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -d ' ' | tr , '\t')
      [[ -n "$gpu" ]] || gpu="NA\tNA"
    fi
    rss=0; crss=0; srss=0
    for p in "${CLIENT_PIDS[@]}"; do
      r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null); crss=$((crss + ${r:-0} * 1024))
    done
    for p in "${SHARD_PIDS[@]}"; do
      r=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null); srss=$((srss + ${r:-0} * 1024))
    done
    r=$(awk '/^VmRSS:/ {print $2}' "/proc/$REDIS_PID/status" 2>/dev/null); rss=$((crss + srss + ${r:-0} * 1024))
    now=$(date +%s.%N)
    echo -e "$now\t$(awk "BEGIN {printf \"%.1f\", $now - $t0}")\t$gpu\t$(free -b | awk '/Mem:/ {print $3}')\t$(du -sb "$RUN_DIR" 2>/dev/null | cut -f1)\t$(df -B1 --output=avail "$RUN_DIR" | tail -1 | tr -d ' ')\t$rss\t$crss\t$srss" >>"$SAMPLES"
    sleep "$SAMPLE_S"
  done
}
sampler & SAMPLER_PID=$!

T_CLIENTS=$(date +%s)
while (( $(date +%s) - T_CLIENTS < RUN_S )); do
  if (( $(date +%s) - T0 >= MAX_TOTAL_S )); then
    stamp "MAX_TOTAL_S=$MAX_TOTAL_S reached after $(( $(date +%s) - T_CLIENTS )) s of federation: stopping early"; break
  fi
  sleep 5
  alive=0; for p in "${CLIENT_PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
  n=$(cat "$RUN_DIR"/clients/*/metrics.jsonl 2>/dev/null | grep -c '"event":"update"')
  last=$(tail -1 "$SAMPLES" 2>/dev/null | awk -F'\t' '{printf "GPU %s%% %s MiB, host %.1f GB, run folder %.2f GB", $3, $4, $5 / 1e9, $6 / 1e9}')
  echo "[gpu_federation] $(( $(date +%s) - T_CLIENTS )) s: $alive/${#CLIENT_PIDS[@]} clients alive, $n updates | $last"
  (( alive > 0 )) || { stamp "every client exited"; break; }
done
LD_LIBRARY_PATH=$FEDPS_LD timeout 30 "$BIN/fedps-ctl" status --config "$CFG" --json --events 2000 >"$W/status-final.json" 2>&1
stop_all
trap - EXIT

# ---- collect ----------------------------------------------------------------------------
stamp "collect"
for d in "$RUN_DIR"/clients/* "$RUN_DIR"/shard-*; do
  [[ -f "$d/metrics.jsonl" ]] && cp "$d/metrics.jsonl" "$W/metrics-$(basename "$d").jsonl"
done
du -ab "$RUN_DIR" 2>/dev/null | sort -n | tail -40 >"$W/run_dir_du.txt"
cp "$SAMPLES" "$OUT/samples.tsv"
python3 bench/federation_summary.py summarize "$W" --json "$OUT/summary.json" >"$OUT/summary.md"
cp "$OUT/summary.md" "$OUT/summary.json" "$W/"
for f in "$W"/*.log; do  # keep the bundle under the 16 MiB a returned file may have
  (( $(stat -c %s "$f") > 4000000 )) && { tail -c 4000000 "$f" >"$f.tail"; mv "$f.tail" "$f"; }
done
tar czf "$OUT/federation.tgz" -C "$W" .
cat "$OUT/summary.md"
stamp "done ($(( $(date +%s) - T0 )) s); $OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
rm -rf "$W"
