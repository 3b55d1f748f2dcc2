#!/usr/bin/env bash
# Creates .venv-recorder with the recorder's pinned Python packages (tools/requirements.txt).
# torch from PyPI comes with its CUDA libraries: the venv is about 5.6 GB (2026-11, torch 2.15),
# a few minutes to install. (PyTorch's CPU-only index is not reachable from the machines this
# project is built on; where it is, `pip install torch --index-url https://download.pytorch.org/whl/cpu`
# into the venv first makes it about 1 GB.)
# The CMake build and ctest pick .venv-recorder up to run the recorder test.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${KVSIM_RECORDER_VENV:-$root/.venv-recorder}
python=${PYTHON:-python3}
if ! "$python" -m venv --help >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv
fi
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
echo "installing the recorder's packages into $venv (about 5.6 GB with torch; a few minutes)"
"$venv/bin/pip" install --progress-bar on -r "$root/tools/requirements.txt" | grep -E --line-buffered '^(Collecting|Downloading|Installing|Successfully)' || true
"$venv/bin/python" -c "import torch, transformers, h5py" || { echo "setup_recorder: the install failed" >&2; exit 1; }
echo "recorder environment ready: $venv/bin/python tools/record_trace.py --help"
