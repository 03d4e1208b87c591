# shellcheck shell=bash
# What the scenario's scripts share (sourced by run.sh and rotate.sh):
# kubectl as $KUBECTL, how a check fails, and polling with a deadline.
KUBECTL=${KUBECTL:-kubectl}
k() { $KUBECTL "$@"; }
# Each step with the seconds since the script started, for where the time goes.
log() { printf '==> %s (at %ss)\n' "$*" "$SECONDS"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }
# wait_for SECONDS WHAT COMMAND...: polls COMMAND until it succeeds.
wait_for() {
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 0.5
  done
}
