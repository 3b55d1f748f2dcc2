#!/usr/bin/env bash
# README.md's press table must be what `kvsim list` prints (scripts/update_readme_presses.sh
# regenerates it): fails, with the difference, when a press was added, removed or changed.
set -euo pipefail
kvsim=$1 readme=$2
expected=$(mktemp) actual=$(mktemp)
trap 'rm -f "$expected" "$actual"' EXIT
"$kvsim" list > "$expected"
sed -n '/^<!-- kvsim list -->$/,/^<!-- end kvsim list -->$/p' "$readme" | sed '1d;$d' > "$actual"
if ! diff -u "$actual" "$expected"; then
  echo "README.md's press table differs from 'kvsim list': run scripts/update_readme_presses.sh" >&2
  exit 1
fi
echo "README press table matches kvsim list ($(($(wc -l < "$expected") - 2)) presses)"
