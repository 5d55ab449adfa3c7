#!/usr/bin/env bash
# Collects, on a Debian 12 machine, what the lent GPU machine (Ubuntu 24.04, no apt, no
# network) lacks to build and run fedps-ctl, into build-gpu-deps/ (ignored by /build*/):
#
#   build-gpu-deps/deps/   Debian 12 headers, .so files (with their symlinks), CMake and
#                          pkg-config files (made relocatable), the thrift compiler, and
#                          only the Boost headers that Thrift's headers include
#   build-gpu-deps/data/   a prepared corpus (32000-piece tokenizer + token shards):
#                          Python 3.11 standard library (domain code), Python 3.11 docs
#                          and /usr/share/common-licenses (domain docs; the licences alone
#                          are too few tokens for a validation split of 2048-token windows)
#   build-gpu-deps/redis/  this machine's Debian redis-server (redis-check-rdb copied under
#                          the name redis-server, which it runs as), redis-cli, liblzf.so.1
#                          and libjemalloc.so.2 (Ubuntu 24.04 has their other libraries);
#                          run with LD_LIBRARY_PATH=build-gpu-deps/redis (bench/gpu_federation.sh)
#   build-gpu-deps/stage/  downloads and unpacked packages (not carried)
#
# Pass build-gpu-deps/deps and build-gpu-deps/data in `carry` (and build-gpu-deps/redis for
# bench/gpu_federation.sh); scripts/gpu_train.sh uses them.
# Idempotent: a second run downloads and rebuilds nothing (delete a folder to redo it).
# Needs: apt-get (downloads only, no root needed), dpkg-deb, g++, and a local fedps-ctl
# for the data (FEDPS_CTL, default build/bin/fedps-ctl).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TOP=$ROOT/build-gpu-deps
STAGE=$TOP/stage
DEPS=$TOP/deps
DATA=$TOP/data/corpus-v32k
FEDPS_CTL=${FEDPS_CTL:-$ROOT/build/bin/fedps-ctl}
ARCH=x86_64-linux-gnu

# Debian 12 packages: -dev packages for headers/.so symlinks/CMake files, runtime packages
# for the real .so files, libboost1.74-dev for the (filtered) Boost headers and CMake config.
# zlib1g-dev without zlib1g: fedps links the machine's own libz.so.1 (Ubuntu 24.04 has it;
# zlib keeps its ABI). libxxhash-dev without libxxhash0: fedps uses xxHash header-only.
PKGS=(libthrift-dev libthrift-0.17.0 thrift-compiler
      libboost1.74-dev
      libhiredis-dev libhiredis0.14
      libzstd-dev libzstd1 zlib1g-dev libxxhash-dev
      libgoogle-glog-dev libgoogle-glog0v6 libgflags-dev libgflags2.2 libunwind-dev libunwind8
      libcli11-dev libtomlplusplus-dev libtomlplusplus3 nlohmann-json3-dev
      libsentencepiece-dev libsentencepiece0
      libssl-dev libssl3
      pkgconf-bin libpkgconf3
      libgtest-dev libgmock-dev)

# ---- 1. download and unpack ------------------------------------------------------------
mkdir -p "$STAGE/debs" "$STAGE/root"
(
  cd "$STAGE/debs"
  missing=()
  for p in "${PKGS[@]}"; do ls "${p}"_*.deb >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "[gpu_deps] apt-get download ${missing[*]}"
    apt-get download -q "${missing[@]}" 2>&1 | grep -v "^W: Download is performed unsandboxed" || true
  fi
  for p in "${PKGS[@]}"; do ls "${p}"_*.deb >/dev/null 2>&1 || { echo "[gpu_deps] missing ${p}.deb" >&2; exit 1; }; done
)
# The stamps below hold the package list, so a changed list unpacks and collects again.
if [[ "$(cat "$STAGE/root/.unpacked" 2>/dev/null)" != "${PKGS[*]}" ]]; then
  for f in "$STAGE"/debs/*.deb; do dpkg-deb -x "$f" "$STAGE/root"; done
  echo "${PKGS[*]}" >"$STAGE/root/.unpacked"
fi
R=$STAGE/root/usr

# ---- 2. the carried dependency folder ----------------------------------------------------
if [[ "$(cat "$DEPS/.complete" 2>/dev/null)" != "${PKGS[*]}" ]]; then
  rm -rf "$DEPS"
  mkdir -p "$DEPS/include" "$DEPS/lib/$ARCH" "$DEPS/bin" "$DEPS/share"
  # Headers, everything but Boost (filtered below).
  (cd "$R/include" && tar cf - --exclude=./boost .) | (cd "$DEPS/include" && tar xf -)
  # Shared libraries (real files and symlinks; no static archives).
  for d in "$R/lib/$ARCH" "$R/lib"; do
    find "$d" -maxdepth 1 \( -name '*.so' -o -name '*.so.*' \) \( -type f -o -type l \) \
      -exec cp -a {} "$DEPS/lib/$ARCH/" \;
  done
  # zlib1g-dev's libz.so points at Debian's absolute /lib/<arch>/libz.so.1.2.13: point it at
  # the soname instead, which the GPU machine's own zlib provides.
  ln -sfn "/lib/$ARCH/libz.so.1" "$DEPS/lib/$ARCH/libz.so"
  # Drop the symlinks that point at nothing: Boost's runtime libraries (we ship no compiled
  # Boost libraries; Thrift needs only headers) and libxxhash.so (used header-only).
  find "$DEPS/lib/$ARCH" -xtype l -delete
  # CMake package files (they locate their prefix relative to themselves).
  mkdir -p "$DEPS/lib/$ARCH/cmake" "$DEPS/share/cmake"
  cp -a "$R/lib/$ARCH/cmake/." "$DEPS/lib/$ARCH/cmake/"
  [[ -d "$R/share/cmake" ]] && cp -a "$R/share/cmake/." "$DEPS/share/cmake/"
  [[ -d "$R/lib/cmake" ]] && { mkdir -p "$DEPS/lib/cmake"; cp -a "$R/lib/cmake/." "$DEPS/lib/cmake/"; }
  # Static archives only where a CMake target file names them (its import check wants
  # every file it lists to exist): zstd's, gflags's, and GoogleTest's (for the gpu-labelled
  # tests, bench/gpu_federation.sh GPU_TESTS=1).
  grep -rhoE '_IMPORT_PREFIX\}/lib/'"$ARCH"'/[A-Za-z0-9_.+-]+\.a' "$DEPS/lib/$ARCH/cmake" | sort -u |
    sed 's|.*/||' | while read -r a; do cp -a "$R/lib/$ARCH/$a" "$DEPS/lib/$ARCH/"; done
  # Keep only the Boost CMake configs that header-only use needs.
  find "$DEPS/lib/$ARCH/cmake" -maxdepth 1 -name 'boost_*' ! -name 'boost_headers-*' -exec rm -rf {} +
  # glog's FindUnwind module, and its config's hard-coded module path made relative.
  mkdir -p "$DEPS/share/glog"; cp -a "$R/share/glog/cmake" "$DEPS/share/glog/"
  sed -i 's|set (glog_MODULE_PATH "/usr/share/glog/cmake")|set (glog_MODULE_PATH "${CMAKE_CURRENT_LIST_DIR}/../../../../share/glog/cmake")|' \
    "$DEPS/lib/$ARCH/cmake/glog/glog-modules.cmake"
  grep -q 'CMAKE_CURRENT_LIST_DIR}/../../../../share/glog' "$DEPS/lib/$ARCH/cmake/glog/glog-modules.cmake"
  # pkg-config files, relocatable through ${pcfiledir}; hiredis's libdir fixed (its .so is
  # under lib/<arch>, its .pc says lib/).
  mkdir -p "$DEPS/lib/$ARCH/pkgconfig"
  for pc in "$R"/lib/$ARCH/pkgconfig/*.pc "$R"/lib/pkgconfig/*.pc "$R"/share/pkgconfig/*.pc; do
    [[ -f "$pc" ]] || continue
    name=$(basename "$pc")
    sed -e 's|^prefix=.*|prefix=${pcfiledir}/../../..|' \
        -e 's|^libdir=.*|libdir=${prefix}/lib/'"$ARCH"'|' \
        -e 's|^includedir=/usr/include|includedir=${prefix}/include|' \
        "$pc" >"$DEPS/lib/$ARCH/pkgconfig/$name"
  done
  # The thrift compiler (needs only libstdc++) for the build-time code generation of ps/.
  cp -a "$R/bin/thrift" "$DEPS/bin/"
  # pkg-config (pkgconf; the GPU image may lack one), run through a wrapper that finds its
  # libpkgconf and reads only the carried .pc files. LD_LIBRARY_PATH is set for it alone:
  # the compiler must keep the machine's own libraries.
  cp -a "$R/bin/pkgconf" "$DEPS/bin/"
  cat >"$DEPS/bin/pkg-config" <<'WRAP'
#!/bin/sh
d=$(cd "$(dirname "$0")/.." && pwd)
PKG_CONFIG_LIBDIR="$d/lib/x86_64-linux-gnu/pkgconfig" LD_LIBRARY_PATH="$d/lib/x86_64-linux-gnu" exec "$d/bin/pkgconf" "$@"
WRAP
  chmod +x "$DEPS/bin/pkg-config"
  # Boost: only the headers that Thrift's headers (all of them, so any fedps RPC code
  # builds) pull in, listed by the preprocessor. -MG tolerates optional third-party
  # headers (libevent, zlib, Qt) that are not carried.
  tu=$STAGE/all_thrift.cc
  (cd "$R/include" && find thrift -name '*.h' ! -path '*qt*' ! -name 'TZlib*' ! -name 'TEvhttp*' \
     ! -name 'TNonblocking*' | sort | sed 's|.*|#include <&>|') >"$tu"
  g++ -std=c++20 -M -MG -I"$R/include" "$tu" -o "$STAGE/all_thrift.d"
  tr ' \\' '\n\n' <"$STAGE/all_thrift.d" | grep "^$R/include/boost/" | sort -u | sed "s|^$R/include/||" >"$STAGE/boost_headers.txt"
  echo "boost/version.hpp" >>"$STAGE/boost_headers.txt"
  (cd "$R/include" && sort -u "$STAGE/boost_headers.txt" | tar cf - -T -) | (cd "$DEPS/include" && tar xf -)
  echo "[gpu_deps] $(sort -u "$STAGE/boost_headers.txt" | wc -l) Boost headers"
  # Licences of what is carried.
  mkdir -p "$DEPS/share/doc"; cp -a "$R/share/doc/." "$DEPS/share/doc/" 2>/dev/null || true
  find "$DEPS/share/doc" -type f ! -name copyright -delete; find "$DEPS/share/doc" -type d -empty -delete
  echo "${PKGS[*]}" >"$DEPS/.complete"
fi
echo "[gpu_deps] deps: $(du -sh "$DEPS" | cut -f1) in $DEPS"

# ---- 2b. redis-server for a federation on that machine -----------------------------------
REDIS=$TOP/redis
if [[ ! -f "$REDIS/.complete" ]]; then
  for f in /usr/bin/redis-check-rdb /usr/bin/redis-cli /lib/$ARCH/liblzf.so.1 /lib/$ARCH/libjemalloc.so.2; do
    [[ -e "$f" ]] || { echo "[gpu_deps] $f missing (package redis-server)" >&2; exit 1; }
  done
  rm -rf "$REDIS"; mkdir -p "$REDIS"
  cp -L /usr/bin/redis-check-rdb "$REDIS/redis-server"
  cp -L /usr/bin/redis-cli "$REDIS/redis-cli"
  cp -L /lib/$ARCH/liblzf.so.1 /lib/$ARCH/libjemalloc.so.2 "$REDIS/"
  LD_LIBRARY_PATH="$REDIS" "$REDIS/redis-server" --version >/dev/null
  touch "$REDIS/.complete"
fi
echo "[gpu_deps] redis: $(du -sh "$REDIS" | cut -f1) in $REDIS ($(LD_LIBRARY_PATH="$REDIS" "$REDIS/redis-server" --version | cut -d' ' -f3))"

# ---- 3. the prepared corpus ------------------------------------------------------------
if [[ ! -f "$DATA/manifest.json" ]]; then
  CORPUS=$STAGE/corpus
  rm -rf "$CORPUS"; mkdir -p "$CORPUS/code" "$CORPUS/docs" "$CORPUS/licenses"
  # code: the Python 3.11 standard library (PSF licence), one document per .py file.
  PYLIB=/usr/lib/python3.11
  [[ -d "$PYLIB" ]] || { echo "[gpu_deps] $PYLIB missing (package libpython3.11-stdlib)" >&2; exit 1; }
  (cd "$PYLIB" && find . -name '*.py' -type f ! -path './site-packages/*' ! -path './dist-packages/*' -print0) |
    while IFS= read -r -d '' f; do
      dst="$CORPUS/code/${f#./}"; mkdir -p "$(dirname "$dst")"; cp "$PYLIB/$f" "${dst%.py}.txt"
    done
  # docs: the reStructuredText sources of the Python 3.11 documentation (PSF licence).
  (cd "$STAGE/debs" && ls python3.11-doc_*.deb >/dev/null 2>&1 || apt-get download -q python3.11-doc 2>&1 |
     grep -v "^W: Download is performed unsandboxed" || true)
  mkdir -p "$STAGE/pydoc"; dpkg-deb -x "$STAGE"/debs/python3.11-doc_*.deb "$STAGE/pydoc"
  src=$(find "$STAGE/pydoc" -type d -name _sources | head -1)
  [[ -n "$src" ]] || { echo "[gpu_deps] no _sources in python3.11-doc" >&2; exit 1; }
  (cd "$src" && find . -name '*.txt' -type f -print0 | while IFS= read -r -d '' f; do
     mkdir -p "$CORPUS/docs/$(dirname "$f")"; cp "$f" "$CORPUS/docs/$f"; done)
  # licenses: the licence texts shipped with Debian.
  for f in /usr/share/common-licenses/*; do [[ -f "$f" ]] && cp "$f" "$CORPUS/licenses/$(basename "$f").txt"; done
  echo "[gpu_deps] corpus: $(du -sh --apparent-size "$CORPUS" | cut -f1) of text"
  mkdir -p "$(dirname "$DATA")"
  "$FEDPS_CTL" prepare --input code="$CORPUS/code" docs="$CORPUS/docs" docs="$CORPUS/licenses" \
    --vocab-size 32000 --out "$DATA"
fi
echo "[gpu_deps] data: $(du -sh "$DATA" | cut -f1) in $DATA"
echo "[gpu_deps] carried in all: $(du -sc "$DEPS" "$REDIS" "$DATA" | tail -1 | cut -f1) KiB (limit 65536 KiB with the working tree)"
