#!/usr/bin/env bash
# The demo (first version: the single-site pipeline). Builds a small two-domain
# corpus from text that every Debian/Ubuntu machine has (the Python standard
# library and the licence texts under /usr/share/common-licenses), trains a
# tokenizer, prepares token shards, trains the `demo` config, evaluates, exports a
# Hugging Face folder and samples text. Everything lands in runs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-build/bin}
OUT=${OUT:-runs/demo}
DATA=${DATA:-data/demo}
mkdir -p "$OUT" cache/demo-corpus

echo "== corpus: Python standard library + licence texts"
PYLIB=$(ls -d /usr/lib/python3.*/ 2>/dev/null | head -1)
if [[ -z "$PYLIB" ]]; then echo "no /usr/lib/python3.* found (install python3)" >&2; exit 1; fi
rm -rf cache/demo-corpus/code && mkdir -p cache/demo-corpus/code
find "$PYLIB" -maxdepth 1 -name '*.py' -size -200k | sort | head -120 | xargs -I{} cp {} cache/demo-corpus/code/
rm -rf cache/demo-corpus/licenses && cp -r /usr/share/common-licenses cache/demo-corpus/licenses
for f in cache/demo-corpus/licenses/*; do [[ -f "$f" ]] && mv "$f" "$f.txt"; done
for f in cache/demo-corpus/code/*.py; do mv "$f" "$f.txt"; done

echo "== tokenizer + token shards"
"$BIN"/fedps-ctl prepare --input code=cache/demo-corpus/code --input licenses=cache/demo-corpus/licenses \
  --vocab-size 2048 --out "$DATA" --force

echo "== centralised training (configs/demo.toml)"
rm -rf "$OUT"
"$BIN"/fedps-ctl train --config configs/demo.toml --run-dir "$OUT"

echo "== evaluation, export, samples"
"$BIN"/fedps-ctl eval --checkpoint "$OUT/checkpoints" --data "$DATA" --batches 0
"$BIN"/fedps-ctl export --checkpoint "$OUT/checkpoints" --out "$OUT/hf" --force
"$BIN"/fedps-ctl generate --checkpoint "$OUT/checkpoints" --prompt "def " --prompt "The licensee" -n 60 | tee "$OUT/samples.txt"
echo "== done: $OUT (metrics.jsonl, checkpoints/, hf/, samples.txt)"
