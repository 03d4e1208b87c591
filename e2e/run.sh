#!/usr/bin/env bash
# End-to-end test on a kind cluster, for users with Docker: cert-manager, the
# chart with images built from this repository's Dockerfiles, then the shared
# scenario (e2e/scenario/run.sh), the same one CI runs on its own real node
# (tests/tests/node). Needs docker, kind, kubectl, helm and cargo.
#
#   e2e/run.sh            # create a cluster, test, delete it
#   KEEP=1 e2e/run.sh     # keep the cluster for a look afterwards
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER=${CLUSTER:-kube-mtls-e2e}
KIND_NODE=${KIND_NODE:-kindest/node:v1.33.1}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.18.2}
TAG=e2e
WEBHOOK_IMAGE=ghcr.io/kube-mtls/kube-mtls-webhook:$TAG
SIDECAR_IMAGE=ghcr.io/kube-mtls/kube-mtls-sidecar:$TAG
TEST_APP_IMAGE=docker.io/kube-mtls/test-app:e2e

log() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm cargo; do
  command -v "$tool" >/dev/null || fail "$tool is required"
done

cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    kind delete cluster --name "$CLUSTER" >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT

log "kind cluster $CLUSTER ($KIND_NODE)"
kind create cluster --name "$CLUSTER" --image "$KIND_NODE" --wait 180s
kubectl config use-context "kind-$CLUSTER"

log "images"
docker build -f Dockerfile.webhook -t "$WEBHOOK_IMAGE" .
docker build -f Dockerfile.sidecar -t "$SIDECAR_IMAGE" .
cargo build --release --locked -p kube-mtls-tests --bin kube-mtls-test-app
app_ctx=$(mktemp -d)
cp target/release/kube-mtls-test-app "$app_ctx/"
docker build -f e2e/cluster/test-app.Dockerfile -t "$TEST_APP_IMAGE" "$app_ctx"
rm -rf "$app_ctx"
kind load docker-image "$WEBHOOK_IMAGE" "$SIDECAR_IMAGE" "$TEST_APP_IMAGE" --name "$CLUSTER"

log "cert-manager $CERT_MANAGER_VERSION"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
for d in cert-manager cert-manager-cainjector cert-manager-webhook; do
  kubectl -n cert-manager rollout status "deployment/$d" --timeout=300s
done

TAG=$TAG e2e/scenario/run.sh
