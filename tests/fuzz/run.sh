#!/usr/bin/env bash
# Builds the trace reader's fuzz target with clang and runs it for SECONDS (default 120) on
# both cores, from the committed seed corpus and dictionary:
#   bash tests/fuzz/run.sh [SECONDS]
# libFuzzer runs in fork mode and carries on past findings; each input that crashed, hung or
# ran out of memory is saved under build-fuzz/findings/ and listed at the end. Inputs that
# crash libhdf5 itself (see tests/fuzz/README.md) are expected; minimise a new one of kvsim's
# own with `fuzz_trace_reader -minimize_crash=1 INPUT` and commit it to tests/fuzz/regressions/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
seconds=${1:-120}
build=${FUZZ_BUILD_DIR:-$root/build-fuzz}
mkdir -p "$build"
CC=clang CXX=clang++ cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVSIM_FUZZ=ON -DKVSIM_CUDA=OFF > "$build/configure.log"
cmake --build "$build" -j "${JOBS:-2}" --target fuzz_trace_reader
findings=$build/findings corpus=$build/corpus
mkdir -p "$findings" "$corpus"
cp -n "$root"/tests/fuzz/corpus/* "$corpus"/ 2>/dev/null || true
echo "fuzz: running the trace reader for $seconds s"
# Leak reports are off: libhdf5 keeps allocations on its error paths, which would bury the crashes.
(cd "$findings" && ASAN_OPTIONS=detect_leaks=0 "$build/tests/fuzz/fuzz_trace_reader" -fork="${JOBS:-2}" -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1 \
  -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=2048 -dict="$root/tests/fuzz/trace.dict" \
  "$corpus" > "$build/fuzz.log" 2>&1) || true
tail -n 3 "$build/fuzz.log"
found=$(find "$findings" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
echo "fuzz: $found finding(s) in $findings (libhdf5-internal ones are known: tests/fuzz/README.md)"
