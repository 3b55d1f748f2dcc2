#!/usr/bin/env bash
# The test suite built with AddressSanitizer and UndefinedBehaviorSanitizer (g++, CUDA off,
# its own build-asan/), then run; any sanitizer report fails its test. .ci/run calls it.
#   bash scripts/sanitize.sh
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${ASAN_BUILD_DIR:-$root/build-asan}
jobs=${JOBS:-2}
# float-cast-overflow (not part of "undefined" in GCC): a float converted to an integer type
# that cannot hold it, e.g. a huge press parameter scaled into a size.
flags="-fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=undefined,float-cast-overflow"
mkdir -p "$build"
# -O1 without debug info: sanitizer builds of Eigen code are slow to compile, and -O1 keeps
# the reports' stacks readable.
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_FLAGS_RELEASE="-O1 -DNDEBUG" -DCMAKE_C_FLAGS_RELEASE="-O1 -DNDEBUG" \
  -DKVSIM_CUDA=OFF -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined,float-cast-overflow" > "$build/configure.log"
cmake --build "$build" -j "$jobs"
# Leak checking is off: libhdf5 and the CUDA-less stubs keep allocations to exit by design;
# every other report aborts the test that triggers it.
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir "$build" -j "$jobs" --output-on-failure
