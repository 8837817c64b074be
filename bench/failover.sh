#!/usr/bin/env bash
# Failover with central data (MariaDB; issue 15, docs/operations.md): SESSIONS users online,
# about half on each slave of the demo farm (hash mode); slave2 is killed with SIGKILL, and
# every one of its clients logs in again through the master (as a client's automatic
# reconnect does, every 0.5 s until it gets in), which sends them to slave1 once it has marked
# slave2 failed. How long until every session is back, and what the nodes spend meanwhile;
# then slave2 is started again and its users are sent home at [rebalance] users_per_second.
#
#   bash bench/failover.sh [OUT_DIR]   # default: /tmp/jabberfarm-failover/<date-time>
#
# It starts a throwaway MariaDB (tests/servers/mariadb.sh, 127.0.0.1:DB_PORT, data under OUT),
# writes OUT/farm.toml from conf/farm.toml with the data in it, creates the users bench0…
# (SCRAM keys in MariaDB), starts every node as its own process, and holds SESSIONS sessions
# with `jabberfarm-bench idle --follow-moves` (SCRAM-SHA-256, following the master's
# redirects; a session whose connection ends logs in again from the master). The bench
# reports sessions back (`moved`), each one's time from losing its connection to its new
# session (p50, p99), and the window from the first loss to the last new session; the script
# prints the time from the kill to every session on slave1, and each node's CPU meanwhile.
# Environment: SESSIONS (default 10000), RATE (users sent home per second, default 1000),
# WEIGHT2 (slave2's weight: 1000 puts nearly every session on it; default 1, about half),
# DB_PORT (default 3399), SKIP_BUILD=1. Needs mariadb-server (the programs only).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
sessions="${SESSIONS:-10000}"
rate="${RATE:-1000}"
db_port="${DB_PORT:-3399}"
out="${1:-${TMPDIR:-/tmp}/jabberfarm-failover/$(date +%Y%m%d-%H%M%S)}"
bin="$CARGO_TARGET_DIR/release"

central_bench_start

central_demo_config "$out" "$rate"
# WEIGHT2=1000: slave2 holds nearly every session, so the storm is a whole slave's worth.
[ -z "${WEIGHT2:-}" ] || weigh_slave2 "$out/farm.toml" "$WEIGHT2"
central_sessions_up
on2=$(sessions_on slave2)
echo "in: $(cat "$out/ready") sessions, $on2 of them on slave2"

declare -A before
for node in master slave1; do before[$node]=$(cpu_ticks "${pid_of[$node]}"); done
echo "== kill -9 slave2"
start=$(date +%s.%N)
kill -KILL "${pid_of[slave2]}"
back=""
wait_sessions slave1 "$sessions" && back=1
end=$(date +%s.%N)
[ -n "$back" ] || { echo "not every session reached slave1:" >&2; "$bin/jabberfarm" status --config "$out/farm.toml" >&2; exit 1; }
{
  awk -v s="$start" -v e="$end" -v n="$on2" \
    'BEGIN { printf "from kill -9 to every session on slave1 (%d came from slave2): %.2f s\n", n, e - s }'
  cpu_report before master slave1
  grep -c 'failover: the owner is failed' "$out/master.log" | sed 's/^/logins failed over by the master: /'
} | tee "$out/result.txt"

echo "== slave2 started again: its users are sent home at $rate/s"
"$bin/jabberfarm" run --config "$out/farm.toml" --node slave2 --data-dir "$data" >>"$out/slave2.log" 2>&1 &
pids+=($!)
pid_of[slave2]=$!
start=$(date +%s.%N)
report_home "the restart" "$start" "$on2"
