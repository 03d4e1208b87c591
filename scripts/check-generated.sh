#!/usr/bin/env bash
# Fails when a generated file in the checkout differs from what its generator writes now.
set -euo pipefail
cd "$(dirname "$0")/.."
fresh=$(mktemp -d)
trap 'rm -rf "$fresh"' EXIT
scripts/generate.sh "$fresh"
status=0
while IFS= read -r -d '' f; do
  rel=${f#"$fresh"/}
  if ! diff -u "$rel" "$f" >/dev/null 2>&1; then
    echo "stale generated file: $rel (run 'make generate' and commit the result)" >&2
    diff -u "$rel" "$f" | head -n 20 >&2 || true
    status=1
  fi
done < <(find "$fresh" -type f -print0)

# The sidecar's symbol order is made from a profile (minutes, valgrind), not
# here; it names functions of the sidecar's dependency tree, so it must follow it.
if [ "$(head -n 1 sidecar/symbol-order.txt)" != "$(python3 bench/symbol_order.py --print-stamp)" ]; then
  echo "stale generated file: sidecar/symbol-order.txt was made for another dependency tree of the sidecar (run scripts/symbol-order.sh and commit the result)" >&2
  status=1
fi
exit $status
