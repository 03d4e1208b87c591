#!/usr/bin/env bash
# Builds the real control-plane and node binaries the e2e cluster test runs,
# from published Go modules pinned (with committed go.sum) under e2e/cluster/go/:
#   etcd                     go/etcd        go.etcd.io/etcd/server/v3
#   kube-apiserver,          go/kubernetes  k8s.io/kubernetes
#   kube-controller-manager,
#   kubectl, kube-scheduler,
#   kubelet, kube-proxy
#   coredns                  go/coredns     our main over github.com/coredns/coredns
#   cert-manager-controller, go/cert-manager  our own mains over
#   cert-manager-cainjector                   github.com/cert-manager/cert-manager
# and copies cert-manager's CRDs (plain YAML, deploy/crds of the same module).
#
# Output: $KUBE_MTLS_CLUSTER_BIN (default <repo>/target/cluster/bin) holds the
# binaries; the CRDs go to $KUBE_MTLS_CLUSTER_BIN/cert-manager-crds/.
# A binary is rebuilt only when it is older than its module's go.mod, go.sum,
# .go files or this script, so a second run takes seconds. Modules are built
# with -mod=readonly: a stale go.sum fails the build instead of being fixed up.
# GOCACHE/GOMODCACHE/GOPROXY are honoured if set (Go's defaults otherwise).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
gomods="$here/go"
out=${KUBE_MTLS_CLUSTER_BIN:-$repo/target/cluster/bin}

if ! command -v go >/dev/null 2>&1; then
	echo "e2e/cluster/build.sh: ERROR: 'go' not found on PATH." >&2
	echo "  Go >= 1.26 is needed to build the e2e control plane (etcd, kube-apiserver, cert-manager)." >&2
	exit 1
fi

# Use the installed Go; never download another toolchain.
export GOTOOLCHAIN=local
# Static binaries, and no C compiler needed.
export CGO_ENABLED=0

mkdir -p "$out"
out=$(cd "$out" && pwd)

goflags=(-mod=readonly -trimpath -buildvcs=false)

# Seconds since the epoch, fractional with bash >= 5.
now() {
	local t=${EPOCHREALTIME:-$(date +%s)}
	printf '%s' "${t/,/.}"
}
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

# up_to_date TARGET MODULE_DIR: TARGET exists and is newer than every input.
up_to_date() {
	local target=$1 moddir=$2 f
	[[ -x $target ]] || return 1
	[[ $here/build.sh -nt $target ]] && return 1
	while IFS= read -r -d '' f; do
		[[ $f -nt $target ]] && return 1
	done < <(find "$moddir" \( -name '*.go' -o -name go.mod -o -name go.sum \) -print0)
	return 0
}

# build NAME MODULE_DIR PACKAGE [extra go build args...]
build() {
	local name=$1 moddir=$2 pkg=$3 start
	shift 3
	local target="$out/$name"
	if up_to_date "$target" "$moddir"; then
		echo "==> $name: up to date"
		return 0
	fi
	echo "==> $name: building $pkg"
	start=$(now)
	if ! (cd "$moddir" && go build "${goflags[@]}" "$@" -o "$target" "$pkg"); then
		echo "e2e/cluster/build.sh: ERROR: building $name ($pkg in ${moddir#"$repo"/}) failed" >&2
		exit 1
	fi
	# go build may leave an identical binary untouched; mark it as fresh.
	touch "$target"
	echo "==> $name: built in $(elapsed "$start")"
}

total_start=$(now)
echo "Go: $(go version); output: $out"

# --- etcd --------------------------------------------------------------------
build etcd "$gomods/etcd" . -ldflags "-s -w"

# --- Kubernetes --------------------------------------------------------------
k8s_mod="$gomods/kubernetes"
k8s_version=$(cd "$k8s_mod" && go list -mod=readonly -m -f '{{.Version}}' k8s.io/kubernetes)
if [[ ! $k8s_version =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]]; then
	echo "e2e/cluster/build.sh: ERROR: unexpected k8s.io/kubernetes version '$k8s_version'" >&2
	exit 1
fi
k8s_major=${BASH_REMATCH[1]}
k8s_minor=${BASH_REMATCH[2]}
# Without these the binaries report v0.0.0, which breaks version-checking clients.
k8s_ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	k8s_ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=$k8s_major -X $p.gitMinor=$k8s_minor -X $p.gitTreeState=clean"
done
for cmd in kube-apiserver kube-controller-manager kubectl kube-scheduler kubelet kube-proxy; do
	build "$cmd" "$k8s_mod" "k8s.io/kubernetes/cmd/$cmd" -ldflags "$k8s_ldflags"
done

# --- CoreDNS: the cluster DNS, with only the plugins it needs -----------------
build coredns "$gomods/coredns" . -ldflags "-s -w"

# --- cert-manager ------------------------------------------------------------
cm_mod="$gomods/cert-manager"
build cert-manager-controller "$cm_mod" ./controller -ldflags "-s -w"
build cert-manager-cainjector "$cm_mod" ./cainjector -ldflags "-s -w"

# CRDs: deploy/crds/*.yaml of the pinned module are plain YAML (no Helm
# templating; same specs as the Helm chart's CRD templates).
cm_dir=$(cd "$cm_mod" && go mod download github.com/cert-manager/cert-manager &&
	go list -mod=readonly -m -f '{{.Dir}}' github.com/cert-manager/cert-manager)
crd_out="$out/cert-manager-crds"
rm -rf "$crd_out"
mkdir -p "$crd_out"
cp "$cm_dir"/deploy/crds/*.yaml "$crd_out/"
chmod u+w "$crd_out"/*.yaml # the module cache is read-only
echo "==> cert-manager CRDs: $(find "$crd_out" -name '*.yaml' | wc -l) files in $crd_out"

echo "Done in $(elapsed "$total_start")."
