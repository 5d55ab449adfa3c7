#!/usr/bin/env bash
# The local trainer's speed and GPU memory under config variants, on the GPU machine, one
# `fedps-ctl train` run per variant, back to back in one call: median tokens/s of the log
# windows after the first, the final training loss, and the peak GPU memory in use while it
# ran (nvidia-smi memory.used sampled every 0.5 s: the whole card, the only process on it).
#
# From the project root, with build-gpu-deps/{deps,data} carried (scripts/gpu_deps.sh):
#   BUILD=1 VARIANTS="base;train.loss_chunk_rows=4096" bash bench/gpu_trainer_variants.sh
#
# Environment (defaults in brackets):
#   CONFIG     base config [configs/125m.toml]
#   VARIANTS   ';'-separated variants, each a space-separated list of section.key=value
#              ("base" = the config unchanged) [base]
#   STEPS      optimizer steps per run [60]; SET keys for every variant [none]
#   BUILD      1: build fedps-ctl first (bench/gpu_federation.sh's build) [0]
#   BUILD_DIR  [/tmp/build-gpu]; OUT results [/tmp/fedps-variants-out]: variants.md,
#              variants.json, one train-<i>.log and metrics-<i>.jsonl per variant
#   FEDPS_REV  the source revision, named in variants.md
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CONFIG=${CONFIG:-configs/125m.toml}
VARIANTS=${VARIANTS:-base}
STEPS=${STEPS:-60}
BUILD_DIR=${BUILD_DIR:-/tmp/build-gpu}
OUT=${OUT:-/tmp/fedps-variants-out}
LIB=$ROOT/build-gpu-deps/deps/lib/x86_64-linux-gnu
mkdir -p "$OUT"
if [[ "${BUILD:-0}" == 1 ]]; then
  BUILD=1 BUILD_DIR=$BUILD_DIR OUT=$OUT bash bench/gpu_federation.sh || exit 1
fi
CTL=$BUILD_DIR/bin/fedps-ctl
[[ -x "$CTL" ]] || { echo "[variants] no $CTL (BUILD=1)" >&2; exit 1; }

IFS=';' read -r -a LIST <<< "$VARIANTS"
i=0
for v in "${LIST[@]}"; do
  cfg=/tmp/fedps-variant-$i.toml run=/tmp/fedps-variant-run-$i
  sets="data.prepared=$ROOT/build-gpu-deps/data/corpus-v32k train.eval_every=0 train.checkpoint_every=0 ${SET:-}"
  [[ "$v" != base ]] && sets="$sets $v"
  python3 - "$CONFIG" "$cfg" $sets <<'PY' || exit 1
import json, sys, tomllib
src, dst, sets = sys.argv[1], sys.argv[2], sys.argv[3:]
c = tomllib.load(open(src, "rb"))
for kv in sets:
    k, v = kv.split("=", 1)
    t, name = k.split(".", 1)
    for conv in (int, float):
        try: v = conv(v); break
        except ValueError: pass
    else:
        v = {"true": True, "false": False}.get(v, v)
    c.setdefault(t, {})[name] = v
def val(v):
    if isinstance(v, bool): return "true" if v else "false"
    if isinstance(v, (int, float)): return repr(v)
    if isinstance(v, list): return "[" + ", ".join(val(x) for x in v) + "]"
    return json.dumps(v)
with open(dst, "w") as f:
    for t, kv in c.items():
        f.write(f"[{t}]\n" + "".join(f"{k} = {val(x)}\n" for k, x in kv.items()) + "\n")
PY
  rm -rf "$run"
  echo "[variants] $(date -u +%H:%M:%S) variant $i: $v"
  ( while sleep 0.5; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; done ) > "$OUT/mem-$i.txt" 2>/dev/null &
  sampler=$!
  LD_LIBRARY_PATH=$LIB timeout 400 "$CTL" train --config "$cfg" --device cuda --run-dir "$run" --steps "$STEPS" \
    > "$OUT/train-$i.log" 2>&1
  echo "rc $?" >> "$OUT/train-$i.log"
  kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
  cp "$run/metrics.jsonl" "$OUT/metrics-$i.jsonl" 2>/dev/null
  tail -2 "$OUT/train-$i.log"
  i=$((i + 1))
done

python3 - "$OUT" "$VARIANTS" "${FEDPS_REV:-unknown}" "$CONFIG" "$STEPS" <<'PY'
import json, os, statistics, sys
out, variants, rev, config, steps = sys.argv[1], sys.argv[2].split(";"), sys.argv[3], sys.argv[4], sys.argv[5]
rows = []
for i, v in enumerate(variants):
    recs = []
    try: recs = [json.loads(l) for l in open(f"{out}/metrics-{i}.jsonl") if l.strip()]
    except OSError: pass
    train = [r for r in recs if r.get("event") == "train"]
    mem = []
    try: mem = [int(x) for x in open(f"{out}/mem-{i}.txt").read().split() if x.isdigit()]
    except OSError: pass
    tps = [r["tokens_per_s"] for r in train[1:]]
    rows.append({"variant": v, "windows": len(tps),
                 "tokens_per_s": statistics.median(tps) if tps else None,
                 "mfu": statistics.median([r["mfu"] for r in train[1:]]) if tps else None,
                 "final_loss": train[-1]["loss"] if train else None,
                 "peak_gpu_mib": max(mem) if mem else None})
json.dump(rows, open(f"{out}/variants.json", "w"), indent=1)
with open(f"{out}/variants.md", "w") as f:
    f.write(f"fedps-ctl train, {config}, {steps} steps per variant, rev {rev}\n\n")
    f.write("| variant | tokens/s (median) | MFU | final train loss | peak GPU memory (MiB) |\n|---|---:|---:|---:|---:|\n")
    for r in rows:
        fmt = lambda x, p: "-" if x is None else f"{x:,.{p}f}"
        f.write(f"| {r['variant']} | {fmt(r['tokens_per_s'], 0)} | {fmt(r['mfu'], 3)} | {fmt(r['final_loss'], 4)} | {fmt(r['peak_gpu_mib'], 0)} |\n")
print(open(f"{out}/variants.md").read())
PY
