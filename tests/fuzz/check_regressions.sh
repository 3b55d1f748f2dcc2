#!/usr/bin/env bash
# Every input under tests/fuzz/regressions/ once crashed kvsim or made it read nonsense; each
# must now give a clean refusal from `kvsim replay` (exit status 1, a one-line error on
# stderr), and `kvsim info` must refuse it the same way or describe it (exit 0; some damage
# only shows when a layer is read), never die of a signal.
set -uo pipefail
kvsim=$1 dir=$2
failures=0 count=0
for input in "$dir"/*; do
  for command in "info --trace $input" "replay -q --press knorm --ratio 0.5 --trace $input"; do
    count=$((count + 1))
    # shellcheck disable=SC2086
    "$kvsim" $command > /dev/null 2> /tmp/kvsim_regression.err
    status=$?
    lines=$(wc -l < /tmp/kvsim_regression.err)
    if [[ "$command" == info* && "$status" -eq 0 ]]; then continue; fi
    if [ "$status" -ne 1 ] || [ "$lines" -ne 1 ]; then
      echo "FAIL: kvsim $command: exit $status, $lines stderr lines: $(head -c 300 /tmp/kvsim_regression.err)"
      failures=$((failures + 1))
    fi
  done
done
echo "$((count - failures)) passed, $failures failed"
[ "$failures" -eq 0 ]
