#!/usr/bin/env bash
# Draining a slave (central data, MariaDB; issue 15, docs/operations.md "Draining a slave"):
# SESSIONS users online, nearly all on slave2 (the demo farm with slave2 at weight 1000 to
# slave1's 1, hash mode); `jabberfarm drain slave2 --over OVER --wait` moves every session to
# slave1 (the next of each user's ranking) spread over the window: each client gets
# `<see-other-host/>` and logs in at slave1. How long the drain takes, sessions moved per
# second, what each node spends meanwhile, and that every session is on slave1 at the end
# (none lost); then `undrain` sends them home at [rebalance] users_per_second.
#
#   bash bench/drain.sh [OUT_DIR]   # default: /tmp/jabberfarm-drain/<date-time>
#
# It starts a throwaway MariaDB (tests/servers/mariadb.sh, 127.0.0.1:DB_PORT, data under OUT),
# writes OUT/farm.toml from conf/farm.toml with the data in it, creates the users bench0…
# (SCRAM keys in MariaDB), starts every node as its own process, and holds SESSIONS sessions
# with `jabberfarm-bench idle --follow-moves` (SCRAM-SHA-256, following redirects and moves).
# Environment: SESSIONS (default 10000), OVER (default 60s), RATE (users sent home per second
# after undrain, default 1000), DB_PORT (default 3399), SKIP_BUILD=1. Needs mariadb-server.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
sessions="${SESSIONS:-10000}"
over="${OVER:-60s}"
rate="${RATE:-1000}"
db_port="${DB_PORT:-3399}"
out="${1:-${TMPDIR:-/tmp}/jabberfarm-drain/$(date +%Y%m%d-%H%M%S)}"
bin="$CARGO_TARGET_DIR/release"

central_bench_start

central_demo_config "$out" "$rate"
# slave2 owns nearly everyone: the drain moves a whole slave's worth of sessions.
weigh_slave2 "$out/farm.toml" 1000
central_sessions_up
on1=$(sessions_on slave1)
on2=$(sessions_on slave2)
echo "in: $(cat "$out/ready") sessions, $on2 on slave2, $on1 on slave1"

declare -A before
for node in master slave1 slave2; do before[$node]=$(cpu_ticks "${pid_of[$node]}"); done
echo "== jabberfarm drain slave2 --over $over --wait"
start=$(date +%s.%N)
"$bin/jabberfarm" drain slave2 --over "$over" --wait --config "$out/farm.toml" | tail -3
end=$(date +%s.%N)
# Every session on slave1: none lost on the way.
all=""
wait_sessions slave1 "$sessions" 60 && all=1
{
  awk -v s="$start" -v e="$end" -v n="$on2" -v o="$over" \
    'BEGIN { printf "drain of %d sessions over %s: drained after %.2f s, %.0f sessions moved per second\n", n, o, e - s, n / (e - s) }'
  echo "sessions on slave1 after the drain: $(sessions_on slave1) of $sessions ($([ -n "$all" ] && echo "none lost" || echo "SOME MISSING"))"
  cpu_report before
  curl -s http://127.0.0.1:9122/metrics | grep '^jabberfarm_sessions_moved_total' || true
} | tee "$out/result.txt"

echo "== undrain: its users are sent home at $rate/s"
start=$(date +%s.%N)
"$bin/jabberfarm" undrain slave2 --config "$out/farm.toml"
report_home undrain "$start" "$on2"
