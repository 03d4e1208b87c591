#!/usr/bin/env bash
# Chart checks: helm lint, helm template with every good values file, strict
# schema validation of every rendered object Kubernetes itself defines, and
# values.schema.json refusing bad values with a message that names the field.
set -euo pipefail
cd "$(dirname "$0")/.."
chart=charts/kube-mtls
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

helm lint --strict "$chart"
for values in "$chart"/ci/*-values.yaml; do
  helm lint --strict "$chart" -f "$values"
done

# Kinds the Kubernetes schema does not know (CRDs of cert-manager, Prometheus
# Operator, our own) are skipped by name, and said so.
validate() {
  local rendered=$1 name=$2
  python3 - "$rendered" "$work/$name.core.yaml" <<'PY'
import sys, yaml
skip = {"Certificate", "Issuer", "ClusterIssuer", "ServiceMonitor"}
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
keep = [d for d in docs if d.get("kind") not in skip]
skipped = sorted({d["kind"] for d in docs if d.get("kind") in skip})
print(f"  {len(keep)} objects validated, skipped custom kinds: {', '.join(skipped) or 'none'}")
yaml.safe_dump_all(keep, open(sys.argv[2], "w"))
PY
  kubernetes-validate --strict --quiet -k 1.33.0 "$work/$name.core.yaml"
  kubernetes-validate --strict --quiet -k 1.29.0 "$work/$name.core.yaml"
}

echo "render: default values"
helm template kube-mtls "$chart" --namespace kube-mtls --include-crds > "$work/default.yaml"
validate "$work/default.yaml" default
for values in "$chart"/ci/*-values.yaml; do
  name=$(basename "$values" .yaml)
  echo "render: $name"
  helm template kube-mtls "$chart" --namespace kube-mtls -f "$values" > "$work/$name.yaml"
  validate "$work/$name.yaml" "$name"
done

# Rendering is deterministic: the same input renders byte for byte the same.
helm template kube-mtls "$chart" --namespace kube-mtls --include-crds > "$work/again.yaml"
cmp -s "$work/default.yaml" "$work/again.yaml" || { echo "chart rendering is not deterministic" >&2; exit 1; }
if grep -nE '\{\{[^}]*\b(genCA|genSelfSignedCert|genPrivateKey|randAlphaNum|randAscii|randNumeric|uuidv4|now)\b' -r "$chart"/templates; then
  echo "templates must not generate certificates or random values" >&2
  exit 1
fi

status=0
for bad in tests/chart-values/bad-*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$bad")
  if out=$(helm template kube-mtls "$chart" -f "$bad" 2>&1); then
    echo "FAIL: $bad rendered, but values.schema.json should refuse it" >&2
    status=1
  elif ! grep -qF -- "$expect" <<<"$out"; then
    echo "FAIL: $bad refused without naming '$expect':" >&2
    echo "$out" >&2
    status=1
  else
    echo "refused as expected: $bad"
  fi
done
exit $status
