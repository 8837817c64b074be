#!/usr/bin/env bash
# A bounded fuzzing run of every target in fuzz/ (cargo-fuzz, libFuzzer), as the test suite
# runs it: build once, then each target for FUZZ_SECONDS (default 15) from its seed corpus in
# fuzz/corpus/<target>/. Fails when a target crashes, and says where the crashing input is
# and how to replay it. docs/fuzzing.md describes the targets and the long runs.
#
#   bash scripts/fuzz-smoke.sh                    # all targets
#   FUZZ_SECONDS=60 bash scripts/fuzz-smoke.sh sasl config
#
# Needs the nightly toolchain (rustup toolchain install nightly); installs cargo-fuzz when
# `cargo fuzz` is missing. Builds into $FUZZ_TARGET_DIR (default
# ~/.cache/jabberfarm-fuzz-target), never the workspace's target dir: the fuzz build's flags
# differ, sharing would rebuild both every time.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$HOME/.cache/jabberfarm-fuzz-target}"
export CARGO_TERM_COLOR=never
seconds="${FUZZ_SECONDS:-15}"
# No sanitizer: the workspace forbids unsafe code, so AddressSanitizer would mostly slow the
# runs down; debug assertions (overflow checks) stay on. The same flags for build and run, so
# `run` does not rebuild.
flags=(--sanitizer none --debug-assertions)

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  targets=(stream_parser sasl farm_frames config)
fi

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "fuzzing needs the nightly toolchain: rustup toolchain install nightly"; exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  cargo install --locked cargo-fuzz
fi

echo "== building the fuzz targets"
cargo +nightly fuzz build "${flags[@]}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  echo "== fuzzing $t for ${seconds} s"
  # New inputs go to a scratch corpus (the first directory); the seeds are only read.
  mkdir -p "$work/$t" "fuzz/artifacts/$t"
  log="$work/$t.log"
  if cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t" "fuzz/corpus/$t" -- \
       -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
       >"$log" 2>&1; then
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || true
  else
    # The assertion that failed (its message names the property), or the end of the log.
    grep -A1 'panicked at' "$log" | head -n 2 | cut -c1-3000 || true
    grep -q 'panicked at' "$log" || tail -n 30 "$log"
    crash="$(grep -o 'Test unit written to .*' "$log" | sed 's/^Test unit written to //' | tail -n 1)"
    echo "!! $t crashed; input: ${crash:-unknown (see the log above)}"
    [ -n "$crash" ] && echo "   replay: cargo +nightly fuzz run ${flags[*]} $t $crash"
    failed+=("$t")
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  echo "== fuzzing failed: ${failed[*]}"
  exit 1
fi
echo "== fuzzing ok: ${targets[*]}"
