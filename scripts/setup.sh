#!/usr/bin/env bash
# kvsim set-up on a fresh Debian machine: installs the missing Debian packages, configures
# and builds (CUDA code too when nvcc is found), then runs one job:
#   scripts/setup.sh demo   replay the bundled trace through every press (the README's first command)
#   scripts/setup.sh test   run the whole test suite with ctest, again under ASan + UBSan, and fuzz
#                           the trace reader for 2 minutes (the README's second command; .ci/run)
#   scripts/setup.sh build  build only
# Environment: BUILD_DIR (default build), JOBS (default 2), KVSIM_CUDA (AUTO|ON|OFF).
set -euo pipefail

mode=${1:-demo}
case "$mode" in demo|test|build) ;; *) echo "usage: scripts/setup.sh [demo|test|build]" >&2; exit 2 ;; esac

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build_dir=${BUILD_DIR:-$root/build}
jobs=${JOBS:-2}

packages=(cmake ninja-build g++ pkg-config libeigen3-dev libhdf5-dev libboost-program-options-dev
          libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev librapidcheck-dev)
# The test run also fuzzes the trace reader (libFuzzer: clang and its runtimes).
[ "$mode" = test ] && packages+=(clang libclang-rt-14-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# The artefact converter's Python packages (numpy, h5py, safetensors: small), in a venv of
# their own, so its test runs; without network the test reports itself skipped.
if [ "$mode" = test ] && [ ! -x "$root/.venv-artefacts/bin/python" ]; then
  echo "setup: installing tools/requirements-artefacts.txt into .venv-artefacts"
  if ! { python3 -m venv "$root/.venv-artefacts" && "$root/.venv-artefacts/bin/pip" install -q -r "$root/tools/requirements-artefacts.txt"; }; then
    echo "setup: could not install them; the converter's test will be skipped" >&2
    rm -rf "$root/.venv-artefacts"
  fi
fi

# The plotting script's matplotlib (tools/plot_results.py), likewise in a venv of its own.
if [ "$mode" = test ] && [ ! -x "$root/.venv-plots/bin/python" ]; then
  echo "setup: installing tools/requirements-plots.txt into .venv-plots"
  if ! { python3 -m venv "$root/.venv-plots" && "$root/.venv-plots/bin/pip" install -q -r "$root/tools/requirements-plots.txt"; }; then
    echo "setup: could not install it; the plotting test will be skipped" >&2
    rm -rf "$root/.venv-plots"
  fi
fi

# nvcc is often installed outside PATH.
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi

cmake -S "$root" -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVSIM_CUDA="${KVSIM_CUDA:-AUTO}"
cmake --build "$build_dir" -j "$jobs"

case "$mode" in
  demo) "$build_dir/tools/kvsim" replay --ratio 0.25 0.5 0.75 ;;
  test)
    ctest --test-dir "$build_dir" -j "$jobs" --output-on-failure
    # The suite again under AddressSanitizer + UndefinedBehaviorSanitizer, then the trace
    # reader's fuzz target for a bounded time (its findings are listed, tests/fuzz/README.md).
    JOBS=$jobs bash "$root/scripts/sanitize.sh"
    JOBS=$jobs bash "$root/tests/fuzz/run.sh" "${KVSIM_FUZZ_SECONDS:-120}"
    ;;
  build) ;;
esac
