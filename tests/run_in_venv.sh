#!/usr/bin/env bash
# Runs a Python test with the venv's interpreter when the venv exists at test time, else with
# python3: a build configured before the venv was made (scripts/setup_recorder.sh, setup.sh)
# still picks it up.   usage: run_in_venv.sh VENV_DIR SCRIPT [ARGS...]
venv=$1
shift
if [[ -x $venv/bin/python ]]; then exec "$venv/bin/python" "$@"; fi
exec python3 "$@"
