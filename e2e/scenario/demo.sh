#!/usr/bin/env bash
# What `make demo` shows, on a running cluster with cert-manager and the
# images: helm install kube-mtls, the scenario's app and callers
# (manifests.yaml), then three calls and their outcomes in a few lines:
# the allowed caller's identity as the app saw it, a caller not on the
# allow-list refused with 403, a plaintext caller refused outright; and the
# pods' certificates with their expiry. Every outcome is checked, not just
# printed. Output of the steps goes to $DEMO_LOG.
#
#   KUBECTL, HELM: the commands (default kubectl, helm); TAG: image tag (e2e).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
HELM=${HELM:-helm}
TAG=${TAG:-e2e}
DEMO_LOG=${DEMO_LOG:-/dev/null}
# shellcheck source=e2e/scenario/lib.sh
. "$here/lib.sh"
# shellcheck source=e2e/scenario/steps.sh
. "$here/steps.sh"
say() { printf '    %s\n' "$*"; }

install_chart >>"$DEMO_LOG" 2>&1 || fail "helm install kube-mtls failed: see $DEMO_LOG"
say "kube-mtls installed: $(k -n kube-mtls get deployment kube-mtls-webhook -o jsonpath='{.status.readyReplicas}') webhook replica(s) ready"
deploy_workloads >>"$DEMO_LOG" 2>&1 || fail "the demo's workloads did not start: see $DEMO_LOG"
allow=$(k -n shop get deployment orders -o jsonpath='{.spec.template.metadata.annotations.kube-mtls\.io/allowed-clients}')
say "shop/orders runs with the sidecar; it allows $allow"
echo

# 1. web/front is on the allow-list: its plaintext call leaves as mTLS.
body=$(call web -w '\n%{http_code}' "$URL/hello")
code=$(tail -n1 <<<"$body")
caller=$(grep -o 'URI=spiffe://[^;",\\]*' <<<"$body" | tail -n1 || true)
{ [ "$code" = 200 ] && [ -n "$caller" ]; } || fail "web/front's call: HTTP $code, body: $body"
say "web/front   -> orders: HTTP $code; the app saw the caller as $caller"

# 2. batch/cron has a certificate but is not on the allow-list.
code=$(call batch -o /dev/null -w '%{http_code}' "$URL/hello" || true)
[ "$code" = 403 ] || fail "batch/cron's call got HTTP $code, want 403"
say "batch/cron  -> orders: HTTP 403, not on the allow-list"

# 3. plain/client has no sidecar: plaintext never reaches the app.
if err=$(call plain "$URL/hello" 2>&1); then
  fail "a plaintext call reached the app: $err"
fi
say "plain/client (no sidecar, plaintext) -> orders: refused, nothing reached the app (curl: $(sed -n 's/^curl: ([0-9]*) //p' <<<"$err" | head -n1))"
echo

say "the workloads' certificates (cert-manager):"
k get certificates.cert-manager.io -A -l app.kubernetes.io/managed-by=kube-mtls \
  -o custom-columns='NAMESPACE:.metadata.namespace,IDENTITY:.spec.uris[0],EXPIRES:.status.notAfter,RENEWS:.status.renewalTime' |
  sed 's/^/      /'
