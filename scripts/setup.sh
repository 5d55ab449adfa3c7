#!/usr/bin/env bash
# Installs what fedps needs to build and test on Debian 12 / Ubuntu 22.04+:
# Debian packages (as root, or through sudo) and LibTorch.
# LibTorch: when CMAKE_PREFIX_PATH or Torch_DIR already point at a LibTorch 2.x we use it;
# otherwise a venv in .venv with the pinned CPU wheel (torch==2.13.0).
# Idempotent: a second run installs nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake ninja-build pkg-config git
      thrift-compiler libthrift-dev libboost-dev libevent-dev libssl-dev
      libhiredis-dev redis-server libzstd-dev zstd zlib1g-dev libxxhash-dev
      libgoogle-glog-dev libgflags-dev libgtest-dev libgmock-dev
      libcli11-dev libtomlplusplus-dev nlohmann-json3-dev
      libsentencepiece-dev sentencepiece
      python3-venv python3-dev clang-format gnuplot-nox
      clang-14 libfuzzer-14-dev libclang-rt-14-dev)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "[setup] installing Debian packages: ${missing[*]}"
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# LibTorch.
if [[ -n "${Torch_DIR:-}" ]] || { [[ -n "${CMAKE_PREFIX_PATH:-}" ]] && \
     ls "${CMAKE_PREFIX_PATH%%:*}"/Torch/TorchConfig.cmake >/dev/null 2>&1; }; then
  echo "[setup] using LibTorch from the environment"
else
  PY=${PYTHON:-python3}
  if [[ ! -x .venv/bin/python ]]; then
    echo "[setup] creating .venv"
    "$PY" -m venv .venv
  fi
  if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
    echo "[setup] installing torch==2.13.0 (CPU wheel) into .venv"
    .venv/bin/pip install -q torch==2.13.0
  fi
fi

# Python packages for the Hugging Face export check and the report (PyPI).
if [[ -x .venv/bin/python ]] && ! .venv/bin/python -c 'import transformers, sentencepiece' 2>/dev/null; then
  echo "[setup] installing transformers, sentencepiece and numpy into .venv"
  .venv/bin/pip install -q "transformers==5.24.0" "sentencepiece" "numpy"
fi
