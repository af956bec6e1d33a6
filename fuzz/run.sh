#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS (default 20); fails on the first crash,
# leak of a panic, or timeout. The committed seeds in corpus/<target>/ are copied to a scratch
# directory first, so the inputs a run discovers never dirty the tree; a crashing input is left
# in artifacts/<target>/ (both ignored by git).
#
# Runs on the stable toolchain: no sanitizer (`--sanitizer none` needs no -Z flags), with
# debug assertions and overflow checks on, so a panic or an arithmetic overflow is a crash.
#
#   fuzz/run.sh                     # all targets, 20 s each
#   FUZZ_SECONDS=300 fuzz/run.sh jwks retry_after
set -euo pipefail
cd "$(dirname "$0")"

seconds="${FUZZ_SECONDS:-20}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

targets=("$@")
if ((${#targets[@]} == 0)); then
  mapfile -t targets < <(cargo fuzz list)
fi

flags=(--sanitizer none --debug-assertions --target-dir target)
cargo fuzz build "${flags[@]}"

mkdir -p scratch artifacts
summary=()
for target in "${targets[@]}"; do
  corpus="scratch/$target"
  rm -rf "$corpus"
  mkdir -p "$corpus" "artifacts/$target"
  cp corpus/"$target"/* "$corpus"/
  log="scratch/$target.log"
  echo "fuzz: $target for ${seconds}s"
  # The binary cargo fuzz built above, run directly: `cargo fuzz run` would rebuild first, and
  # every target would then test whatever the sources were at that moment.
  if ! "target/x86_64-unknown-linux-gnu/release/$target" "$corpus" \
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
