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
#   JOBS        parallel adds     (default: 2)
#
# Each user is one `jabberfarm user add` process: it opens the owner's SQLite store and derives
# SCRAM-SHA-1 and SCRAM-SHA-256 keys (PBKDF2, the config's scram_iterations, 4096 in the demo),
# a few milliseconds each; 2,000 users take about half a minute.
set -euo pipefail

n="${1:?usage: bench/setup-users.sh N [PATTERN] [PASSWORD]}"
pattern="${2:-bench{n\}}"
password="${3:-bench}"
default_bin="${CARGO_TARGET_DIR:-target}/release/jabberfarm"
[ -x "$default_bin" ] || default_bin="target/release/jabberfarm"
export JABBERFARM="${JABBERFARM:-$default_bin}"
export CONFIG="${CONFIG:-conf/farm.toml}"
export DATA_DIR="${DATA_DIR:-}"
export PASSWORD="$password"
jobs="${JOBS:-2}"

case "$n" in
  ''|*[!0-9]*) echo "N must be a number, got '$n'" >&2; exit 2 ;;
esac
[ -x "$JABBERFARM" ] || { echo "no jabberfarm binary at $JABBERFARM (cargo build --release, or set JABBERFARM)" >&2; exit 1; }

add_one() {
  local args=(user add --config "$CONFIG")
  [ -n "$DATA_DIR" ] && args+=(--data-dir "$DATA_DIR")
  local err
  if ! err=$("$JABBERFARM" "${args[@]}" "$1" --password "$PASSWORD" 2>&1 >/dev/null); then
    case "$err" in
      *"already exists"*) ;;
      *) echo "$1: $err" >&2; return 1 ;;
    esac
  fi
}
export -f add_one

start=$(date +%s)
for ((i = 0; i < n; i++)); do
  printf '%s\n' "${pattern//\{n\}/$i}"
done | xargs -P "$jobs" -n 1 bash -c 'add_one "$0"'
echo "setup-users: $n users (${pattern}, password '${password}') ready in $(( $(date +%s) - start )) s"
