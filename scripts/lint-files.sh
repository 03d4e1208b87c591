#!/usr/bin/env bash
# Lints: shellcheck on every shell script, hadolint on the Dockerfiles.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t scripts < <(git ls-files -co --exclude-standard '*.sh' .ci/run)
shellcheck "${scripts[@]}"
echo "shellcheck: ${#scripts[@]} scripts"
hadolint Dockerfile.webhook Dockerfile.sidecar e2e/cluster/test-app.Dockerfile
echo "hadolint: Dockerfile.webhook Dockerfile.sidecar e2e/cluster/test-app.Dockerfile"
