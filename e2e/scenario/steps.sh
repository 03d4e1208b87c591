# shellcheck shell=bash
# The steps that the end-to-end scenario (run.sh) and the demo (demo.sh)
# share: install the chart, deploy the workloads of manifests.yaml, and call
# orders from a caller's pod. Sourced after lib.sh; needs $HELM and $TAG.
#
# KUBE_MTLS_CNI=1 is CNI mode: the chart's node agent (cni.enabled) installs
# the plugin into the node's CNI_BIN_DIR and chains it in CNI_CONF_DIR
# (defaults /opt/cni/bin and /etc/cni/net.d), and the namespaces of the app
# and its callers enforce Pod Security `restricted`. Unset or 0: the default
# mode (a kube-mtls-init container in every injected pod), no Pod Security labels.
SCENARIO=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KUBE_MTLS_CNI=${KUBE_MTLS_CNI:-0}
CNI_BIN_DIR=${CNI_BIN_DIR:-/opt/cni/bin}
CNI_CONF_DIR=${CNI_CONF_DIR:-/etc/cni/net.d}
cni_mode() { [ "$KUBE_MTLS_CNI" = 1 ]; }
# The namespaces of manifests.yaml's pods.
WORKLOAD_NAMESPACES=(shop web batch plain)
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
# its CA and the Service that the API server calls it through, and in CNI
# mode for the node agent (ready once its entry is in the node's conflist).
install_chart() {
  local cni=()
  if cni_mode; then
    cni=(--set cni.enabled=true --set "cni.binDir=$CNI_BIN_DIR" --set "cni.confDir=$CNI_CONF_DIR")
  fi
  $HELM install kube-mtls "$CHART" --namespace kube-mtls --create-namespace \
    --set image.webhook.tag="$TAG" --set image.sidecar.tag="$TAG" \
    --set image.webhook.pullPolicy=IfNotPresent "${cni[@]}"
  if cni_mode; then
    k -n kube-mtls rollout status ds/kube-mtls-cni --timeout=180s
  fi
  k -n kube-mtls rollout status deployment/kube-mtls-webhook --timeout=300s
  k -n cert-manager wait certificate/kube-mtls-ca --for=condition=Ready --timeout=180s
  wait_for 60 "the API server to reach the webhook through its Service" webhook_answers
}

# The app, the Job and the three callers, Ready. In CNI mode their namespaces
# enforce Pod Security `restricted` before any pod is created in them.
deploy_workloads() {
  if cni_mode; then
    local ns
    for ns in "${WORKLOAD_NAMESPACES[@]}"; do
      k create namespace "$ns" --dry-run=client -o yaml | k apply -f -
      k label namespace "$ns" pod-security.kubernetes.io/enforce=restricted --overwrite
    done
  fi
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
