#!/usr/bin/env bash
# scripts/gpu_check.sh's default grid must run every press of the random shape grid exactly
# once: each test name matches one glob of exactly one shard (a press added without a shard,
# or a glob that matches nothing, would silently leave a press out of the GPU check).
set -euo pipefail
conformance=$1 script=$2
default_grid=$(sed -n '/^default_grid="/,/"$/p' "$script" | tr -d '\\\n' | sed 's/^default_grid="//; s/"$//')
read -r -a shards <<<"$default_grid"
((${#shards[@]} > 0)) || { echo "no default_grid in $script" >&2; exit 1; }
failures=0 count=0
while read -r name; do
  ((count += 1))
  matched=0
  for shard in "${shards[@]}"; do
    IFS=: read -r -a globs <<<"$shard"
    for glob in "${globs[@]}"; do
      # shellcheck disable=SC2053  # the glob is meant to match as a pattern
      if [[ $name == $glob ]]; then ((matched += 1)); break; fi
    done
  done
  if ((matched != 1)); then
    echo "grid test '$name' is in $matched shards of $script's default grid (must be 1)" >&2
    failures=1
  fi
done < <("$conformance" --gtest_list_tests --gtest_filter='*RandomInputsOverTheShapeGrid*' | sed -n 's|^  RandomInputsOverTheShapeGrid/\([^ ]*\).*|\1|p')
((count > 0)) || { echo "no grid tests listed by $conformance" >&2; exit 1; }
((failures == 0)) && echo "every one of the $count grid presses is in exactly one shard of ${#shards[@]}"
exit "$failures"
