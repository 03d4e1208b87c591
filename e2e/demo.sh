#!/usr/bin/env bash
# `make demo` and `make demo-down`: kube-mtls on a real local cluster (the
# cluster tests' control plane and node, built from source, no Docker),
# installed with helm, with an app and three callers; the cluster keeps
# running for a look around until `make demo-down`.
#
#   e2e/demo.sh up     build what is missing, start the cluster, run the demo
#   e2e/demo.sh down   stop the cluster and check that nothing is left
# Needs root (network namespaces, containerd), Go and Rust.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
demo_dir=$repo/target/cluster/demo
cluster=$repo/target/debug/kube-mtls-cluster
steps=5

step() { printf '==> [%s/%s] %s\n' "$1" "$steps" "$2"; }
fail() { printf 'demo: %s\n' "$*" >&2; exit 1; }
# quietly LOG COMMAND...: runs COMMAND with its output in LOG; on failure, its tail.
quietly() {
  local log=$1; shift
  if ! "$@" >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    fail "$* failed: the whole output is in $log"
  fi
}

up() {
  [ "$(id -u)" = 0 ] || fail "the cluster needs root (network namespaces, containerd, cgroups): run 'sudo make demo'"
  scripts/install-deps.sh >/dev/null
  mkdir -p "$demo_dir"
  step 1 "building kube-mtls (cargo; the first build takes about 5 minutes)"
  quietly "$demo_dir/cargo.log" cargo build --workspace --bins --locked
  if "$cluster" status; then
    exit 0
  fi
  step 2 "building etcd, Kubernetes, CoreDNS and cert-manager from their Go modules (the first build takes about 12 minutes, then seconds)"
  quietly "$demo_dir/go-build.log" e2e/cluster/build.sh
  step 3 "building the images from Dockerfile.sidecar and Dockerfile.webhook (the first build takes about 3 minutes)"
  quietly "$demo_dir/images.log" e2e/cluster/images.sh
  step 4 "starting the cluster: a control plane and one node (about a minute)"
  "$cluster" up
  step 5 "helm install kube-mtls, an app (shop/orders) and three callers"
  KUBECONFIG=$demo_dir/kubeconfig KUBECTL=$repo/target/cluster/bin/kubectl \
    DEMO_LOG=$demo_dir/demo.log e2e/scenario/demo.sh
  cat <<MSG

The cluster keeps running. Try it:
    export KUBECONFIG=$demo_dir/kubeconfig
    kubectl get pods -A            # (or $repo/target/cluster/bin/kubectl)
    kubectl -n web exec client -c app -- curl -s http://orders.shop.svc.cluster.local:8080/hello
'make demo-down' stops it and removes everything it started.
MSG
}

down() {
  [ "$(id -u)" = 0 ] || fail "stopping the cluster needs root: run 'sudo make demo-down'"
  [ -x "$cluster" ] || cargo build --quiet --locked -p kube-mtls-tests --bin kube-mtls-cluster
  "$cluster" down
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) fail "usage: e2e/demo.sh up|down" ;;
esac
