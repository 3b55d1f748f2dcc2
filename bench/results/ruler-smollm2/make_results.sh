#!/usr/bin/env bash
# Re-creates this folder's results and docs/img/ruler-smollm2-ranking.png from the suite that
# `SAMPLES=2 bash scripts/record_ruler_suite.sh` records into traces/ruler-smollm2 (10 traces).
# RESULTS=bench/results/ruler-NAME makes another suite's results the same way, from traces/ruler-NAME
# into that folder and docs/img/ruler-NAME-ranking.png (ruler-gemma3/make_results.sh does).
#   usage: make_results.sh   (SUITE, KVSIM, RECORDER_PYTHON and PLOT_PYTHON override the tools' paths;
#   PLOT=0 skips the figure)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
scripts=$root/bench/results/ruler-smollm2
here=${RESULTS:-$scripts}
name=$(basename "$here")
suite=${SUITE:-$root/traces/$name}
kvsim=${KVSIM:-$root/build-cpu/tools/kvsim}
recorder_python=${RECORDER_PYTHON:-$root/.venv-recorder/bin/python}  # has h5py
plot_python=${PLOT_PYTHON:-$root/.venv-plots/bin/python}             # has matplotlib
presses=(knorm snapkv pyramidkv streaming_llm tova expected_attention keydiff random)
ratios=(0.25 0.5 0.75)
(cd "$suite" && sha256sum ./*.h5) > "$here/traces.sha256"
for metric in answer_rel_err rel_err span_retention; do
  for format in json table; do
    extension=$([[ $format == table ]] && echo md || echo json)
    "$kvsim" rank "$suite" --press "${presses[@]}" --ratio "${ratios[@]}" --metric "$metric" \
      --resamples 1000 --seed 0 --threads 2 -q --format "$format" -o "$here/rank-$metric.$extension"
  done
done
"$recorder_python" "$scripts/answer_vs_perturbation.py" "$suite" --kvsim "$kvsim" --press "${presses[@]}" \
  --ratio "${ratios[@]}" --per-trace "$here/per_trace.csv" > "$here/answer_vs_perturbation.md"
[[ ${PLOT:-1} == 0 ]] && exit 0
plots=$(mktemp -d)
trap 'rm -rf "$plots"' EXIT
"$plot_python" "$root/tools/plot_results.py" --ranking "$here/rank-answer_rel_err.json" --out-dir "$plots"
cp "$plots/ranking.png" "$root/docs/img/$name-ranking.png"
