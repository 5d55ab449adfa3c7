#!/usr/bin/env bash
# The quality study (scripts/study.sh) on the GPU machine, on a prepared corpus (PREPARED:
# that of scripts/gpu_deps.sh, or one scripts/gpu_corpus.sh made there; no held-out
# domain), with the carried Debian libraries and redis-server.
#
# From the project root, with build-gpu-deps/{deps,redis,data} carried:
#   BUILD=1 bash bench/gpu_study.sh                 # build into BUILD_DIR, then the study
#   ONLY=iid4 BASELINES=none bash bench/gpu_study.sh   # only the federated run
#   ONLY=iid4 BASELINES=dp bash bench/gpu_study.sh     # then its baseline (same RUNS)
#
# Environment (defaults in brackets):
#   CONFIG     the study config [configs/125m-fed.toml]; its #@study lines name the variants
#   ONLY       variants to run, comma list [all of the config's]
#   BASELINES  dp, single, both (dp,single) or none [the config's]
#   BUILD      1: build fedps-shard fedps-client fedps-ctl first (bench/gpu_federation.sh)
#   BUILD_DIR  [/tmp/build-gpu]
#   RUNS       run folders [/tmp/fedps-study]; a run whose evaluation exists is kept
#   OUT        results [/tmp/fedps-study-out]: study.log, study.json, the eval JSON files
#   PREPARED   the prepared corpus [build-gpu-deps/data/corpus-v32k: 5.8M training tokens,
#              too few for 100M-token runs; scripts/gpu_corpus.sh makes a larger one there]
#   FEDPS_REV  the source revision, written to OUT/rev.txt
# The study's other settings: STUDY_<KEY> as in scripts/study.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CONFIG=${CONFIG:-configs/125m-fed.toml}
BUILD_DIR=${BUILD_DIR:-/tmp/build-gpu}
RUNS=${RUNS:-/tmp/fedps-study}
OUT=${OUT:-/tmp/fedps-study-out}
LIB=$ROOT/build-gpu-deps/deps/lib/x86_64-linux-gnu
REDIS_DIR=$ROOT/build-gpu-deps/redis
PREPARED=${PREPARED:-$ROOT/build-gpu-deps/data/corpus-v32k}
die() { echo "[gpu_study] error: $*" >&2; exit 1; }
mkdir -p "$OUT"
echo "${FEDPS_REV:-unknown} $(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$OUT/rev.txt"

if [[ "${BUILD:-0}" == 1 ]]; then
  BUILD=1 BUILD_DIR=$BUILD_DIR OUT=$OUT bash bench/gpu_federation.sh || die "build failed (see $OUT/build.log)"
fi
for b in fedps-ctl fedps-shard fedps-client; do [[ -x "$BUILD_DIR/bin/$b" ]] || die "$BUILD_DIR/bin/$b is not built (BUILD=1)"; done
[[ -f "$PREPARED/manifest.json" ]] || die "no prepared corpus $PREPARED (scripts/gpu_deps.sh)"
[[ -x "$REDIS_DIR/redis-server" ]] || die "no $REDIS_DIR/redis-server (scripts/gpu_deps.sh)"

# Wrappers that give the fedps binaries the carried Debian libraries and redis its own,
# so that the machine's python3 keeps its own libraries.
WRAP=$(mktemp -d /tmp/fedps-study-bin.XXXXXX)
for b in fedps-ctl fedps-shard fedps-client; do
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$LIB" "$BUILD_DIR/bin/$b" > "$WRAP/$b"
done
for b in redis-server redis-cli; do
  printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$REDIS_DIR" "$REDIS_DIR/$b" > "$WRAP/$b"
done
chmod +x "$WRAP"/*
export PATH=$WRAP:$PATH

# scripts/study.sh's data layout: DATA/all (the prepared corpus) and DATA/corpus/corpus.json
# (its training domains; this corpus has no held-out domain).
DATA=/tmp/fedps-study-data
mkdir -p "$DATA/corpus"
ln -sfn "$PREPARED" "$DATA/all"
python3 - "$PREPARED/manifest.json" "$DATA/corpus/corpus.json" <<'EOF'
import json, sys
domains = [d["name"] for d in json.load(open(sys.argv[1]))["domains"]]
json.dump({"training_domains": domains, "held_out_domain": None}, open(sys.argv[2], "w"))
EOF

args=(--config "$CONFIG" --runs "$RUNS" --data "$DATA" --bin "$WRAP")
[[ -n "${ONLY:-}" ]] && args+=(--only "$ONLY")
[[ -n "${BASELINES:-}" ]] && export STUDY_BASELINES=$BASELINES
bash scripts/study.sh "${args[@]}" 2>&1 | tee "$OUT/study.log"
rc=${PIPESTATUS[0]}
cp "$RUNS/study.json" "$OUT/" 2>/dev/null
for f in "$RUNS"/*/eval-*.json "$RUNS"/*/federated.json "$RUNS"/*/centralised.json; do
  [[ -f "$f" ]] && cp "$f" "$OUT/$(basename "$(dirname "$f")")-$(basename "$f")"
done
# The clients' metrics (per-update loss, tokens, staleness), the runs' logs and the
# baselines' training logs, for the report.
(cd "$RUNS" && tar czf "$OUT/metrics.tgz" $(ls -d */federated/clients/*/metrics.jsonl */centralised/metrics.jsonl */logs */train.log 2>/dev/null))
rm -rf "$WRAP"
exit "$rc"
