#!/usr/bin/env bash
# A rotation of the workload CA's key under traffic (issue 22, README
# "Rotating the workload CA"), part of e2e/scenario/run.sh when CA_ROTATION=1
# (the node test's default-mode pass). Two call loops run throughout:
#   - web/client (front) -> orders:8080, HTTP: the caller's sidecar keeps its
#     mTLS connection to orders pooled, as a busy caller does;
#   - web/worker (a third workload, identity worker) -> orders:9090, a port
#     orders proxies as raw TCP (kube-mtls.io/tcp-ports); each call asks the
#     app to close (/close), which ends the tunnel, so every call is a fresh
#     mTLS handshake in both directions with whatever certificates and
#     bundle the two sidecars hold at that moment.
# Steps:
#   1. rotate the CA key (helm upgrade --reuse-values --set workloadCA.rotation);
#      the master and the namespaces' bundles hold both CAs, and every
#      sidecar involved trusts 2 CAs (its metrics);
#   2. re-issue orders: its sidecar serves the new serial;
#   3. re-issue the callers (front, worker): the same; and every other workload
#      certificate (batch/cron, helm test's), so nothing is left on the old CA;
#   4. retire the old CA (the master's kube-mtls.io/retire annotation): every
#      sidecar trusts 1 CA;
#   5. no call of either loop failed; the caller's old certificate (from the old
#      CA, saved before step 3) is accepted by orders before step 4 and
#      refused after it, presented straight to orders' pod (from plain/client,
#      which has no sidecar) and counted by orders as untrusted_issuer.
# `kubectl mtls check` (KUBECTL_MTLS, default `kubectl mtls`) is logged at the
# start and the end; its warnings do not fail the script.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=e2e/scenario/lib.sh
. "$here/lib.sh"
CHART=${CHART:-$(cd "$here/../../charts/kube-mtls" && pwd)}
HELM=${HELM:-helm}
KUBECTL_MTLS=${KUBECTL_MTLS:-kubectl mtls}
ROTATION=${CA_ROTATION_VALUE:-e2e-$(date +%s)}
TCP_URL=http://orders.shop.svc.cluster.local:9090
HTTP_URL=http://orders.shop.svc.cluster.local:8080

ca_secret() { k -n cert-manager get secret kube-mtls-ca -o jsonpath='{.data.tls\.crt}'; }
fingerprint() { base64 -d | openssl x509 -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr 'A-F' 'a-f'; }
serial_of() { base64 -d | openssl x509 -noout -serial | cut -d= -f2; }
mtls_check() {
  log "kubectl mtls check ($1)"
  $KUBECTL_MTLS check 2>&1 || echo "(kubectl mtls check exited $?; its warnings and failures do not fail this script)"
}

# --- The third workload: web/worker, calling orders' TCP port --------------
log "CA rotation: the third workload web/worker (calls orders' TCP port 9090)"
k apply -f - <<'YAML'
apiVersion: v1
kind: ServiceAccount
metadata: {name: worker, namespace: web}
---
apiVersion: v1
kind: Pod
metadata:
  name: worker
  namespace: web
  annotations: {kube-mtls.io/outbound-ports: "9090"}
spec:
  serviceAccountName: worker
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: docker.io/kube-mtls/test-app:e2e
      imagePullPolicy: IfNotPresent
      securityContext: {runAsNonRoot: true, runAsUser: 1000, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}
      command: ["sleep", "infinity"]
YAML
k -n web wait pod/worker --for=condition=Ready --timeout=180s

orders=$(k -n shop get pods -l app=orders -o jsonpath='{.items[0].metadata.name}')
orders_ip=$(k -n shop get pod "$orders" -o jsonpath='{.status.podIP}')
# The sidecars involved: namespace/pod.
SIDECARS=("shop/$orders" web/client web/worker batch/client)
metrics() { # namespace/pod: that pod's sidecar metrics
  k -n "${1%%/*}" exec "${1#*/}" -c app -- curl -sS --max-time 5 127.0.0.1:15020/metrics
}
trusted_cas() { metrics "$1" | grep -c '^kube_mtls_sidecar_trusted_ca_expiry_seconds{' || true; }
all_trust() { # N: every sidecar involved lists N trusted CAs
  local s
  for s in "${SIDECARS[@]}"; do [ "$(trusted_cas "$s")" = "$1" ] || return 1; done
}
served_serial() {
  metrics "$1" | sed -n 's/^kube_mtls_sidecar_certificate_info{serial="\([0-9A-F]*\)"} 1$/\1/p'
}
failures() { # namespace/pod: its handshake failures, both directions, all reasons
  metrics "$1" | awk '/^kube_mtls_sidecar_handshake_failures_total\{/ {n += $NF} END {print n + 0}'
}
untrusted_inbound() {
  metrics "$1" | sed -n 's/^kube_mtls_sidecar_handshake_failures_total{direction="inbound",reason="untrusted_issuer"} //p'
}
bundle_cas() { # namespace configmap: how many CAs its ca-bundle.crt holds
  k -n "$1" get configmap "$2" -o jsonpath='{.data.ca-bundle\.crt}' | grep -c 'BEGIN CERTIFICATE' || true
}
bundles_hold() { # N: the master and the workload namespaces' copies hold N CAs
  local ns
  [ "$(bundle_cas kube-mtls kube-mtls-trust-bundle)" = "$1" ] || return 1
  for ns in shop web batch; do [ "$(bundle_cas "$ns" kube-mtls-trust)" = "$1" ] || return 1; done
}
handshakes_ok() { # namespace/pod: mTLS handshakes its sidecar completed
  metrics "$1" | sed -n 's/^kube_mtls_sidecar_handshakes_total{result="ok"} //p'
}
reissue() { # namespace certificate: as `cmctl renew` does
  local now
  now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  k -n "$1" patch certificate "$2" --subresource=status --type=json -p \
    "[{\"op\":\"add\",\"path\":\"/status/conditions/-\",\"value\":{\"type\":\"Issuing\",\"status\":\"True\",\"reason\":\"ManuallyTriggered\",\"message\":\"e2e CA rotation\",\"lastTransitionTime\":\"$now\"}}]" >/dev/null
}
leaf() { k -n "$1" get secret "$2" -o jsonpath='{.data.tls\.crt}'; }
# reissue_and_serve NAMESPACE CERTIFICATE SIDECAR...: re-issues, waits until
# the Secret changed and each SIDECAR (namespace/pod) serves the new serial,
# which a CA signed whose fingerprint is $new_fp.
reissue_and_serve() {
  local ns=$1 cert=$2 before want issuer s; shift 2
  before=$(leaf "$ns" "$cert-tls")
  reissue "$ns" "$cert"
  changed() { [ "$(leaf "$ns" "$cert-tls")" != "$before" ]; }
  wait_for 120 "cert-manager to re-issue $ns/$cert" changed
  want=$(leaf "$ns" "$cert-tls" | serial_of)
  issuer=$(leaf "$ns" "$cert-tls" | base64 -d | openssl x509 -noout -issuer)
  echo "$ns/$cert re-issued: serial $want ($issuer)"
  leaf "$ns" "$cert-tls" | base64 -d >"$work/leaf.pem"
  openssl verify -CAfile "$work/new-ca.pem" "$work/leaf.pem" >/dev/null ||
    fail "$ns/$cert's new certificate is not signed by the new CA"
  for s in "$@"; do
    serves() { [ "$(served_serial "$s")" = "$want" ]; }
    wait_for 120 "$s's sidecar to serve $ns/$cert's new serial $want" serves
    echo "$s's sidecar serves $want"
  done
}
# Every sidecar's handshake failures so far, to compare at the end, and
# orders' handshakes: the TCP loop's calls must each have been one.
declare -A failed_before
for s in "${SIDECARS[@]}"; do failed_before[$s]=$(failures "$s"); done
handshakes_before=$(handshakes_ok "shop/$orders")

work=$(mktemp -d)
old_ca=$(ca_secret)
old_fp=$(fingerprint <<<"$old_ca")
echo "the workload CA now: $old_fp ($(base64 -d <<<"$old_ca" | openssl x509 -noout -subject))"
mtls_check "before the rotation"
wait_for 60 "every sidecar to trust the 1 CA" all_trust 1

# --- The loops --------------------------------------------------------------
# loop POD URL FILE: calls URL from web/POD until /tmp/ca-stop exists, one HTTP
# status per line into FILE (000: no answer).
loop() {
  k -n web exec "$1" -c app -- sh -c "rm -f /tmp/ca-stop $3; while [ ! -e /tmp/ca-stop ]; do
    curl -s -o /dev/null --max-time 10 -w '%{http_code}\n' $2 >>$3
  done"
}
loop client "$HTTP_URL/during-ca-rotation" /tmp/ca-http &
http_loop=$!
loop worker "$TCP_URL/close" /tmp/ca-tcp &
tcp_loop=$!
stop_loops() {
  k -n web exec client -c app -- touch /tmp/ca-stop >/dev/null 2>&1 || true
  k -n web exec worker -c app -- touch /tmp/ca-stop >/dev/null 2>&1 || true
}
trap 'stop_loops; kill "$http_loop" "$tcp_loop" 2>/dev/null || true; rm -rf "$work"' EXIT
count() { k -n web exec "$1" -c app -- sh -c "cat $2 2>/dev/null | wc -l"; }
bad() { k -n web exec "$1" -c app -- sh -c "grep -vc '^200\$' $2 2>/dev/null || true"; }
# progress STEP: both loops made 5 more calls since the last progress, and none failed yet.
declare -A mark=([http]=0 [tcp]=0)
progress() {
  local step=$1 n b
  for l in http:client:/tmp/ca-http tcp:worker:/tmp/ca-tcp; do
    IFS=: read -r name pod file <<<"$l"
    more() { [ "$(count "$pod" "$file")" -ge $((mark[$name] + 5)) ]; }
    wait_for 60 "5 more $name calls ($step)" more
    n=$(count "$pod" "$file")
    b=$(bad "$pod" "$file")
    [ "$b" = 0 ] || fail "$b of $n $name calls failed by $step: $(k -n web exec "$pod" -c app -- sort "$file" | uniq -c | tr '\n' ' ')"
    mark[$name]=$n
  done
  echo "$step: ${mark[http]} HTTP and ${mark[tcp]} TCP calls so far, none failed"
}
progress "before the rotation"

# --- 1. A new CA key --------------------------------------------------------
log "CA rotation 1/4: helm upgrade --reuse-values --set workloadCA.rotation=$ROTATION"
$HELM upgrade kube-mtls "$CHART" --namespace kube-mtls --reuse-values --set "workloadCA.rotation=$ROTATION" >/dev/null
ca_changed() { [ "$(ca_secret)" != "$old_ca" ]; }
wait_for 120 "cert-manager to issue the CA again (cert-manager/kube-mtls-ca's tls.crt)" ca_changed
new_ca=$(ca_secret)
new_fp=$(fingerprint <<<"$new_ca")
base64 -d <<<"$new_ca" >"$work/new-ca.pem"
base64 -d <<<"$old_ca" >"$work/old-ca.pem"
cmp -s <(openssl x509 -in "$work/old-ca.pem" -noout -pubkey) <(openssl x509 -in "$work/new-ca.pem" -noout -pubkey) &&
  fail "the CA was issued again with the same key"
echo "the new CA: $new_fp ($(openssl x509 -in "$work/new-ca.pem" -noout -subject)), a new key"
wait_for 120 "the master and the shop, web and batch bundles to hold both CAs" bundles_hold 2
wait_for 180 "every sidecar to trust both CAs (kubelet refreshes the ConfigMap volume)" all_trust 2
progress "both CAs trusted"

# --- 2. The server ----------------------------------------------------------
log "CA rotation 2/4: re-issue the server (shop/orders)"
reissue_and_serve shop kube-mtls-orders "shop/$orders"
progress "the server re-issued"

# --- 3. The callers ---------------------------------------------------------
log "CA rotation 3/4: re-issue the callers (web/front, web/worker), then every other workload certificate"
leaf web kube-mtls-front-tls | base64 -d >"$work/old.crt"
k -n web get secret kube-mtls-front-tls -o jsonpath='{.data.tls\.key}' | base64 -d >"$work/old.key"
openssl verify -CAfile "$work/old-ca.pem" "$work/old.crt" >/dev/null ||
  fail "the caller's saved certificate is not from the old CA"
reissue_and_serve web kube-mtls-front web/client
reissue_and_serve web kube-mtls-worker web/worker
reissue_and_serve batch kube-mtls-cron batch/client
# Every other workload certificate too (README: `cmctl renew --all`), e.g. that
# of `helm test`'s pod, which has ended: nothing is left on the old CA.
for c in $(k get certificates.cert-manager.io -A -l app.kubernetes.io/managed-by=kube-mtls \
  -o jsonpath='{range .items[*]}{.metadata.namespace}/{.metadata.name}{" "}{end}'); do
  case $c in shop/kube-mtls-orders | web/kube-mtls-front | web/kube-mtls-worker | batch/kube-mtls-cron) continue ;; esac
  reissue_and_serve "${c%%/*}" "${c#*/}"
done
progress "the callers re-issued"

# The caller's old certificate, presented straight to orders' pod from a pod
# without a sidecar: -k, since only whether orders takes the client
# certificate is in question. PATH: the app container's.
k -n plain exec -i client -c app -- sh -c 'cat >/tmp/old.crt' <"$work/old.crt"
k -n plain exec -i client -c app -- sh -c 'umask 077; cat >/tmp/old.key' <"$work/old.key"
old_cert_call() {
  k -n plain exec client -c app -- curl -sS -k --max-time 10 --cert /tmp/old.crt --key /tmp/old.key \
    -o /dev/null -w '%{http_code}' "https://$orders_ip:8080/old-ca-certificate"
}
log "check: before retirement, orders accepts the caller's certificate from the old CA (control)"
code=$(old_cert_call) || fail "orders refused the old CA's certificate before its retirement (curl: $code)"
[ "$code" = 200 ] || fail "the old CA's certificate got HTTP $code before retirement, want 200"
echo "accepted: HTTP $code"
mtls_check "every workload re-issued, the old CA not yet retired"

# --- 4. Retire the old CA ---------------------------------------------------
log "CA rotation 4/4: retire the old CA ($old_fp)"
k -n kube-mtls annotate configmap kube-mtls-trust-bundle "kube-mtls.io/retire=$old_fp" --overwrite >/dev/null
wait_for 120 "the master and the shop, web and batch bundles to hold only the new CA" bundles_hold 1
wait_for 180 "every sidecar to trust 1 CA" all_trust 1
k -n shop get configmap kube-mtls-trust -o jsonpath='{.data.ca-bundle\.crt}' >"$work/bundle.pem"
openssl x509 -in "$work/bundle.pem" -noout -fingerprint -sha256 | cut -d= -f2 | tr -d : | tr 'A-F' 'a-f' |
  grep -qx "$new_fp" || fail "shop's bundle after retirement is not the new CA $new_fp"
progress "the old CA retired"

# --- 5. No failed call; the old CA's certificate is refused -----------------
log "check: after retirement, orders refuses the caller's certificate from the old CA"
refused_before=$(untrusted_inbound "shop/$orders")
if out=$(old_cert_call 2>&1); then
  fail "orders accepted a certificate from the retired CA: HTTP $out"
fi
echo "refused: $(tr '\n' ' ' <<<"$out")"
refused_more() { [ "$(untrusted_inbound "shop/$orders")" -gt "${refused_before:-0}" ]; }
wait_for 20 "orders to count the refusal as untrusted_issuer" refused_more
echo "orders' sidecar: $(k -n shop logs "$orders" -c kube-mtls-sidecar --since=2m | grep 'client certificate refused' | tail -1)"
k -n plain exec client -c app -- rm -f /tmp/old.crt /tmp/old.key

stop_loops
wait "$http_loop" "$tcp_loop"
for l in HTTP:client:/tmp/ca-http TCP:worker:/tmp/ca-tcp; do
  IFS=: read -r name pod file <<<"$l"
  codes=$(k -n web exec "$pod" -c app -- cat "$file")
  total=$(wc -l <<<"$codes")
  failed=$(grep -vc '^200$' <<<"$codes" || true)
  [ "$failed" = 0 ] || fail "$failed of $total $name calls failed during the CA rotation: $(sort <<<"$codes" | uniq -c | tr '\n' ' ')"
  echo "$name calls ($pod -> orders) during the CA rotation: $total, none failed"
  [ "$name" = TCP ] && tcp_total=$total
done
handshakes=$(($(handshakes_ok "shop/$orders") - handshakes_before))
[ "$handshakes" -ge "$tcp_total" ] ||
  fail "orders completed $handshakes mTLS handshakes during the rotation, fewer than the $tcp_total TCP calls: the TCP loop did not handshake on every call"
echo "orders completed $handshakes mTLS handshakes during the rotation (each TCP call was one)"
# No handshake failed on the way, but the one refusal above.
for s in "${SIDECARS[@]}"; do
  now=$(failures "$s")
  allowed=${failed_before[$s]}
  [ "$s" = "shop/$orders" ] && allowed=$((allowed + 1))
  [ "$now" -le "$allowed" ] ||
    fail "$s counted $((now - failed_before[$s])) handshake failures during the rotation: $(metrics "$s" | grep '^kube_mtls_sidecar_handshake_failures_total{' | grep -v ' 0$' | tr '\n' ' ')"
done
mtls_check "after the rotation"
k -n web delete pod worker --wait=false >/dev/null
log "CA rotation: 0 failed calls; the retired CA's certificate is refused"
