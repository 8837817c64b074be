#!/usr/bin/env bash
# Every benchmark scenario against a fresh demo farm, in one command:
#
#   bash bench/run.sh [OUT_DIR]    # default OUT_DIR: /tmp/jabberfarm-bench/<date-time>
#
# It builds the release binaries, creates the users in a data dir of its own (OUT_DIR/data,
# so the demo's jabberfarm-data is left alone), measures the bare-TCP floor and the PBKDF2
# cost, starts `jabberfarm up` pinned to core 0, runs the scenarios pinned to core 1, stops
# the farm, and prints one table (OUT_DIR/summary.md). Each run's table and JSON are kept
# in OUT_DIR. Ports 5222-5223, 5322-5323, 5422-5423, 7100-7102 and 5999 must be free.
#
# Environment: USERS (accounts to create, default 2000), DURATION (seconds per timed phase,
# default 10), SKIP_BUILD=1 (use the binaries already in $CARGO_TARGET_DIR/release).
# Measured phases are bounded by count and by DURATION; the whole run takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
users="${USERS:-2000}"
duration="${DURATION:-10}"
out="${1:-${TMPDIR:-/tmp}/jabberfarm-bench/$(date +%Y%m%d-%H%M%S)}"
bin="$CARGO_TARGET_DIR/release"

[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p jabberfarm -p jabberfarm-bench
ports_free "a farm (or floor-server)" 5222 5322 5422 5999
mkdir -p "$out"
data="$out/data"
# The demo config, redirecting only: the redirect scenario logs the same users in again and
# again without following, which `redirect = "auto"` would answer by relaying them
# (bench/relay.sh measures that).
config="$out/farm.toml"
demo_config always "$config"
bench() { taskset -c 1 "$bin/jabberfarm-bench" "$@"; }

farm_pid=""
floor_pid=""
cleanup() {
  for p in $farm_pid $floor_pid; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $farm_pid $floor_pid; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT


start_farm() {
  taskset -c 0 "$bin/jabberfarm" up --config "$config" --data-dir "$data" \
    >"$out/farm.out" 2>>"$out/farm.log" &
  farm_pid=$!
  for p in 5222 5322 5422; do wait_port "$p"; done
  # Farm links (the master redirects only to slaves it sees alive).
  sleep 2
}

stop_farm() {
  kill -TERM "$farm_pid"
  wait "$farm_pid" || true
  farm_pid=""
}

run() { # NAME SCENARIO ARGS… : one run, its table to OUT/NAME.txt, its JSON to OUT/NAME.json
  local name=$1
  shift
  echo "--- $name: jabberfarm-bench $*" | tee "$out/$name.txt"
  bench "$@" --json "$out/$name.json" | tee -a "$out/$name.txt"
}

machine_info "$out/machine.txt"

JABBERFARM="$bin/jabberfarm" CONFIG="$config" DATA_DIR="$data" bash bench/setup-users.sh "$users"

run pbkdf2 pbkdf2 --iterations 4096

# The floor: the bare TCP exchange of a redirect's shape, server pinned like the farm.
taskset -c 0 "$bin/jabberfarm-bench" floor-server --listen 127.0.0.1:5999 --duration 600 \
  >"$out/floor-server.out" &
floor_pid=$!
wait_port 5999
run floor floor --port 5999 --count 20000 --concurrency 50 --server-pid "$floor_pid" \
  --duration "$duration"
kill -TERM "$floor_pid"
wait "$floor_pid" 2>/dev/null || true
floor_pid=""

common=(--user-count "$users" --duration "$duration" --follow-redirects)
tls=(--tls starttls --ca "$data/tls/ca.pem")

# Memory first, on a freshly started farm (a process keeps the heap it once grew).
start_farm
run idle idle "${common[@]}" --count "$users" --concurrency 50 --hold 5 \
  --mechanism SCRAM-SHA-256 --server-pid "$farm_pid"
stop_farm

start_farm
pid=(--server-pid "$farm_pid")
run redirect redirect "${common[@]}" "${pid[@]}" --count 20000 --concurrency 50 \
  --floor "$out/floor.json"
run redirect-tls redirect "${common[@]}" "${pid[@]}" "${tls[@]}" --count 10000 --concurrency 50 \
  --floor "$out/floor.json"
run login-plain login "${common[@]}" "${pid[@]}" --count 5000 --concurrency 20 --mechanism PLAIN
run login-scram login "${common[@]}" "${pid[@]}" --count 5000 --concurrency 20 \
  --mechanism SCRAM-SHA-256
run login-scram-tls login "${common[@]}" "${pid[@]}" "${tls[@]}" --count 5000 --concurrency 20 \
  --mechanism SCRAM-SHA-256
run chat-closed chat "${common[@]}" "${pid[@]}" --pairs 50
run chat-1000 chat "${common[@]}" "${pid[@]}" --pairs 50 --rate 1000
run chat-4000 chat "${common[@]}" "${pid[@]}" --pairs 50 --rate 4000
run chat-across-closed chat "${common[@]}" "${pid[@]}" --pairs 50 --across
run chat-across-4000 chat "${common[@]}" "${pid[@]}" --pairs 50 --rate 4000 --across
stop_farm

"$bin/jabberfarm-bench" summary "$out"/{pbkdf2,floor,redirect,redirect-tls,login-plain,login-scram,login-scram-tls,idle,chat-closed,chat-1000,chat-4000,chat-across-closed,chat-across-4000}.json \
  | tee "$out/summary.md"
echo "results in $out"
