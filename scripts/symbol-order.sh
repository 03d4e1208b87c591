#!/usr/bin/env bash
# Regenerates sidecar/symbol-order.txt: the functions a sidecar runs, for the
# linker to pack together (sidecar/build.rs says why; bench/symbol_order.py
# how). Links the release sidecar once more with a linker map, runs it under
# valgrind through a sidecar's work, and names what ran from the map. Run it
# after a change to the sidecar's dependencies (`make generated-check` says when) or to the
# Rust toolchain; the next release build links in the new order.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "symbol-order.sh needs valgrind (apt-get install valgrind)" >&2; exit 1; }
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -p kube-mtls-bench
cargo rustc --release --locked -p kube-mtls-sidecar --bin kube-mtls-sidecar \
  -- -C "link-arg=-Wl,-Map=$target/release/kube-mtls-sidecar.map"
python3 bench/symbol_order.py --map "$target/release/kube-mtls-sidecar.map" "$@"
