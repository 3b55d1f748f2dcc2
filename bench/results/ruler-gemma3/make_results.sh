#!/usr/bin/env bash
# Re-creates this folder's results from the suite that `MODEL=gemma3 SAMPLES=2 bash
# scripts/record_ruler_suite.sh` records into traces/ruler-gemma3, with the same commands as the
# SmolLM2 suite's (ruler-smollm2/make_results.sh), then compares the two suites' rankings.
#   usage: make_results.sh   (SUITE, KVSIM, RECORDER_PYTHON, PLOT_PYTHON, PLOT as there)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
RESULTS=$here bash "$here/../ruler-smollm2/make_results.sh"
"${RECORDER_PYTHON:-$here/../../../.venv-recorder/bin/python}" "$here/compare_rankings.py" "$here/../ruler-smollm2" "$here" > "$here/rankings_vs_smollm2.md"
