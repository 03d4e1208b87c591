# The e2e cluster test's app image (docker.io/kube-mtls/test-app:e2e): the
# kube-mtls-test-app echo server (tests/src/bin/kube-mtls-test-app.rs), and
# curl for the pods that call it. Built by e2e/cluster/images.sh on its local
# debian:bookworm-slim; the build context is the directory holding the binary.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY kube-mtls-test-app /usr/local/bin/kube-mtls-test-app
ENTRYPOINT ["/usr/local/bin/kube-mtls-test-app"]
CMD ["8080"]
