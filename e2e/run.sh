#!/usr/bin/env bash
# End-to-end test on a kind cluster: cert-manager, the chart with locally built
# images, an annotated sample app and two callers, then the checks a platform
# engineer would make. Needs docker, kind, kubectl and helm.
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

log() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

for tool in docker kind kubectl helm; do
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
kind load docker-image "$WEBHOOK_IMAGE" "$SIDECAR_IMAGE" --name "$CLUSTER"

log "cert-manager $CERT_MANAGER_VERSION"
kubectl apply -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
for d in cert-manager cert-manager-cainjector cert-manager-webhook; do
  kubectl -n cert-manager rollout status "deployment/$d" --timeout=300s
done

log "kube-mtls chart"
helm install kube-mtls charts/kube-mtls --namespace kube-mtls --create-namespace \
  --set image.webhook.tag="$TAG" --set image.sidecar.tag="$TAG" \
  --set image.webhook.pullPolicy=Never --wait --timeout 5m
kubectl -n cert-manager wait certificate/kube-mtls-ca --for=condition=Ready --timeout=180s

log "sample app and callers"
kubectl apply -f e2e/manifests/app.yaml
kubectl apply -f e2e/manifests/clients.yaml
kubectl -n shop rollout status deployment/orders --timeout=300s
kubectl -n web wait certificate/front-client --for=condition=Ready --timeout=120s
kubectl -n batch wait certificate/cron-client --for=condition=Ready --timeout=120s
kubectl -n web wait pod/client --for=condition=Ready --timeout=180s
kubectl -n batch wait pod/client --for=condition=Ready --timeout=180s

status=$(kubectl -n shop get pods -l app=orders -o jsonpath='{.items[0].metadata.annotations.kube-mtls\.io/status}')
[ -n "$status" ] || fail "the orders pod was not injected"
echo "injected: $status"

URL=https://orders.shop.svc.cluster.local:8080/hello
call() { # namespace, extra curl args...
  local ns=$1; shift
  kubectl -n "$ns" exec client -- curl -sS --max-time 10 --cacert /certs/ca.crt \
    --cert /certs/tls.crt --key /certs/tls.key "$@"
}

log "check: an allowed identity gets through and the app sees who called"
body=$(call web "$URL")
grep -q 'URI=spiffe://cluster.local/ns/web/sa/front' <<<"$body" || fail "no caller identity in: $body"

log "check: a disallowed identity gets 403"
code=$(call batch -o /dev/null -w '%{http_code}' "$URL")
[ "$code" = 403 ] || fail "batch/cron got HTTP $code, want 403"

log "check: plaintext does not reach the app"
if kubectl -n web exec client -- curl -sS --max-time 10 http://orders.shop.svc.cluster.local:8080/hello; then
  fail "a plaintext call reached the app"
fi

log "check: probes pass through the sidecar"
kubectl -n shop wait pod -l app=orders --for=condition=Ready --timeout=60s

log "check: a Job with the sidecar completes"
kubectl -n shop wait job/report --for=condition=complete --timeout=180s

log "check: certificate rotation keeps traffic flowing"
pod=$(kubectl -n shop get pods -l app=orders -o jsonpath='{.items[0].metadata.name}')
reloads() {
  kubectl -n shop exec "$pod" -c echo -- wget -qO- http://127.0.0.1:15020/metrics 2>/dev/null \
    | sed -n 's/^kube_mtls_sidecar_certificate_reloads_total{result="ok"} //p'
}
before=$(reloads || echo 0)
kubectl -n shop delete secret kube-mtls-orders-tls
for i in $(seq 1 60); do
  code=$(call web -o /dev/null -w '%{http_code}' "$URL" || echo failed)
  [ "$code" = 200 ] || fail "request $i during rotation: $code"
  after=$(reloads || echo 0)
  if [ "${after:-0}" != "${before:-0}" ]; then
    echo "rotated after $i requests"
    break
  fi
  sleep 3
done
[ "${after:-0}" != "${before:-0}" ] || fail "the sidecar never reloaded the rotated certificate"

log "check: uninstall cleans up"
helm uninstall kube-mtls --namespace kube-mtls --wait
kubectl delete certificates.cert-manager.io -A -l app.kubernetes.io/managed-by=kube-mtls
if kubectl get mutatingwebhookconfiguration kube-mtls >/dev/null 2>&1; then
  fail "MutatingWebhookConfiguration left behind"
fi
left=$(kubectl get certificates.cert-manager.io -A -l app.kubernetes.io/managed-by=kube-mtls -o name)
[ -z "$left" ] || fail "Certificates left behind: $left"

log "all end-to-end checks passed"
