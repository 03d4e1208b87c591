#!/usr/bin/env bash
# Builds the container images the e2e cluster test's kubelet runs, with no
# Docker engine and no registry: buildah builds them into private storage
# and writes each to an OCI archive that `ctr -n k8s.io images import` loads.
#
#   image                                     built from
#   docker.io/library/debian:bookworm-slim    debootstrap (minbase, slimmed like
#                                             the official image); the base of
#                                             the three below
#   ghcr.io/kube-mtls/kube-mtls-sidecar:e2e   Dockerfile.sidecar  } the users'
#   ghcr.io/kube-mtls/kube-mtls-webhook:e2e   Dockerfile.webhook  } Dockerfiles,
#                                             with BINARIES=prebuilt (and for
#                                             the webhook BASE=debian:bookworm-slim)
#   docker.io/kube-mtls/test-app:e2e          e2e/cluster/test-app.Dockerfile
#   registry.k8s.io/pause:3.10                e2e/cluster/pause.c, static
#   docker.io/kube-mtls/coredns:e2e           the coredns binary of build.sh
#
# The Rust binaries are not compiled in a container: they are taken from
# $KUBE_MTLS_IMAGE_BINARIES (default <repo>/target/debug; target/release works
# too), which must already hold kube-mtls-sidecar, kube-mtls-init,
# kube-mtls-cni, kube-mtls-webhook and kube-mtls-test-app (cargo build
# --workspace --bins). kube-mtls-cni need not be static here: the agent copies
# it onto this same machine, whose libc it was linked against.
#
# Output, under $KUBE_MTLS_IMAGES (default <repo>/target/cluster/images):
#   sidecar.tar webhook.tar test-app.tar pause.tar coredns.tar   OCI archives
#   cache/      the debootstrapped base rootfs, a tarball keyed by mirror and
#               suite (delete it, or set KUBE_MTLS_IMAGES_REFRESH=1, to refresh)
#   storage/    buildah's image store, with its layer cache
#   context/    the build context: copies of the binaries
# A second run reuses the base and the cached layers, and rewrites an archive
# only when its image changed, so it takes seconds.
#
# Needs root (debootstrap, buildah's storage). Installs buildah, debootstrap,
# gcc and libc6-dev with apt-get when they are missing. Needs the Debian mirror
# ($KUBE_MTLS_DEBIAN_MIRROR, default http://deb.debian.org/debian): the base,
# and apt-get in the sidecar and test app builds (run on the host network).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
out=${KUBE_MTLS_IMAGES:-$repo/target/cluster/images}
bins=${KUBE_MTLS_IMAGE_BINARIES:-$repo/target/debug}
mirror=${KUBE_MTLS_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security_mirror=${KUBE_MTLS_DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
suite=bookworm

base_image=docker.io/library/debian:bookworm-slim
sidecar_image=ghcr.io/kube-mtls/kube-mtls-sidecar:e2e
webhook_image=ghcr.io/kube-mtls/kube-mtls-webhook:e2e
test_app_image=docker.io/kube-mtls/test-app:e2e
pause_image=registry.k8s.io/pause:3.10
coredns_image=docker.io/kube-mtls/coredns:e2e

die() {
	echo "e2e/cluster/images.sh: ERROR: $*" >&2
	exit 1
}

# Seconds since the epoch, fractional with bash >= 5.
now() {
	local t=${EPOCHREALTIME:-$(date +%s)}
	printf '%s' "${t/,/.}"
}
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }'; }

[[ $(id -u) == 0 ]] || die "must run as root (debootstrap and buildah's storage need it)"

# --- Tools -------------------------------------------------------------------
missing=()
command -v buildah >/dev/null 2>&1 || missing+=(buildah)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
# A C compiler and a static libc, for pause.
if ! command -v cc >/dev/null 2>&1; then
	missing+=(gcc libc6-dev)
elif [[ $(cc -print-file-name=libc.a) != /* ]]; then
	missing+=(libc6-dev)
fi
if ((${#missing[@]})); then
	command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
	echo "==> installing ${missing[*]} (apt-get)"
	start=$(now)
	if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null; }; then
		die "apt-get install ${missing[*]} failed"
	fi
	echo "==> installed in $(elapsed "$start")"
fi

for b in kube-mtls-sidecar kube-mtls-init kube-mtls-cni kube-mtls-webhook kube-mtls-test-app; do
	[[ -x $bins/$b ]] || die "$bins/$b not found: build the binaries first (cargo build --workspace --bins), or set KUBE_MTLS_IMAGE_BINARIES"
done

mkdir -p "$out/cache" "$out/storage" "$out/context"
out=$(cd "$out" && pwd)

# buildah with a private store, so nothing else on the machine is touched.
# overlay needs a backing filesystem that is not itself overlayfs; vfs works
# anywhere (slower, larger).
driver=${KUBE_MTLS_IMAGES_STORAGE_DRIVER:-}
if [[ -z $driver ]]; then
	if [[ $(stat -f -c %T "$out/storage") == overlayfs ]]; then driver=vfs; else driver=overlay; fi
fi
# Its run state (locks, mount counts) belongs on tmpfs, one per store.
runroot=/run/kube-mtls-images-$(sha256sum <<<"$out" | cut -c1-8)
bh() {
	buildah --root "$out/storage" --runroot "$runroot" --storage-driver "$driver" "$@"
}

# buildah 1.28 leaves a working container (and its overlay mount) behind for
# a stage that is only a COPY --from source; an interrupted build leaves more.
# Nothing else uses this store: remove them all, now and on exit, so no mount
# outlives the script (it would make `cargo clean` fail).
bh rm --all >/dev/null 2>&1 || true
trap 'bh rm --all >/dev/null 2>&1 || true' EXIT

total_start=$(now)
echo "buildah $(buildah --version | awk '{print $3}'), storage $driver; binaries: $bins; output: $out"

# --- Base: debian:bookworm-slim from debootstrap -----------------------------
# Keyed by what makes the rootfs: the mirrors, the suite, this recipe's version.
recipe=1
key=$(printf '%s %s %s %s' "$mirror" "$security_mirror" "$suite" "$recipe" | sha256sum | cut -c1-12)
base_tar=$out/cache/debian-$suite-minbase-$key.tar

make_rootfs() {
	local dir=$1
	if ! debootstrap --variant=minbase "$suite" "$dir" "$mirror" >"$out/cache/debootstrap.log" 2>&1; then
		tail -n 20 "$out/cache/debootstrap.log" >&2
		die "debootstrap $suite from $mirror failed (log: $out/cache/debootstrap.log)"
	fi
	# Slim it like the official -slim image: no docs, man pages or locales, now
	# or in packages installed later; no apt caches or package lists.
	cat >"$dir/etc/dpkg/dpkg.cfg.d/docker" <<-'EOF'
		path-exclude /usr/share/doc/*
		path-include /usr/share/doc/*/copyright
		path-exclude /usr/share/man/*
		path-exclude /usr/share/groff/*
		path-exclude /usr/share/info/*
		path-exclude /usr/share/lintian/*
		path-exclude /usr/share/linda/*
		path-exclude /usr/share/locale/*
	EOF
	cat >"$dir/etc/apt/apt.conf.d/docker-clean" <<-'EOF'
		DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
		Dir::Cache::pkgcache "";
		Dir::Cache::srcpkgcache "";
	EOF
	echo 'Acquire::Languages "none";' >"$dir/etc/apt/apt.conf.d/docker-no-languages"
	echo 'APT::AutoRemove::SuggestsImportant "false";' >"$dir/etc/apt/apt.conf.d/docker-autoremove-suggests"
	# Services never start in a build.
	printf '#!/bin/sh\nexit 101\n' >"$dir/usr/sbin/policy-rc.d"
	chmod 755 "$dir/usr/sbin/policy-rc.d"
	rm -f "$dir/etc/apt/sources.list"
	cat >"$dir/etc/apt/sources.list.d/debian.sources" <<-EOF
		Types: deb
		URIs: $mirror
		Suites: $suite $suite-updates
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

		Types: deb
		URIs: $security_mirror
		Suites: $suite-security
		Components: main
		Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
	EOF
	find "$dir/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
	find "$dir/usr/share/doc" -mindepth 1 -type d -empty -delete
	rm -rf "${dir:?}"/usr/share/{man,groff,info,lintian,linda,locale}/* \
		"${dir:?}"/var/cache/apt/archives/*.deb "${dir:?}"/var/cache/apt/*.bin \
		"${dir:?}"/var/lib/apt/lists/* "${dir:?}"/var/log/*.log "${dir:?}"/dev/* \
		"${dir:?}"/tmp/* "${dir:?}"/run/* "${dir:?}"/debootstrap
	# The runtime provides these.
	: >"$dir/etc/resolv.conf"
	: >"$dir/etc/hostname"
}

if [[ -s $base_tar && ${KUBE_MTLS_IMAGES_REFRESH:-0} != 1 ]]; then
	echo "==> base rootfs: cached ($(basename "$base_tar"))"
else
	echo "==> base rootfs: debootstrap --variant=minbase $suite $mirror"
	start=$(now)
	rootfs=$out/cache/rootfs.tmp
	rm -rf "$rootfs"
	make_rootfs "$rootfs"
	tar --numeric-owner --xattrs -C "$rootfs" -cf "$base_tar.tmp" .
	mv "$base_tar.tmp" "$base_tar"
	rm -rf "$rootfs"
	echo "==> base rootfs: built in $(elapsed "$start")"
fi

# The base image carries the key of the rootfs it was made from.
label=io.kube-mtls.e2e.rootfs
have=$(bh inspect --type image --format "{{index .OCIv1.Config.Labels \"$label\"}}" "$base_image" 2>/dev/null || true)
if [[ $have == "$key" ]]; then
	echo "==> $base_image: up to date"
else
	echo "==> $base_image: importing the rootfs"
	start=$(now)
	c=$(bh from --pull=never scratch)
	bh add "$c" "$base_tar" / >/dev/null
	bh config --os linux --arch "$(dpkg --print-architecture)" \
		--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
		--cmd bash --label "$label=$key" "$c"
	bh commit --quiet --rm "$c" "$base_image" >/dev/null
	echo "==> $base_image: imported in $(elapsed "$start")"
fi

# --- Build context: the binaries ----------------------------------------------
ctx=$out/context
rm -rf "$ctx"
mkdir -p "$ctx"
for b in kube-mtls-sidecar kube-mtls-init kube-mtls-cni kube-mtls-webhook kube-mtls-test-app; do
	# A hard link is instant; cargo replaces, never rewrites, its outputs.
	ln -f "$bins/$b" "$ctx/$b" 2>/dev/null || cp -p "$bins/$b" "$ctx/$b"
done

# archive NAME IMAGE: writes $out/NAME.tar unless it already holds this image.
archive() {
	local name=$1 image=$2 id start tar=$out/$1.tar
	id=$(bh inspect --type image --format '{{.FromImageID}}' "$image")
	if [[ -s $tar && -f $tar.id && $(<"$tar.id") == "$id" ]]; then
		echo "==> $image: $name.tar up to date"
		return 0
	fi
	start=$(now)
	rm -f "$tar" "$tar.id"
	if ! bh push --quiet "$image" "oci-archive:$tar.tmp:$image" >/dev/null; then
		die "writing $tar failed"
	fi
	mv "$tar.tmp" "$tar"
	echo "$id" >"$tar.id"
	echo "==> $image: wrote $name.tar ($(du -h "$tar" | cut -f1)) in $(elapsed "$start")"
}

# build NAME IMAGE DOCKERFILE "BINARIES..." [buildah bud args...]
build() {
	local name=$1 image=$2 file=$3 binaries=$4 start b fp log=$out/$1.build.log
	shift 4
	# What the build reads: skip it (and hashing the binaries for buildah's
	# layer cache) when none of it changed. cargo replaces a binary it
	# rebuilds, so its inode and mtime change.
	fp=$(
		cat "$file"
		printf '%s\n' "$@"
		bh inspect --type image --format '{{.FromImageID}}' "$base_image"
		for b in $binaries; do stat -L -c "$b %s %i %.9Y" "$bins/$b"; done
	)
	fp=$(sha256sum <<<"$fp" | cut -c1-64)
	if [[ -f $out/$name.inputs && $(<"$out/$name.inputs") == "$fp" ]] &&
		bh inspect --type image "$image" >/dev/null 2>&1; then
		echo "==> $image: up to date"
	else
		echo "==> $image: building ${file#"$repo"/}"
		start=$(now)
		rm -f "$out/$name.inputs"
		# chroot isolation and the host network: no runc and no CNI in the build.
		if ! bh bud --isolation chroot --network host --pull=never --layers \
			--format oci --file "$file" --tag "$image" "$@" "$ctx" >"$log" 2>&1; then
			tail -n 30 "$log" >&2
			die "building $image from ${file#"$repo"/} failed (log: $log)"
		fi
		echo "$fp" >"$out/$name.inputs"
		echo "==> $image: built in $(elapsed "$start")"
	fi
	archive "$name" "$image"
}

build sidecar "$sidecar_image" "$repo/Dockerfile.sidecar" "kube-mtls-sidecar kube-mtls-init kube-mtls-cni" \
	--build-arg BINARIES=prebuilt
build webhook "$webhook_image" "$repo/Dockerfile.webhook" kube-mtls-webhook \
	--build-arg BINARIES=prebuilt --build-arg BASE="$base_image"
build test-app "$test_app_image" "$here/test-app.Dockerfile" kube-mtls-test-app

# scratch_image NAME IMAGE BINARY PATH [buildah config args...]: an image of one
# static binary at PATH (its entrypoint), rebuilt only when the binary changed.
scratch_image() {
	local name=$1 image=$2 bin=$3 path=$4 sum have c
	shift 4
	sum=$(sha256sum "$bin" | cut -c1-12)
	have=$(bh inspect --type image --format '{{index .OCIv1.Config.Labels "io.kube-mtls.e2e.binary"}}' "$image" 2>/dev/null || true)
	if [[ $have == "$sum" ]]; then
		echo "==> $image: up to date"
	else
		echo "==> $image: from $bin"
		c=$(bh from --pull=never scratch)
		bh copy --chmod 755 "$c" "$bin" "$path" >/dev/null
		bh config --os linux --arch "$(dpkg --print-architecture)" --entrypoint "[\"$path\"]" \
			--label "io.kube-mtls.e2e.binary=$sum" "$@" "$c"
		bh commit --quiet --rm "$c" "$image" >/dev/null
	fi
	archive "$name" "$image"
}

# --- Pause: a static C program that exits on SIGTERM and reaps zombies -------
pause_bin=$out/cache/pause
if [[ ! -x $pause_bin || $here/pause.c -nt $pause_bin ]]; then
	cc -static -Os -s -Wall -Wextra -Werror -o "$pause_bin" "$here/pause.c" ||
		die "compiling e2e/cluster/pause.c failed (static glibc: libc6-dev)"
fi
scratch_image pause "$pause_image" "$pause_bin" /pause --user 65535:65535

# --- CoreDNS: the cluster DNS, from e2e/cluster/build.sh's static binary -------
coredns_bin=${KUBE_MTLS_CLUSTER_BIN:-$repo/target/cluster/bin}/coredns
[[ -x $coredns_bin ]] || die "$coredns_bin is missing: run e2e/cluster/build.sh first"
scratch_image coredns "$coredns_image" "$coredns_bin" /coredns

# Images the new ones replaced (their cached layers stay until unused).
bh rm --all >/dev/null 2>&1 || true
bh rmi --prune >/dev/null 2>&1 || true

echo "images built in $(elapsed "$total_start"):"
for n in sidecar webhook test-app pause coredns; do
	echo "  $out/$n.tar"
done
