#!/usr/bin/env bash
# One command for the benchmark: installs the peers (nginx with its stream
# module, HAProxy), valgrind and strace (instructions and system calls per request) and the
# tools it uses, builds the release binaries, and runs bench/run.py, which
# prints the results table. Arguments go to run.py (e.g. --reps 5).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nginx >/dev/null || ! command -v haproxy >/dev/null || ! command -v taskset >/dev/null \
  || ! command -v valgrind >/dev/null || ! command -v strace >/dev/null || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nginx libnginx-mod-stream haproxy util-linux valgrind strace >/dev/null
fi
# PyYAML reads the webhook's test manifests for a realistic AdmissionReview.
python3 -c 'import yaml' 2>/dev/null || pip install --quiet pyyaml
# Debian starts the packaged services; the benchmark runs its own instances.
systemctl stop nginx haproxy 2>/dev/null || true

# The sidecar alone, as its image builds it: built with other packages, shared
# crates can get other features, and the functions other names than
# sidecar/symbol-order.txt lists (see sidecar/build.rs).
cargo build --release --locked -p kube-mtls-sidecar
cargo build --release --locked -p kube-mtls-webhook -p kube-mtls-bench
exec python3 bench/run.py "$@"
