#!/usr/bin/env bash
# Regenerates README.md's press table (between the "kvsim list" markers) from the registry:
#   bash scripts/update_readme_presses.sh [path/to/kvsim]
# tests/check_readme_presses.sh fails when the README's table differs from `kvsim list`.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kvsim=${1:-$root/build/tools/kvsim}
table=$(mktemp)
trap 'rm -f "$table"' EXIT
"$kvsim" list > "$table"
python3 - "$root/README.md" "$table" <<'PY'
import sys
readme, table = sys.argv[1], open(sys.argv[2]).read()
text = open(readme).read()
begin, end = "<!-- kvsim list -->\n", "<!-- end kvsim list -->\n"
if begin not in text or end not in text:
    sys.exit("update_readme_presses: README.md has no kvsim list markers")
head, rest = text.split(begin, 1)
_, tail = rest.split(end, 1)
open(readme, "w").write(head + begin + table + end + tail)
PY
