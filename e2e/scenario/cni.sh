# shellcheck shell=bash
# The scenario's checks that look at the node itself, and those of CNI mode
# (sourced by run.sh after steps.sh):
# - pod_nat_rules: the nat table of a pod's network namespace, as the node
#   sees it, so a test can compare the rules of the two modes;
# - check_cni_installed: the node agent put the binary into CNI_BIN_DIR and
#   its entry into a configuration of CNI_CONF_DIR (which also shows that
#   the later checks of their absence look at the right place);
# - check_repair: a pod created while the plugin is off its node is held by
#   its kube-mtls-validate container (exit 97, the app never starts) and,
#   once the node agent is back, repaired (Ready, with a `Repaired` Event);
# - check_cni_removed: after helm uninstall the node's CNI configuration has
#   no kube-mtls-cni entry, its bin dir no binary, and a new pod starts.
#
# ON_NODE: a command prefix that runs a command on the node (e.g. `docker
# exec <kind node>`); empty when this machine is the node (tests/tests/node).
read -ra on_node_cmd <<<"${ON_NODE:-}"
on_node() { "${on_node_cmd[@]}" "$@"; }
AGENT_PODS=app.kubernetes.io/component=cni-agent
VALIDATE=kube-mtls-validate
# The exit code of kube-mtls-validate when the pod's traffic is not redirected.
VALIDATION_FAILED=97

# pod_netns NAMESPACE POD: the node's network namespace holding POD's address.
pod_netns() {
  local ip n
  ip=$(k -n "$1" get pod "$2" -o jsonpath='{.status.podIP}')
  [ -n "$ip" ] || fail "$1/$2 has no IP"
  for n in $(on_node ls /var/run/netns); do
    if on_node nsenter --net="/var/run/netns/$n" ip -4 -o addr show 2>/dev/null | grep -qF " $ip/"; then
      echo "/var/run/netns/$n"
      return 0
    fi
  done
  fail "no network namespace under the node's /var/run/netns has $1/$2's address $ip"
}

# pod_nat_rules NAMESPACE POD: the nat tables (IPv4 and IPv6, nft and legacy)
# of POD's network namespace that hold kube-mtls rules, without counters and
# comments (which carry dates), so that two captures compare equal when the
# rules are.
pod_nat_rules() {
  local netns save rules found=0
  netns=$(pod_netns "$1" "$2")
  for save in iptables-nft-save iptables-legacy-save ip6tables-nft-save ip6tables-legacy-save; do
    rules=$(on_node nsenter --net="$netns" "$save" -t nat 2>/dev/null | sed -e '/^#/d' -e 's/\[[0-9]*:[0-9]*\]/[0:0]/' || true)
    if grep -q KUBE_MTLS <<<"$rules"; then
      printf '## %s -t nat\n%s\n' "$save" "$rules"
      found=1
    else
      printf '## %s -t nat: no KUBE_MTLS chain\n' "$save"
    fi
  done
  [ "$found" = 1 ] || fail "$1/$2's network namespace has no KUBE_MTLS rules"
}

# The node's CNI configuration files that name kube-mtls-cni as a plugin.
cni_entry_files() {
  # shellcheck disable=SC2016 # expanded by the node's shell
  on_node sh -c 'grep -lE "\"type\" *: *\"kube-mtls-cni\"" "$1"/*.conf "$1"/*.conflist 2>/dev/null' _ "$CNI_CONF_DIR" || true
}
no_agent_pods() { [ -z "$(k -n kube-mtls get pods -l "$AGENT_PODS" -o name)" ]; }

# validate_exits POD: the exit codes of kube-mtls-validate's current and
# previous run in shop/POD, those that ended.
validate_exits() {
  local s="{.status.initContainerStatuses[?(@.name==\"$VALIDATE\")]"
  k -n shop get pod "$1" -o jsonpath="$s.state.terminated.exitCode} $s.lastState.terminated.exitCode}"
}
repaired() { [ -n "$(k -n shop get events --field-selector "involvedObject.name=$1,reason=Repaired" -o name)" ]; }
validation_failed() { [[ " $(validate_exits "$1") " == *" $VALIDATION_FAILED "* ]]; }

# A restricted-compliant pod of shop, opted in, with nothing else to wait for.
early_pod() {
  k apply -f - <<'POD'
apiVersion: v1
kind: Pod
metadata:
  name: early
  namespace: shop
  labels: {kube-mtls.io/inject: enabled}
spec:
  serviceAccountName: orders
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: docker.io/kube-mtls/test-app:e2e
      imagePullPolicy: IfNotPresent
      securityContext: {runAsNonRoot: true, runAsUser: 1000, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}
      args: ["8080"]
POD
}

# The node agent off the node (a nodeSelector no node has) or back on it.
agent_off() {
  k -n kube-mtls patch ds kube-mtls-cni -p '{"spec":{"template":{"spec":{"nodeSelector":{"kube-mtls.io/e2e-no-such-node":"true"}}}}}'
  wait_for 120 "the node agent to leave the node" no_agent_pods
}
agent_on() {
  k -n kube-mtls patch ds kube-mtls-cni -p '{"spec":{"template":{"spec":{"nodeSelector":{"kube-mtls.io/e2e-no-such-node":null}}}}}'
  k -n kube-mtls rollout status ds/kube-mtls-cni --timeout=120s
}

check_cni_installed() {
  local files
  log "check: the node agent installed kube-mtls-cni into $CNI_BIN_DIR and chained it in $CNI_CONF_DIR"
  on_node test -x "$CNI_BIN_DIR/kube-mtls-cni" || fail "check (install): no executable $CNI_BIN_DIR/kube-mtls-cni on the node"
  files=$(cni_entry_files)
  [ -n "$files" ] || fail "check (install): no configuration in $CNI_CONF_DIR names kube-mtls-cni"
  echo "kube-mtls-cni is chained in $files"
}

check_repair() {
  local left app started
  log "check (repair): the node agent leaves the node and takes its conflist entry with it"
  agent_off
  left=$(cni_entry_files)
  [ -z "$left" ] || fail "check (repair): the node agent has left, but kube-mtls-cni is still in $left"

  log "check (repair): a pod created without the plugin is held by $VALIDATE (exit $VALIDATION_FAILED)"
  early_pod
  if ! (wait_for 120 "shop/early's $VALIDATE to exit $VALIDATION_FAILED" validation_failed early); then
    fail "check (repair): shop/early's $VALIDATE did not exit $VALIDATION_FAILED (exit codes: '$(validate_exits early)'): $(k -n shop get pod early -o jsonpath='{.status}')"
  fi
  app=$(k -n shop get pod early -o jsonpath='{.status.containerStatuses[?(@.name=="app")].state}')
  started=$(k -n shop get pod early -o jsonpath='{.status.containerStatuses[?(@.name=="app")].lastState.terminated}{.status.containerStatuses[?(@.name=="app")].state.running}{.status.containerStatuses[?(@.name=="app")].state.terminated}')
  [ -z "$started" ] || fail "check (repair): shop/early's app container ran without redirect rules: $app"
  echo "shop/early: $VALIDATE exited $VALIDATION_FAILED; its app container has not started: $app"

  log "check (repair): the node agent comes back and repairs shop/early in place"
  agent_on
  k -n shop wait pod/early --for=condition=Ready --timeout=180s ||
    fail "check (repair): shop/early did not become Ready after the agent came back: $(k -n shop get pod early -o jsonpath='{.status}')"
  if ! (wait_for 30 "a Repaired Event on shop/early" repaired early); then
    fail "check (repair): shop/early became Ready with no Repaired Event; its Events: $(k -n shop get events --field-selector involvedObject.name=early -o custom-columns='REASON:.reason,MESSAGE:.message' --no-headers | tr '\n' ';')"
  fi
  k -n shop get events --field-selector involvedObject.name=early,reason=Repaired \
    -o custom-columns='REASON:.reason,FROM:.reportingComponent,MESSAGE:.message'
  k -n shop delete pod early --wait=false
}

check_cni_removed() {
  local left
  log "check (uninstall): the node agent removed its conflist entry and its binary"
  wait_for 120 "the node agent's pods to end" no_agent_pods
  left=$(cni_entry_files)
  [ -z "$left" ] || fail "check (uninstall): kube-mtls-cni is still in $left"
  if on_node test -e "$CNI_BIN_DIR/kube-mtls-cni"; then
    fail "check (uninstall): $CNI_BIN_DIR/kube-mtls-cni is still on the node"
  fi

  log "check (uninstall): a new pod still starts"
  k apply -f - <<'POD'
apiVersion: v1
kind: Pod
metadata: {name: after-uninstall, namespace: default}
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: app
      image: docker.io/kube-mtls/test-app:e2e
      imagePullPolicy: IfNotPresent
      securityContext: {runAsNonRoot: true, runAsUser: 1000, allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}, seccompProfile: {type: RuntimeDefault}}
      args: ["8080"]
POD
  k -n default wait pod/after-uninstall --for=condition=Ready --timeout=120s ||
    fail "check (uninstall): a new pod did not start after helm uninstall: $(k -n default get pod after-uninstall -o jsonpath='{.status}')"
  k -n default delete pod after-uninstall --wait=true --timeout=60s
}
