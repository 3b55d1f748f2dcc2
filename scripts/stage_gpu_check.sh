#!/usr/bin/env bash
# Builds the GPU binaries here (sm_90, as CI does) and stages them for a GPU machine that has
# the CUDA toolkit and Python with torch but none of kvsim's other libraries: the binaries,
# every shared library `ldd` lists for them except the C runtime (glibc and its parts, libstdc++, libgcc_s)
# and the CUDA toolkit's own (cuBLAS, cudart: the GPU machine's toolkit provides them, and
# cuBLASLt alone is over 500 MB), the bundled trace, the PyTorch comparison and the script
# that runs it all there (scripts/gpu_check.sh). The stage is one git-ignored folder of at
# most 64 MiB, so it can travel to the GPU machine as a carried path:
#   scripts/stage_gpu_check.sh            # -> gpu-stage/
#   scripts/stage_gpu_check.sh --no-trace # the same without the trace, for a stage that travels
#                                         # inside the source tree (which holds the trace already)
#   (on the GPU machine, carrying gpu-pack) mkdir -p gpu-stage && tar -xJf gpu-pack/stage.tar.xz -C gpu-stage &&
#                                           bash gpu-stage/gpu_check.sh "$OUT"
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
stage=${STAGE_DIR:-$root/gpu-stage}
build=${BUILD_DIR:-$root/build}
limit_mib=64
with_trace=1
[[ ${1:-} == --no-trace ]] && with_trace=0

KVSIM_CUDA=ON BUILD_DIR="$build" bash "$root/scripts/setup.sh" build
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/lib"
binaries=("$build/tools/kvsim" "$build/tests/test_conformance_gpu" "$build/tests/test_primitives_gpu" "$build/bench/bench_cuda")
cp "${binaries[@]}" "$stage/bin/"
strip --strip-unneeded "$stage"/bin/* 2>/dev/null || true

# Shared libraries to carry: all that ldd resolves, less the C runtime and the CUDA toolkit.
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libpthread|libdl\.|librt\.|libresolv|libutil|libnsl|libanl|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas)'
for binary in "${binaries[@]}"; do
  ldd "$binary" | awk '/=> \// {print $1, $3}' | while read -r name path; do
    if [[ ! "$name" =~ $skip ]]; then cp -L "$path" "$stage/lib/$name"; fi
  done
done
((with_trace)) && cp "$root/traces/bundled/smollm2-135m-lighthouse.h5" "$stage/trace.h5"
cp "$root/bench/torch_compression.py" "$root/scripts/gpu_check.sh" "$stage/"
git -C "$root" rev-parse HEAD > "$stage/commit.txt" 2>/dev/null || echo unknown > "$stage/commit.txt"

# What travels to the GPU machine is the source tree and the carried paths, 64 MiB in all: the
# stage also goes packed (xz, a quarter of its size) as gpu-pack/stage.tar.xz; there,
#   mkdir -p gpu-stage && tar -xJf gpu-pack/stage.tar.xz -C gpu-stage
pack=${PACK_DIR:-$root/gpu-pack}
mkdir -p "$pack"
tar -C "$stage" -cf - . | xz -T0 -6 > "$pack/stage.tar.xz"
size_kib=$(du -sk "$stage" | cut -f1)
packed_kib=$(du -sk "$pack/stage.tar.xz" | cut -f1)
echo "stage_gpu_check: $stage holds $((size_kib / 1024)) MiB ($(ls "$stage/lib" | wc -l) libraries), $((packed_kib / 1024)) MiB packed in $pack"
if ((packed_kib > limit_mib * 1024)); then
  echo "stage_gpu_check: the packed stage is over $limit_mib MiB; it cannot travel to the GPU machine" >&2
  exit 1
fi
