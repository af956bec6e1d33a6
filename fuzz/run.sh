#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 20); fails on the first crash,
# leak of a panic, or timeout. The committed seeds in corpus/<target>/ are copied to a scratch
# directory first, so the inputs a run discovers never dirty the tree; a crashing input is left
# in artifacts/<target>/ (both ignored by git).
#
# Runs on the stable toolchain with plain cargo: the instrumentation flags below are the ones
# `cargo fuzz build --sanitizer none` passes (libFuzzer's coverage counters, compare tracing,
# `--cfg fuzzing`), so cargo-fuzz is not needed, and a fresh machine does not spend minutes
# installing it. No sanitizer (the targets are safe Rust); debug assertions and overflow checks
# on, so a panic or an arithmetic overflow is a crash. The `fuzz` profile (Cargo.toml) trades
# some executions per second for a build several times faster than cargo-fuzz's
# one-codegen-unit release build, which matters for a bounded run in CI; FUZZ_PROFILE=release
# builds that way instead, for long runs.
#
#   fuzz/run.sh                     # all targets, 20 s each
#   FUZZ_SECONDS=300 fuzz/run.sh jwks retry_after
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"
profile="${FUZZ_PROFILE:-fuzz}"
triple="$(rustc -vV | sed -n 's/^host: //p')"

# Every [[bin]] of the manifest is a target.
mapfile -t all_targets < <(awk '/^\[\[bin\]\]/ { b = 1; next } /^\[/ { b = 0 }
  b && /^name *=/ { gsub(/.*= *"|".*/, ""); print }' Cargo.toml)
targets=("$@")
if ((${#targets[@]} == 0)); then
  targets=("${all_targets[@]}")
fi

rustflags=(
  -Cpasses=sancov-module
  -Cllvm-args=-sanitizer-coverage-level=4
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters
  -Cllvm-args=-sanitizer-coverage-pc-table
  -Cllvm-args=-sanitizer-coverage-trace-compares
  -Cllvm-args=-sanitizer-coverage-stack-depth
  -Cllvm-args=-simplifycfg-branch-fold-threshold=0
  --cfg fuzzing
  -Cdebug-assertions
)
# `--target` keeps these flags away from build scripts and proc macros, as cargo-fuzz does.
RUSTFLAGS="${rustflags[*]} ${RUSTFLAGS:-}" \
  cargo build --target "$triple" --profile "$profile" --bins --target-dir target
bin_dir="target/$triple/$profile"

mkdir -p scratch artifacts
summary=()
for target in "${targets[@]}"; do
  corpus="scratch/$target"
  rm -rf "$corpus"
  mkdir -p "$corpus" "artifacts/$target"
  cp corpus/"$target"/* "$corpus"/
  log="scratch/$target.log"
  echo "fuzz: $target for ${seconds}s"
  if ! "$bin_dir/$target" "$corpus" \
    -max_total_time="$seconds" -max_len=16384 -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="artifacts/$target/" >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/ (add it to fuzz/corpus/$target/ once fixed)" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  summary+=("$(printf '%-14s %10s executions in %ss' "$target" "${runs:-?}" "$seconds")")
done
printf 'fuzz: %s\n' "${summary[@]}"
