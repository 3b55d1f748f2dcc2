#!/usr/bin/env bash
# Creates .venv-recorder with the recorder's pinned Python packages (tools/requirements.txt).
# torch from PyPI is a large download (about 3 GB with its CUDA libraries).
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
"$venv/bin/pip" install -q -r "$root/tools/requirements.txt"
echo "recorder environment ready: $venv/bin/python tools/record_trace.py --help"
