# shellcheck shell=bash
# The steps that the end-to-end scenario (run.sh) and the demo (demo.sh)
# share: install the chart, deploy the workloads of manifests.yaml, and call
# orders from a caller's pod. Sourced after lib.sh; needs $HELM and $TAG.
SCENARIO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHART=$(cd "$SCENARIO/../../charts/kube-mtls" && pwd)
# orders' Service, as the callers name it.
export URL=http://orders.shop.svc.cluster.local:8080

# A server-side dry run of an opted-in pod: the API server calls the webhook
# through its Service, so this succeeds once the Service routes to it.
webhook_answers() {
  k apply --dry-run=server -f - <<'POD'
apiVersion: v1
kind: Pod
metadata: {name: webhook-probe, namespace: default, labels: {kube-mtls.io/inject: enabled}}
spec:
  containers: [{name: app, image: docker.io/kube-mtls/test-app:e2e}]
POD
}

# helm install kube-mtls with the images tagged $TAG; waits for the webhook,
# its CA and the Service that the API server calls it through.
install_chart() {
  $HELM install kube-mtls "$CHART" --namespace kube-mtls --create-namespace \
    --set image.webhook.tag="$TAG" --set image.sidecar.tag="$TAG" \
    --set image.webhook.pullPolicy=IfNotPresent
  k -n kube-mtls rollout status deployment/kube-mtls-webhook --timeout=300s
  k -n cert-manager wait certificate/kube-mtls-ca --for=condition=Ready --timeout=180s
  wait_for 60 "the API server to reach the webhook through its Service" webhook_answers
}

# The app, the Job and the three callers, Ready.
deploy_workloads() {
  k apply -f "$SCENARIO/manifests.yaml"
  k -n shop rollout status deployment/orders --timeout=300s
  for ns in web batch plain; do
    k -n "$ns" wait pod/client --for=condition=Ready --timeout=300s
  done
}

# call NAMESPACE CURL-ARGS...: a plaintext call from that caller's app container.
call() {
  local ns=$1; shift
  k -n "$ns" exec client -c app -- curl -sS --max-time 10 "$@"
}
