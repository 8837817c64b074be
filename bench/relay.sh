#!/usr/bin/env bash
# The master as a relay for clients that do not follow redirects (DESIGN.md D1b): what a
# relayed login, a relayed message and a relayed idle session cost the master, over TLS, and
# that the slaves' cost per message stays what it is for direct clients.
#
#   bash bench/relay.sh [OUT_DIR]     # default OUT_DIR: /tmp/jabberfarm-relay/<date-time>
#
# It writes two configs from conf/farm.toml (same ports: 5222-5223, 5322-5323, 5422-5423,
# 7100-7102 must be free): OUT/direct.toml (redirect = "always") and OUT/relay.toml
# (redirect = "never"), creates the users, and runs every node as its own process
# (`jabberfarm run --node`, all pinned to core 0; the load generator on core 1), so each
# process's CPU and memory are its own:
#   1. relay farm, fresh: SESSIONS idle sessions (STARTTLS, SCRAM-SHA-256) through the master;
#      the master's memory per relayed session;
#   2. relay farm: full logins through the master (STARTTLS, SCRAM-SHA-256): master CPU per
#      relayed login; chat between users of different slaves, both relayed (closed loop and
#      1,000 msg/s): master CPU per message (each message crosses the master twice: in from
#      its sender, out to its receiver), then the same chat measuring the slaves;
#   3. direct farm: the same chat with clients that follow the redirect, measuring the slaves.
# Environment: USERS (default 2000), SESSIONS (default 5000), DURATION (seconds per timed
# phase, default 10), SKIP_BUILD=1. Takes about 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
users="${USERS:-2000}"
sessions="${SESSIONS:-5000}"
duration="${DURATION:-10}"
out="${1:-${TMPDIR:-/tmp}/jabberfarm-relay/$(date +%Y%m%d-%H%M%S)}"
bin="$CARGO_TARGET_DIR/release"

[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p jabberfarm -p jabberfarm-bench
ports_free "a farm" 5222 5322 5422 7100
mkdir -p "$out"
data="$out/data"
for mode in always never; do
  name=$([ "$mode" = always ] && echo direct || echo relay)
  # The demo config with this redirect mode; data_dir comes from --data-dir.
  demo_config "$mode" "$out/$name.toml"
  "$bin/jabberfarm" check --config "$out/$name.toml" >/dev/null
done

trap cleanup EXIT


start_farm() { # CONFIG
  for node in master slave1 slave2; do
    taskset -c 0 "$bin/jabberfarm" run --config "$1" --node "$node" --data-dir "$data" \
      >>"$out/$node.log" 2>&1 &
    pids+=($!)
    pid_of[$node]=$!
  done
  for p in 5222 5322 5422; do wait_port "$p"; done
  # Farm links (the master relays and redirects only to slaves it sees alive).
  sleep 2
}

stop_farm() { cleanup; }

bench() { taskset -c 1 "$bin/jabberfarm-bench" "$@"; }
run() { # NAME SCENARIO ARGS…
  local name=$1
  shift
  echo "--- $name: jabberfarm-bench $*" | tee "$out/$name.txt"
  bench "$@" --json "$out/$name.json" | tee -a "$out/$name.txt"
}

machine_info "$out/machine.txt"

JABBERFARM="$bin/jabberfarm" CONFIG="$out/relay.toml" DATA_DIR="$data" \
  bash bench/setup-users.sh "$users"

tls=(--tls starttls --ca "$data/tls/ca.pem")
common=(--user-count "$users" --duration "$duration" "${tls[@]}" --mechanism SCRAM-SHA-256)

# 1. Memory first, on a fresh master (a process keeps the heap it once grew).
start_farm "$out/relay.toml"
run relay-idle idle "${common[@]}" --count "$sessions" --concurrency 50 --hold 5 \
  --server-pid "${pid_of[master]}"
stop_farm

# 2. CPU at the master, then at the slaves, with every client relayed.
start_farm "$out/relay.toml"
master=(--server-pid "${pid_of[master]}")
slaves=(--server-pid "${pid_of[slave1]}" --server-pid "${pid_of[slave2]}")
across=(--across --farm-config "$out/relay.toml" --pairs 50)
run relay-login login "${common[@]}" "${master[@]}" --count 3000 --concurrency 20
run relay-chat-closed chat "${common[@]}" "${master[@]}" "${across[@]}"
run relay-chat-1000 chat "${common[@]}" "${master[@]}" "${across[@]}" --rate 1000
run relay-chat-slaves chat "${common[@]}" "${slaves[@]}" "${across[@]}"
stop_farm

# 3. The same chat, clients following the redirect: the slaves' own cost, for comparison.
start_farm "$out/direct.toml"
run direct-chat-slaves chat "${common[@]}" --follow-redirects \
  --server-pid "${pid_of[slave1]}" --server-pid "${pid_of[slave2]}" --across --pairs 50
stop_farm

"$bin/jabberfarm-bench" summary "$out"/{relay-idle,relay-login,relay-chat-closed,relay-chat-1000,relay-chat-slaves,direct-chat-slaves}.json \
  | tee "$out/summary.md"
echo "results in $out"
