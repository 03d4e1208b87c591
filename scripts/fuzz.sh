#!/usr/bin/env bash
# Fuzzes kube-mtls for a bounded time (CI runs it; so can anyone): builds every
# cargo-fuzz target in fuzz/ with the nightly toolchain, runs each one for
# KUBE_MTLS_FUZZ_SECONDS from its committed seed corpus (fuzz/corpus/<target>),
# and fails if any target crashes, printing the crashing input and the command
# that reproduces it. See fuzz/README.md for what each target checks.
#
# The committed corpus is only read: libFuzzer writes new entries into the first
# corpus directory it is given, which here is a temporary one, so a run never
# dirties the tree. KUBE_MTLS_FUZZ_MERGE=1 instead merges what a run found into
# fuzz/corpus/ (only inputs that add coverage), for committing.
#
# Environment:
#   KUBE_MTLS_FUZZ_SECONDS    fuzzing time per target (default 20; 6 targets ~ 2 min)
#   KUBE_MTLS_FUZZ_TARGETS    space-separated subset of targets (default: all)
#   KUBE_MTLS_FUZZ_SANITIZER  none (default) or address: safe Rust gains little
#                             from ASan, and it slows the cold build and each run
#   KUBE_MTLS_FUZZ_MERGE      1: merge new coverage into fuzz/corpus/
#
# Needs: rustup with a nightly toolchain (libFuzzer's instrumentation is
# nightly-only), and cargo-fuzz, which this installs into ~/.cargo/bin if missing.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${KUBE_MTLS_FUZZ_SECONDS:-20}"
sanitizer="${KUBE_MTLS_FUZZ_SANITIZER:-none}"
merge="${KUBE_MTLS_FUZZ_MERGE:-0}"
cargo_fuzz_version=0.13.2

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "fuzz.sh: no nightly toolchain; install one with: rustup toolchain install nightly --profile minimal" >&2
  exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
  echo "fuzz.sh: installing cargo-fuzz ${cargo_fuzz_version} into ~/.cargo/bin"
  cargo install cargo-fuzz --version "${cargo_fuzz_version}" --locked
fi
export PATH="${HOME}/.cargo/bin:${PATH}"

# fuzz/Cargo.lock is committed: refuse to build with other versions than it names.
if ! cargo +nightly fetch --locked --quiet; then
  echo "fuzz.sh: fuzz/Cargo.lock is out of date (a workspace crate's dependencies changed?)." >&2
  echo "  Fix: (cd fuzz && cargo +nightly update --workspace) and commit fuzz/Cargo.lock" >&2
  exit 1
fi

if [[ -n "${KUBE_MTLS_FUZZ_TARGETS:-}" ]]; then
  read -r -a targets <<<"${KUBE_MTLS_FUZZ_TARGETS}"
else
  mapfile -t targets < <(cargo +nightly fuzz list)
fi

build_flags=(--sanitizer "${sanitizer}" --debug-assertions)
started=${SECONDS}
cargo +nightly fuzz build "${build_flags[@]}"
echo "fuzz.sh: built ${#targets[@]} targets (sanitizer ${sanitizer}) in $((SECONDS - started)) s"

triple="$(rustc +nightly -vV | sed -n 's/^host: //p')"
bin_dir="target/${triple}/release"
work="$(mktemp -d)"
trap 'rm -rf "${work}"' EXIT

failed=()
for t in "${targets[@]}"; do
  new="${work}/corpus/${t}"
  artifacts="${work}/artifacts/${t}"
  mkdir -p "${new}" "${artifacts}" "corpus/${t}"
  args=(
    -max_total_time="${seconds}"
    -timeout=10
    -artifact_prefix="${artifacts}/"
    -print_final_stats=1
  )
  if [[ -f "dicts/${t}.dict" ]]; then
    args+=(-dict="dicts/${t}.dict")
  fi
  log="${work}/${t}.log"
  # Inputs of issues fuzzing found (fuzz/README.md): each runs once, and must pass.
  regressions=()
  if [[ -d "regressions/${t}" ]]; then
    mapfile -t regressions < <(find "regressions/${t}" -type f | sort)
  fi
  if ((${#regressions[@]})) && ! "${bin_dir}/${t}" "${regressions[@]}" >"${log}" 2>&1; then
    failed+=("${t}")
    echo "fuzz.sh: ${t}: a regression input fails:" >&2
    grep -A3 -E 'panicked|^Running' "${log}" | tail -n 40 >&2
    continue
  fi
  echo "fuzz.sh: ${t}: fuzzing for ${seconds} s"
  if "${bin_dir}/${t}" "${args[@]}" "${new}" "corpus/${t}" >"${log}" 2>&1; then
    runs="$(sed -n 's/^stat::number_of_executed_units: *//p' "${log}")"
    echo "fuzz.sh: ${t}: ok, ${runs:-?} runs, $(find "${new}" -type f | wc -l) new corpus entries"
  else
    failed+=("${t}")
    echo "fuzz.sh: ${t}: FAILED; libFuzzer's output:" >&2
    grep -v -E '^#[0-9]+' "${log}" | tail -n 60 >&2
    mkdir -p "artifacts/${t}"
    for f in "${artifacts}"/*; do
      [[ -e "${f}" ]] || continue
      cp "${f}" "artifacts/${t}/"
      kept="fuzz/artifacts/${t}/$(basename "${f}")"
      echo "fuzz.sh: ${t}: crashing input: ${kept} (base64: $(base64 -w0 "${f}" | head -c 2000))" >&2
      echo "  reproduce: (cd fuzz && cargo +nightly fuzz run ${build_flags[*]} ${t} ${kept#fuzz/})" >&2
      echo "  show it:   (cd fuzz && cargo +nightly fuzz fmt ${build_flags[*]} ${t} ${kept#fuzz/})" >&2
      echo "  minimize:  (cd fuzz && cargo +nightly fuzz tmin ${build_flags[*]} ${t} ${kept#fuzz/})" >&2
    done
  fi
  if [[ "${merge}" == 1 ]]; then
    "${bin_dir}/${t}" -merge=1 "corpus/${t}" "${new}" >"${work}/${t}.merge.log" 2>&1
    echo "fuzz.sh: ${t}: merged into fuzz/corpus/${t} ($(find "corpus/${t}" -type f | wc -l) entries)"
  fi
done

if ((${#failed[@]})); then
  echo "fuzz.sh: ${#failed[@]} of ${#targets[@]} targets crashed: ${failed[*]}" >&2
  exit 1
fi
echo "fuzz.sh: all ${#targets[@]} targets ran ${seconds} s each without a crash"
