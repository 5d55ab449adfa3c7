#!/usr/bin/env bash
# Builds, on the GPU machine itself, a prepared corpus large enough for the learning-quality
# study at 125m (>= 100M distinct training tokens): that machine has no network and the
# carried folders are limited to 64 MiB, but it holds hundreds of MB of source text of its
# own (measured 2026-12-04: 416 MB of Python, 361 MB of C/C++ headers). Four domains, one
# per client of a non-IID study:
#   torch   the .py files of the PyTorch package (site-packages/torch)
#   python  the other .py files of site-packages and the Python standard library
#   cpp     C, C++ and CUDA headers (.h .hpp .cuh) under /usr/include, /usr/local and
#           site-packages
#   docs    .md, .rst and .txt files of 2 KB or more under /usr/share and site-packages
# Files are taken in sorted path order, one document each, until a domain holds MAX_MB;
# identical files (same sha256) are taken once. Then `fedps-ctl prepare` trains a
# VOCAB-piece tokenizer on a sample and writes the token shards. Measured on the H200
# machine (2026-12-04, MAX_MB=100, TOKENIZER_MB=30): 76.3M training tokens (torch 11.0M,
# python 29.2M, cpp 29.8M, docs 6.2M: torch and docs hold less than the cap there), 4.7M
# validation, in 120 s; MAX_MB=300 gives python and cpp up to about 3x that.
#
#   bash scripts/gpu_corpus.sh                  # on the GPU machine, after BUILD=1 bench/gpu_federation.sh
#   CTL=build/bin/fedps-ctl MAX_MB=2 DEST=/tmp/c bash scripts/gpu_corpus.sh   # a small one anywhere
#
# Environment (defaults in brackets): CTL the fedps-ctl [/tmp/build-gpu/bin/fedps-ctl, run
# with the carried libraries when build-gpu-deps/deps exists]; MAX_MB per domain [300];
# VOCAB [32000]; TOKENIZER_MB text sampled for the tokenizer [60]; STAGE the gathered text
# [/tmp/fedps-corpus-text]; DEST the prepared folder [/tmp/fedps-corpus-big].
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
CTL=${CTL:-/tmp/build-gpu/bin/fedps-ctl}
MAX_MB=${MAX_MB:-300}
VOCAB=${VOCAB:-32000}
TOKENIZER_MB=${TOKENIZER_MB:-60}
STAGE=${STAGE:-/tmp/fedps-corpus-text}
DEST=${DEST:-/tmp/fedps-corpus-big}
LIB=$ROOT/build-gpu-deps/deps/lib/x86_64-linux-gnu
die() { echo "[gpu_corpus] error: $*" >&2; exit 1; }
[[ -x "$CTL" ]] || die "no fedps-ctl at $CTL (CTL=...)"
SITE=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
STDLIB=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')
[[ -d "$SITE" ]] || die "no site-packages ($SITE)"

rm -rf "$STAGE"; mkdir -p "$STAGE"
# gather DOMAIN < list of files (NUL-separated): copies them as .txt until MAX_MB.
GATHER_PY=$(cat <<'EOF'
import hashlib, os, sys
out, cap = sys.argv[1], int(sys.argv[2]) * 1_000_000
os.makedirs(out, exist_ok=True)
paths = sorted(p for p in sys.stdin.buffer.read().decode("utf-8", "surrogateescape").split("\0") if p)
seen, total, n = set(), 0, 0
for p in paths:
    try:
        data = open(p, "rb").read()
        data.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        continue
    h = hashlib.sha256(data).digest()
    if h in seen or not data.strip():
        continue
    seen.add(h)
    if total + len(data) > cap:
        continue
    with open(os.path.join(out, f"{n:07d}.txt"), "wb") as f:
        f.write(data)
    total += len(data); n += 1
print(f"[gpu_corpus] {os.path.basename(out)}: {n} files, {total / 1e6:.1f} MB")
EOF
)
gather() { python3 -c "$GATHER_PY" "$STAGE/$1" "$MAX_MB"; }
# (find meets unreadable folders on some machines: what it lists is enough.)
{ find "$SITE/torch" -name '*.py' -type f -print0 2>/dev/null || true; } | gather torch
{ find "$SITE" -name '*.py' -type f ! -path "$SITE/torch/*" -print0 2>/dev/null || true
  find "$STDLIB" -name '*.py' -type f ! -path '*/site-packages/*' -print0 2>/dev/null || true; } | gather python
{ find /usr/include /usr/local "$SITE" \( -name '*.h' -o -name '*.hpp' -o -name '*.cuh' \) -type f -print0 2>/dev/null || true; } | gather cpp
{ find /usr/share "$SITE" \( -name '*.md' -o -name '*.rst' -o -name '*.txt' \) -type f -size +2k -print0 2>/dev/null || true; } | gather docs

run_ctl() { if [[ -d "$LIB" ]]; then LD_LIBRARY_PATH=$LIB "$CTL" "$@"; else "$CTL" "$@"; fi; }
echo "[gpu_corpus] prepare: $VOCAB-piece tokenizer on ${TOKENIZER_MB} MB, then the token shards into $DEST"
run_ctl prepare --input torch="$STAGE/torch" python="$STAGE/python" cpp="$STAGE/cpp" docs="$STAGE/docs" \
  --vocab-size "$VOCAB" --max-bytes $((TOKENIZER_MB * 1000000)) --out "$DEST" --force
python3 - "$DEST/manifest.json" <<'EOF'
import json, sys
m = json.load(open(sys.argv[1]))
for d in m["domains"]:
    print(f"[gpu_corpus] {d['name']}: {d['train']['tokens']:,} training tokens, {d['val']['tokens']:,} validation")
print(f"[gpu_corpus] all: {sum(d['train']['tokens'] for d in m['domains']):,} training tokens")
EOF
