#!/usr/bin/env bash
# What runs on the lent GPU machine (Ubuntu 24.04, CUDA 13, PyTorch + LibTorch, g++ 13,
# CMake, ninja; no apt, no network), from the repository root, with build-gpu-deps/deps and
# build-gpu-deps/data carried (made here by scripts/gpu_deps.sh):
#
#   bash scripts/gpu_train.sh [PHASES]       PHASES: comma list of env,build,train,hf,summary
#                                            (default: all of them, in that order)
#
# build:   configure (only carried Debian libraries + the machine's LibTorch) and build
#          fedps-ctl into build-gpu/ (kept between calls on a warm machine)
# train:   fedps-ctl train --config configs/125m.toml (TRAIN_STEPS overrides its steps)
# hf:      bench/hf_llama_baseline.py, same shape, batch and sequence (HF_MODES, default
#          eager,compile), on the same card in the same call
# summary: the loss curve and the throughput table from the two runs' files
#
# Everything goes to $OUT (default /tmp/fedps-gpu-out): env.txt build.log train.log
# metrics.jsonl hf.log hf.json summary.md. FEDPS_REV names the source revision (the device
# copy has no .git). Each phase has its own time limit so the whole stays inside one call.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${OUT:-/tmp/fedps-gpu-out}
mkdir -p "$OUT"
PHASES=${1:-env,build,train,hf,summary}
DEPS=$ROOT/build-gpu-deps/deps
LIB=$DEPS/lib/x86_64-linux-gnu
BUILD=${BUILD:-$ROOT/build-gpu}
CONFIG=${CONFIG:-configs/125m.toml}
RUN_DIR=${RUN_DIR:-/tmp/fedps-run-125m}
JOBS=${JOBS:-$(nproc)}
export PATH=$DEPS/bin:/usr/local/cuda/bin:$PATH
# Never NVLink multicast (device/KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONUNBUFFERED=1
has() { [[ ",$PHASES," == *",$1,"* ]]; }
stamp() { echo "[gpu_train] $(date -u +%H:%M:%S) $*"; }
T0=$(date +%s)
status=0

if has env; then
  {
    echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "fedps_rev: ${FEDPS_REV:-unknown}"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv,noheader 2>&1
    python3 -c 'import torch,transformers;print("torch",torch.__version__,"cuda",torch.version.cuda,"cudnn",torch.backends.cudnn.version(),"transformers",transformers.__version__,"cxx11abi",torch.compiled_with_cxx11_abi())' 2>&1
    echo "g++: $(g++ --version | head -1)"; echo "cmake: $(cmake --version | head -1)"; echo "ninja: $(ninja --version)"
    echo "nvcc: $(nvcc --version 2>/dev/null | tail -1)"; echo "nproc: $(nproc)"
    grep -m1 "model name" /proc/cpuinfo
  } >"$OUT/env.txt" 2>&1
  cat "$OUT/env.txt"
fi

if has build; then
  stamp "configure + build fedps-ctl"
  TORCH_PREFIX=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
  (
    set -e
    cmake -S . -B "$BUILD" -G Ninja -Wno-dev \
      -DFEDPS_BUILD_TESTS=OFF -DFEDPS_BUILD_BENCH=OFF \
      -DCMAKE_PREFIX_PATH="$DEPS;$TORCH_PREFIX" \
      -DOPENSSL_ROOT_DIR="$DEPS" \
      -DPKG_CONFIG_EXECUTABLE="$DEPS/bin/pkg-config" \
      -DTHRIFT_EXECUTABLE="$DEPS/bin/thrift" \
      -DCMAKE_CUDA_COMPILER="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
    time timeout 420 cmake --build "$BUILD" --target fedps-ctl -j "$JOBS"
  ) >"$OUT/build.log" 2>&1
  rc=$?
  grep -E "Found|LibTorch|error|Error|FAILED" "$OUT/build.log" | head -40
  tail -5 "$OUT/build.log"
  stamp "build rc=$rc ($(( $(date +%s) - T0 )) s so far)"
  [[ $rc -eq 0 ]] || exit $rc
fi

if has train; then
  stamp "train $CONFIG"
  rm -rf "$RUN_DIR"
  extra=(); [[ -n "${TRAIN_STEPS:-}" ]] && extra=(--steps "$TRAIN_STEPS")
  # The carried libraries for fedps-ctl alone (glog's libunwind, gflags, ...).
  LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout 240 \
    "$BUILD/bin/fedps-ctl" train --config "$CONFIG" --device cuda --run-dir "$RUN_DIR" "${extra[@]}" \
    2>&1 | tee "$OUT/train.log"
  rc=${PIPESTATUS[0]}
  cp "$RUN_DIR/metrics.jsonl" "$OUT/" 2>/dev/null
  stamp "train rc=$rc ($(( $(date +%s) - T0 )) s so far)"
  [[ $rc -eq 0 ]] || status=$rc
fi

if has hf; then
  stamp "Hugging Face baseline"
  timeout 300 python3 bench/hf_llama_baseline.py --preset 125m --vocab 32000 --seq 2048 --batch 16 \
    --warmup 10 --steps 30 --modes "${HF_MODES:-eager,compile}" --json "$OUT/hf.json" >"$OUT/hf.log" 2>&1
  rc=$?
  grep -E "^\[hf\]" "$OUT/hf.log"; [[ $rc -eq 0 ]] || tail -20 "$OUT/hf.log"
  stamp "hf rc=$rc ($(( $(date +%s) - T0 )) s so far)"
  [[ $rc -eq 0 ]] || status=$rc
fi

if has summary; then
  python3 - "$OUT" "$CONFIG" >"$OUT/summary.md" <<'PY'
import json, os, statistics, sys
out, config = sys.argv[1], sys.argv[2]
def load_jsonl(p):
    try:
        return [json.loads(l) for l in open(p) if l.strip()]
    except OSError:
        return []
recs = load_jsonl(os.path.join(out, "metrics.jsonl"))
start = next((r for r in recs if r.get("event") == "start"), {})
train = [r for r in recs if r.get("event") == "train"]
evals = [r for r in recs if r.get("event") == "eval"]
print(f"# fedps 125m on the GPU ({config})\n")
if start:
    print(f"model: {start.get('parameters', 0):,} parameters, device {start.get('device')}\n")
ev = {r["step"]: r for r in evals}
steps = sorted(set([r["step"] for r in train] + list(ev)))
tr = {r["step"]: r for r in train}
print("| step | train loss (mean of last window) | val loss | val ppl | tokens/s (window) | MFU (fedps formula) |")
print("|---:|---:|---:|---:|---:|---:|")
for s in steps:
    t, e = tr.get(s), ev.get(s)
    print(f"| {s} | {t['loss']:.4f} |" if t else f"| {s} | |", end="")
    print(f" {e['loss']:.4f} | {e.get('perplexity', float('nan')):.1f} |" if e else " | |", end="")
    print(f" {t['tokens_per_s']:,.0f} | {t['mfu']:.3f} |" if t else " | |")
if evals:
    last = evals[-1]
    doms = ", ".join(f"{k} {v['loss']:.4f} (ppl {v['perplexity']:.1f}, {v['tokens']:,} tokens)"
                     for k, v in last.get("domains", {}).items())
    print(f"\nlast validation by domain: {doms}\n")
# Throughput: windows after the first (the first holds CUDA/cuBLAS warm-up).
fed = None
if len(train) > 2:
    tps = [r["tokens_per_s"] for r in train[1:]]
    mfu = [r["mfu"] for r in train[1:]]
    fed = (statistics.median(tps), statistics.median(mfu), min(tps), max(tps), len(tps))
try:
    hf = json.load(open(os.path.join(out, "hf.json")))
except OSError:
    hf = None
print("| trainer | tokens/s | MFU (fedps formula) | MFU (all weights) | ratio to HF eager |")
print("|---|---:|---:|---:|---:|")
eager = None
if hf:
    eager = next((r["tokens_per_s"] for r in hf["results"] if r.get("mode") == "eager" and "error" not in r), None)
if fed:
    # fedps formula excludes the input embedding; "all weights" adds 6 x vocab x d_model.
    f_fedps = None
    if hf:
        r0 = next((r for r in hf["results"] if "error" not in r), None)
        if r0:
            f_fedps, f_all = r0["flops_per_token_fedps"], r0["flops_per_token_all"]
    all_mfu = f"{fed[0] * f_all / 989e12:.3f}" if f_fedps else "?"
    ratio = f"{fed[0] / eager:.2f}" if eager else "?"
    print(f"| fedps-ctl train (median of {fed[4]} log windows, min {fed[2]:,.0f}, max {fed[3]:,.0f}) | {fed[0]:,.0f} | {fed[1]:.3f} | {all_mfu} | {ratio} |")
if hf:
    for r in hf["results"]:
        if "error" in r:
            print(f"| HF {r['mode']} | failed: {r['error'][:80]} | | | |")
        else:
            ratio = f"{r['tokens_per_s'] / eager:.2f}" if eager else "?"
            print(f"| HF LlamaForCausalLM {r['mode']} (median of {r['timed_steps']} steps) | {r['tokens_per_s']:,.0f} | {r['mfu_fedps']:.3f} | {r['mfu_all']:.3f} | {ratio} |")
    print(f"\nHF: {json.dumps(hf['info'])}")
PY
  cat "$OUT/summary.md"
fi
stamp "done, status $status, $(( $(date +%s) - T0 )) s"
exit $status
