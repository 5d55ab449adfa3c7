#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan) into FUZZ_BUILD and
# runs each for SECONDS seconds on a copy of its committed seed corpus (tests/fuzz/corpus/).
# Exit 0: no crash, no sanitizer report; 1: a target failed (its reproducer is under
# FUZZ_BUILD/artifacts/<target>/); 77: no clang++-14 with libFuzzer (skipped).
#   bash tests/fuzz/run.sh [SECONDS]      # default 20 (the suite's smoke, `ctest -L fuzz`)
# Environment: FUZZ_BUILD [build-fuzz], FUZZ_CXX [clang++-14], FUZZ_JOBS [nproc]: runs the
# targets with -fork=FUZZ_JOBS when above 1.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECONDS_EACH=${1:-20}
BUILD=${FUZZ_BUILD:-build-fuzz}
CXX=${FUZZ_CXX:-clang++-14}
JOBS=${FUZZ_JOBS:-1}
command -v "$CXX" >/dev/null || { echo "[fuzz] no $CXX: skipped (apt-get install clang-14 libfuzzer-14-dev libclang-rt-14-dev)"; exit 77; }
mkdir -p "$BUILD"
cmake -S tests/fuzz -B "$BUILD" -G Ninja -DCMAKE_CXX_COMPILER="$CXX" > "$BUILD/configure.log" 2>&1 \
  || { tail -20 "$BUILD/configure.log"; exit 1; }
cmake --build "$BUILD" -j "$(nproc)" > "$BUILD/build.log" 2>&1 || { grep -E "error" "$BUILD/build.log" | head; exit 1; }
status=0
for t in frame config safetensors staged shard; do
  work=$BUILD/corpus/$t
  mkdir -p "$work" "$BUILD/artifacts/$t"
  cp -n tests/fuzz/corpus/$t/* "$work"/ 2>/dev/null || true
  fork=(); (( JOBS > 1 )) && fork=(-fork="$JOBS" -ignore_crashes=0)
  if "$BUILD/${t}_fuzz" "${fork[@]}" -max_total_time="$SECONDS_EACH" -max_len=65536 -rss_limit_mb=2048 \
       -artifact_prefix="$BUILD/artifacts/$t/" -print_final_stats=1 "$work" > "$BUILD/$t.log" 2>&1; then
    runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$BUILD/$t.log" | grep -oE '[0-9]+$' | tail -1)
    echo "[fuzz] $t: ${runs:-?} inputs in ${SECONDS_EACH} s, no crash ($(ls "$work" | wc -l) in its corpus)"
  else
    echo "[fuzz] $t FAILED:"; grep -E "ERROR|SUMMARY|runtime error|deadly|Test unit written" "$BUILD/$t.log" | head -20
    status=1
  fi
done
exit $status
