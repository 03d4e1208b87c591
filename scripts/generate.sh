#!/usr/bin/env bash
# Regenerates every generated file. With an argument, writes them under that
# directory instead of the checkout (check-generated.sh compares the two).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.}

# The MtlsProfile CRD, from the Rust types in webhook/src (schemars).
mkdir -p "$out/crds" "$out/charts/kube-mtls/crds"
cargo run --quiet --locked -p kube-mtls-webhook -- crd > "$out/crds/mtlsprofile.yaml"
cp "$out/crds/mtlsprofile.yaml" "$out/charts/kube-mtls/crds/mtlsprofile.yaml"

# The injection contract page, from the contract crate and the webhook's flags.
mkdir -p "$out/docs"
cargo run --quiet --locked -p kube-mtls-webhook --example contract-doc > "$out/docs/contract.md"

# Plain manifests rendered from the chart with default values, for GitOps users.
if [ -x scripts/render-manifests.sh ]; then
  scripts/render-manifests.sh "$out"
fi
