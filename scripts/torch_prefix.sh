#!/usr/bin/env bash
# Prints the CMAKE_PREFIX_PATH under which CMake finds LibTorch: the caller's
# CMAKE_PREFIX_PATH (or Torch_DIR's prefix) when set, else the venv's torch.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -n "${CMAKE_PREFIX_PATH:-}" ]]; then
  echo "$CMAKE_PREFIX_PATH"
elif [[ -n "${Torch_DIR:-}" ]]; then
  dirname "$Torch_DIR"
elif [[ -x .venv/bin/python ]]; then
  .venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null
else
  python3 -c 'import torch; print(torch.utils.cmake_prefix_path)'
fi
