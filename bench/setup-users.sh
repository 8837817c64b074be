#!/usr/bin/env bash
# Create the benchmark's users in a jabberfarm farm: bench0 … bench(N-1), password "bench"
# (the defaults of jabberfarm-bench's --users and --password).
#
#   bench/setup-users.sh N [PATTERN] [PASSWORD]
#
# PATTERN's "{n}" is replaced by the number (default "bench{n}"). Users that already exist are
# left alone, so running it again is cheap. Environment:
#   JABBERFARM  the binary        (default: $CARGO_TARGET_DIR/release/jabberfarm, else
#                                  target/release/jabberfarm)
#   CONFIG      the farm config   (default: conf/farm.toml)
#   DATA_DIR    --data-dir        (default: the config's data_dir)
#   JOBS        key derivations at a time (default: the number of cores)
#
# One `jabberfarm user import`: it checks every name, skips accounts that exist, and derives
# SCRAM-SHA-1 and SCRAM-SHA-256 keys (PBKDF2, the config's scram_iterations, 4096 in the
# demo) on all cores: about 1,400 users a second on 2 cores, 100,000 in a bit over a minute.
set -euo pipefail

n="${1:?usage: bench/setup-users.sh N [PATTERN] [PASSWORD]}"
pattern="${2:-bench{n\}}"
password="${3:-bench}"
default_bin="${CARGO_TARGET_DIR:-target}/release/jabberfarm"
[ -x "$default_bin" ] || default_bin="target/release/jabberfarm"
JABBERFARM="${JABBERFARM:-$default_bin}"
CONFIG="${CONFIG:-conf/farm.toml}"
DATA_DIR="${DATA_DIR:-}"

case "$n" in
  ''|*[!0-9]*) echo "N must be a number, got '$n'" >&2; exit 2 ;;
esac
[ -x "$JABBERFARM" ] || { echo "no jabberfarm binary at $JABBERFARM (cargo build --release, or set JABBERFARM)" >&2; exit 1; }

args=(user import --config "$CONFIG")
[ -n "$DATA_DIR" ] && args+=(--data-dir "$DATA_DIR")
[ -n "${JOBS:-}" ] && args+=(--jobs "$JOBS")
start=$(date +%s)
for ((i = 0; i < n; i++)); do
  printf '%s:%s\n' "${pattern//\{n\}/$i}" "$password"
done | "$JABBERFARM" "${args[@]}" - | tail -n 1
echo "setup-users: $n users (${pattern}, password '${password}') ready in $(( $(date +%s) - start )) s"
