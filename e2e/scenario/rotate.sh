#!/usr/bin/env bash
# Re-issuance under traffic, part of e2e/scenario/run.sh: while web/client
# calls orders in a loop, cert-manager re-issues orders' certificate (as
# `cmctl renew` asks it to: an Issuing condition), kubelet updates the Secret
# volume, the sidecar reloads it and serves the new certificate (its serial,
# from the sidecar's metrics); no call fails.
set -euo pipefail
# shellcheck source=e2e/scenario/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

secret=kube-mtls-orders-tls
pod=$(k -n shop get pods -l app=orders -o jsonpath='{.items[0].metadata.name}')
cert() { k -n shop get secret "$secret" -o jsonpath='{.data.tls\.crt}'; }
metric() { # name{labels}: its value in orders' sidecar
  k -n shop exec "$pod" -c app -- curl -s 127.0.0.1:15020/metrics | sed -n "s/^$1 //p"
}
before=$(cert)
reloads=$(metric 'kube_mtls_sidecar_certificate_reloads_total{result="ok"}')
reloads=${reloads:-0}

k -n web exec client -c app -- sh -c 'rm -f /tmp/stop /tmp/codes'
k -n web exec client -c app -- sh -c 'while [ ! -e /tmp/stop ]; do
  curl -s -o /dev/null --max-time 10 -w "%{http_code}\n" http://orders.shop.svc.cluster.local:8080/during-rotation >>/tmp/codes
done' &
loop=$!
# The loop ends with this script, also when a check fails.
trap 'k -n web exec client -c app -- touch /tmp/stop >/dev/null 2>&1 || true; kill "$loop" 2>/dev/null || true' EXIT
calls() { k -n web exec client -c app -- sh -c 'cat /tmp/codes 2>/dev/null | wc -l'; }
at_least() { [ "$(calls)" -ge "$1" ]; }
wait_for 60 "calls before re-issuance" at_least 5

now=$(date -u +%Y-%m-%dT%H:%M:%SZ)
k -n shop patch certificate kube-mtls-orders --subresource=status --type=json -p \
  "[{\"op\":\"add\",\"path\":\"/status/conditions/-\",\"value\":{\"type\":\"Issuing\",\"status\":\"True\",\"reason\":\"ManuallyTriggered\",\"message\":\"e2e re-issuance\",\"lastTransitionTime\":\"$now\"}}]"
changed() { [ "$(cert)" != "$before" ]; }
wait_for 120 "cert-manager to re-issue $secret" changed
reloaded() { [ "$(metric 'kube_mtls_sidecar_certificate_reloads_total{result="ok"}')" -gt "$reloads" ] 2>/dev/null; }
wait_for 180 "kubelet to update the Secret volume and the sidecar to reload it" reloaded

# The certificate the sidecar now serves is the new one: its serial is the new one's.
want=$(cert | base64 -d | openssl x509 -noout -serial | cut -d= -f2)
old_serial=$(base64 -d <<<"$before" | openssl x509 -noout -serial | cut -d= -f2)
[ "$want" != "$old_serial" ] || fail "cert-manager re-issued with the same serial $want"
served=$(k -n shop exec "$pod" -c app -- curl -s 127.0.0.1:15020/metrics |
  sed -n 's/^kube_mtls_sidecar_certificate_info{serial="\([0-9A-F]*\)"} 1$/\1/p')
[ "$served" = "$want" ] || fail "the sidecar serves serial '$served', want the new certificate's $want (the old one was $old_serial)"
echo "the sidecar serves the new serial $served (was $old_serial)"

at_reload=$(calls)
wait_for 60 "calls after the reload" at_least $((at_reload + 5))
k -n web exec client -c app -- touch /tmp/stop
wait "$loop"
codes=$(k -n web exec client -c app -- cat /tmp/codes)
failed=$(grep -vc '^200$' <<<"$codes" || true)
total=$(wc -l <<<"$codes")
[ "$failed" = 0 ] || fail "$failed of $total calls failed during re-issuance: $(sort <<<"$codes" | uniq -c | tr '\n' ' ')"
echo "re-issued; $total calls, none failed"
