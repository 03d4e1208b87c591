#!/usr/bin/env bash
# The end-to-end scenario, on any cluster that has cert-manager and the images
# (kube-mtls sidecar and webhook with tag $TAG, docker.io/kube-mtls/test-app:e2e):
# helm install, an opted-in app, allowed and refused callers, a plaintext
# caller, probes through the sidecar, a Job, re-issuance under traffic, pod
# deletion with a request in flight, `helm test`, helm uninstall. Shared by e2e/run.sh (kind)
# and the cluster test on a real node (tests/tests/node), so they cannot drift.
#
#   KUBECTL, HELM: the commands (default kubectl, helm); TAG: image tag (e2e).
#   KUBE_MTLS_CNI=1, CNI_BIN_DIR, CNI_CONF_DIR: CNI mode (steps.sh): the same
#     checks with the app's namespaces enforcing Pod Security `restricted`,
#     plus a pod repaired after starting without the plugin, and the node's
#     CNI configuration clean after uninstall (cni.sh).
#   CA_ROTATION=1: also rotate the workload CA's key under traffic
#     (ca-rotation.sh; KUBECTL_MTLS, default `kubectl mtls`, logs where the
#     rotation stands). The node test sets it in the default mode only.
#   RULES_OUT: a file for the nat rules of orders' network namespace (cni.sh's
#     pod_nat_rules), for a comparison of the two modes; needs the node (ON_NODE).
# Waits are `kubectl wait`/`rollout status` (no fixed sleeps); every failure
# names the check.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELM=${HELM:-helm}
TAG=${TAG:-e2e}
# shellcheck source=e2e/scenario/lib.sh
. "$here/lib.sh"
# shellcheck source=e2e/scenario/steps.sh
. "$here/steps.sh"
# shellcheck source=e2e/scenario/cni.sh
. "$here/cni.sh"

if cni_mode; then mode="CNI mode: $CNI_BIN_DIR, $CNI_CONF_DIR"; else mode="init-container mode"; fi
log "helm install kube-mtls (images :$TAG, $mode)"
install_chart
if cni_mode; then
  check_cni_installed
fi

log "check: helm test (an opted-in pod comes up with a ready sidecar)"
$HELM test kube-mtls --namespace kube-mtls --timeout 5m

log "app, Job and callers"
deploy_workloads
# For a capture on the wire, where a test can take one (tests/tests/node).
echo "caller web/client has IP $(k -n web get pod client -o jsonpath='{.status.podIP}')"
orders=$(k -n shop get pods -l app=orders -o jsonpath='{.items[0].metadata.name}')
status=$(k -n shop get pod "$orders" -o jsonpath='{.metadata.annotations.kube-mtls\.io/status}')
[ -n "$status" ] || fail "the orders pod was not injected"

log "check: the injected pod's first init container is the mode's, and only the default mode's adds capabilities"
first=$(k -n shop get pod "$orders" -o jsonpath='{.spec.initContainers[0].name}')
added=$(k -n shop get pod "$orders" -o jsonpath='{range .spec.initContainers[*]}{.securityContext.capabilities.add}{end}{range .spec.containers[*]}{.securityContext.capabilities.add}{end}')
if cni_mode; then
  [ "$first" = kube-mtls-validate ] || fail "the orders pod's first init container is '$first', want kube-mtls-validate"
  [ -z "$added" ] || fail "a container of the orders pod adds capabilities in CNI mode: $added"
  psa=$(k get namespace shop -o jsonpath='{.metadata.labels.pod-security\.kubernetes\.io/enforce}')
  [ "$psa" = restricted ] || fail "namespace shop enforces '$psa', want restricted"
else
  [ "$first" = kube-mtls-init ] || fail "the orders pod's first init container is '$first', want kube-mtls-init"
fi
if [ -n "${RULES_OUT:-}" ]; then
  pod_nat_rules shop "$orders" >"$RULES_OUT"
  echo "orders' nat rules: $RULES_OUT ($(grep -c KUBE_MTLS "$RULES_OUT") lines name KUBE_MTLS)"
fi

log "check: the allowed caller's plaintext call leaves as mTLS and the app sees who called"
body=$(call web "$URL/hello")
grep -q 'URI=spiffe://cluster.local/ns/web/sa/front' <<<"$body" || fail "no caller identity in: $body"

log "check: a caller not on the allow-list gets 403"
code=$(call batch -o /dev/null -w '%{http_code}' "$URL/hello")
[ "$code" = 403 ] || fail "batch/cron got HTTP $code, want 403"

log "check: a plaintext caller without a sidecar gets nothing"
if call plain "$URL/hello"; then
  fail "a plaintext call reached the app"
fi

log "check: the app's probes pass through the sidecar (the pod is Ready)"
k -n shop wait pod -l app=orders --for=condition=Ready --timeout=60s

log "check: a Job with the sidecar completes and its pod ends"
k -n shop wait job/report --for=condition=Complete --timeout=180s
phase=$(k -n shop get pods -l job-name=report -o jsonpath='{.items[0].status.phase}')
[ "$phase" = Succeeded ] || fail "the Job's pod is $phase, want Succeeded"

log "check: re-issuance under traffic"
"$here/rotate.sh"

if [ "${CA_ROTATION:-0}" = 1 ]; then
  log "check: a rotation of the CA's key under traffic costs no call"
  HELM=$HELM "$here/ca-rotation.sh"
fi

log "check: deleting a pod lets the request in flight finish, within the grace period"
pod=$(k -n shop get pods -l app=orders -o jsonpath='{.items[0].metadata.name}')
out=$(mktemp)
call web -o /dev/null -w '%{http_code}' "$URL/slow?ms=5000" >"$out" 2>&1 &
inflight=$!
in_app() { k -n shop logs "$pod" -c app | grep -q 'answering /slow'; }
wait_for 30 "the slow request to reach the app" in_app
k -n shop delete pod "$pod" --wait=false
k -n shop wait pod "$pod" --for=delete --timeout=40s || fail "$pod did not end within its grace period"
wait "$inflight" || true
[ "$(cat "$out")" = 200 ] || fail "the request in flight got '$(cat "$out")', want 200"
rm -f "$out"
k -n shop rollout status deployment/orders --timeout=120s

if cni_mode; then
  check_repair
fi

log "check: helm uninstall and the README's clean-up leave nothing behind"
k delete -f "$here/manifests.yaml" --wait=true --timeout=120s
$HELM uninstall kube-mtls --namespace kube-mtls --wait
k delete certificates.cert-manager.io -A -l app.kubernetes.io/managed-by=kube-mtls
k delete crd mtlsprofiles.kube-mtls.io
left=$(k get mutatingwebhookconfigurations,clusterroles,clusterrolebindings,clusterissuers.cert-manager.io -o name | grep kube-mtls || true)
[ -z "$left" ] || fail "left behind: $left"
left=$(k get certificates.cert-manager.io -A -l app.kubernetes.io/managed-by=kube-mtls -o name)
[ -z "$left" ] || fail "Certificates left behind: $left"
if cni_mode; then
  check_cni_removed
fi

log "all end-to-end checks passed"
