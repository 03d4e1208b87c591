# One entry point for every check CI runs; `make test` is the command README.md shows.
CARGO ?= cargo

.PHONY: test deps demo demo-down fmt-check clippy generated-check cargo-test cluster-test chart-check lint-files generate fuzz

test: deps fmt-check clippy generated-check cargo-test chart-check lint-files fuzz cluster-test

# Installs what the tests need (Debian packages, helm, linters) when missing,
# or names the missing tool and the command that installs it.
deps:
	scripts/install-deps.sh

# kube-mtls on a real local cluster (no Docker), left running; see README.md.
demo:
	e2e/demo.sh up

demo-down:
	e2e/demo.sh down

fmt-check:
	$(CARGO) fmt --all -- --check

clippy:
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

# Generated files (CRD YAML, rendered manifests) must match what the generators write.
generated-check:
	scripts/check-generated.sh

# The netns tests run the real binaries; `cargo test` builds only the binaries of
# crates that have integration tests of their own, so build all of them first.
cargo-test:
	$(CARGO) build --workspace --bins --locked
	KUBE_MTLS_REQUIRE_NETNS=1 $(CARGO) test --workspace --locked

# The cluster tests: a real control plane (etcd, kube-apiserver,
# kube-controller-manager, cert-manager) built from pinned Go modules, then
# helm install, annotate, and injected pods serving mTLS; then the end-to-end
# scenario on a real node (kubelet, containerd, kube-proxy, CoreDNS) with
# images built from the Dockerfiles, in both modes: init container, then CNI
# (the chart's node agent chains kube-mtls-cni after the node's bridge).
# Needs root, Go and containerd.
cluster-test:
	e2e/cluster/build.sh
	$(CARGO) build --workspace --bins --locked
	e2e/cluster/images.sh
	$(CARGO) test -p kube-mtls-tests --test cluster --test node --locked -- --ignored --nocapture --test-threads=1

# cargo-fuzz targets (fuzz/, nightly toolchain), 20 s each from the committed
# corpora, plus every input in fuzz/regressions/; see fuzz/README.md.
fuzz:
	scripts/fuzz.sh

# helm lint, helm template, strict schema validation, values.schema.json cases.
chart-check:
	scripts/check-chart.sh

# shellcheck for scripts, hadolint for Dockerfiles.
lint-files:
	scripts/lint-files.sh

# Regenerates every generated file.
generate:
	scripts/generate.sh
