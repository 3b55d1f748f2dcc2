#!/usr/bin/env bash
# Everything that needs a GPU, in one go (for a session that is lent one): builds with CUDA,
# runs the `gpu` test label, the conformance CLI on the bundled trace, compute-sanitizer on a
# short conformance run, the CUDA benchmarks and, where torch is installed, the PyTorch
# comparison. Outputs go to ${1:-bench/results} with the device name in the file names.
# Needs the Debian packages of scripts/setup.sh (run `scripts/setup.sh build` first on a bare machine).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/bench/results}
build=${BUILD_DIR:-$root/build-gpu}
mkdir -p "$out"
export PATH=/usr/local/cuda/bin:$PATH
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-' | tr -cd 'A-Za-z0-9_.-')
[ -n "$gpu" ] || { echo "gpu_check: no GPU visible (nvidia-smi)" >&2; exit 1; }
{
  echo "device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "date:   $(date -u +%Y-%m-%dT%H:%M:%SZ)"
} | tee "$out/gpu-$gpu-info.txt"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DKVSIM_CUDA=ON && cmake --build "$build" -j "$(nproc)" || exit 1
status=0
ctest --test-dir "$build" -L gpu --output-on-failure 2>&1 | tee "$out/gpu-$gpu-ctest.txt" || status=1
"$build/tools/kvsim" verify --backend cuda 2>&1 | tee "$out/gpu-$gpu-verify.txt" || status=1
if command -v compute-sanitizer >/dev/null; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$build/tools/kvsim" verify --backend cuda --press knorm snapkv "merging(knorm)" \
      --ratio 0.5 --layers 0 > "$out/gpu-$gpu-$tool.txt" 2>&1 || status=1
  done
fi
"$build/bench/bench_cuda" --benchmark_out="$out/cuda-$gpu.json" --benchmark_out_format=json 2>&1 | tail -n 40
if python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  python3 "$root/bench/torch_compression.py" --tokens 4096 32768 131072 --out "$out/torch-$gpu.json"
fi
exit $status
