#!/usr/bin/env bash
# Short fuzz runs: builds every cargo-fuzz target in fuzz/ and runs each for
# FUZZ_SECONDS (default 15) from a scratch copy of its checked-in seeds, one
# libFuzzer process at a time. Fails on any crash, leak, timeout or OOM; the
# input that failed is printed and kept in fuzz/artifacts/<target>/.
#
# cargo-fuzz passes nightly-only -Z flags (the sanitizer); RUSTC_BOOTSTRAP=1
# makes the stable toolchain accept them. cargo-fuzz is installed from
# crates.io when absent.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-15}"
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "-- installing cargo-fuzz"
  timeout 900 cargo install --locked cargo-fuzz
fi

cd fuzz
echo "-- building the fuzz targets"
timeout 1500 nice -n 10 cargo fuzz build

scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
for target in $(cargo fuzz list); do
  mkdir -p "$scratch/$target"
  cp corpus/"$target"/seed-* "$scratch/$target/"
  echo "-- $target: ${seconds}s"
  # The first corpus directory receives what the run finds: the scratch copy,
  # so the checked-in seeds stay as they are.
  log="$scratch/$target.log"
  status=0
  timeout $((seconds + 120)) nice -n 10 cargo fuzz run "$target" "$scratch/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1 || status=$?
  grep -E '^(stat::number_of_executed_units|stat::average_exec_per_sec|#[0-9]+ +DONE)' "$log" || true
  if [ "$status" -ne 0 ]; then
    tail -n 60 "$log"
    echo "!! $target failed (exit $status); reproduce with:"
    echo "   cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $target artifacts/$target/<file>"
    exit 1
  fi
done
echo "-- every fuzz target ran ${seconds}s without a crash"
