#!/usr/bin/env bash
# Live rebalancing with central data (MariaDB; issue 13, docs/rebalancing.md): SESSIONS users
# online on slave1 are all given to slave2 by a reload; how fast the farm sends them over and
# they log in again there, and what the nodes spend on it.
#
#   bash bench/rebalance-central.sh [OUT_DIR]   # default: /tmp/jabberfarm-rebalance-central/<date-time>
#
# It starts a throwaway MariaDB (tests/servers/mariadb.sh, on 127.0.0.1:DB_PORT, data under
# OUT), writes OUT/old.toml from conf/farm.toml with the data in it and ranges `a-m` on slave1,
# `n-z` on slave2, and OUT/new.toml with `a` on slave1 and `b-z` on slave2 (every bench user
# moves), both with [rebalance] users_per_second = RATE. It creates the users bench0… (SCRAM
# keys in MariaDB), starts every node as its own process, logs SESSIONS sessions in with
# `jabberfarm-bench idle --follow-moves` (SCRAM-SHA-256, following the master's redirect),
# reloads with new.toml, and waits until slave2 holds every session. The bench process reports
# how many sessions were moved, each one's time from `<see-other-host/>` to its new session
# (p50, p99) and the window from the first redirect to the last new session; the script prints
# each node's CPU time during the move.
# Then a chat runs (PAIRS pairs, CHAT_RATE messages a second, `chat --follow-moves`) while
# old.toml gives every user back to slave1: delivered, lost and duplicated messages.
# Environment: SESSIONS (default 5000), RATE (default 100000), DB_PORT (default 3399),
# PAIRS (default 100), CHAT_RATE (default 1000),
# SKIP_BUILD=1. Takes about a minute. Needs mariadb-server (the programs only).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
sessions="${SESSIONS:-5000}"
rate="${RATE:-100000}"
db_port="${DB_PORT:-3399}"
PAIRS="${PAIRS:-100}"
CHAT_RATE="${CHAT_RATE:-1000}"
out="${1:-${TMPDIR:-/tmp}/jabberfarm-rebalance-central/$(date +%Y%m%d-%H%M%S)}"
bin="$CARGO_TARGET_DIR/release"

central_bench_start

# ranges_config SLAVE1_RANGE SLAVE2_RANGE OUT: the demo config with the data in MariaDB and
# these two ranges.
ranges_config() {
  local one=$1 two=$2 out=$3
  demo_config always "$out.tmp"
  sed -e '/^hash_key = /d' \
      -e 's/^backend = "sqlite" .*/backend = "mysql"/' \
      -e "s/^mode = \"hash\"/mode = \"ranges\"\nother = \"slave1\"\n[[routing.ranges]]\nletters = \"$one\"\nnode = \"slave1\"\n[[routing.ranges]]\nletters = \"$two\"\nnode = \"slave2\"/" \
      "$out.tmp" >"$out"
  rm "$out.tmp"
  central_storage "$out" "$rate"
  "$bin/jabberfarm" check --config "$out" >/dev/null
}
ranges_config a-m n-z "$out/old.toml"
ranges_config a b-z "$out/new.toml"

echo "== $sessions users in MariaDB"
CONFIG="$out/old.toml" DATA_DIR="$data" JABBERFARM="$bin/jabberfarm" bash bench/setup-users.sh "$sessions"

cp "$out/old.toml" "$out/farm.toml"
# Every node up and linked before the change.
start_demo_nodes "$bin" "$out/farm.toml" "$data" "$out"

echo "== $sessions sessions on slave1"
hold_idle_sessions "$out" "$data" "$sessions" 600
echo "in: $(cat "$out/ready") sessions"

declare -A before
for node in master slave1 slave2; do before[$node]=$(cpu_ticks "${pid_of[$node]}"); done

echo "== reload with new.toml: every session moves to slave2"
cp "$out/new.toml" "$out/farm.toml"
start=$(date +%s.%N)
"$bin/jabberfarm" reload --config "$out/farm.toml"
moved=""
for _ in $(seq 1 3000); do
  # slave2's sessions column: every session is there.
  if "$bin/jabberfarm" status --config "$out/farm.toml" 2>/dev/null \
      | awk -v n="$sessions" '$1 == "slave2" && $8 == n { found = 1 } END { exit !found }'; then
    moved=1
    break
  fi
  sleep 0.05
done
end=$(date +%s.%N)
[ -n "$moved" ] || { echo "not every session reached slave2:" >&2; "$bin/jabberfarm" status --config "$out/farm.toml" >&2; exit 1; }
{
  grep -h 'session(s) sent to their new slaves' "$out/slave1.log" | sed 's/.*INFO /slave1: /' | tail -1
  awk -v s="$start" -v e="$end" 'BEGIN { printf "from reload to every session on slave2: %.2f s\n", e - s }'
  cpu_report before
} | tee "$out/result.txt"
# A session is counted on slave2 once bound; its client's login ends a round trip later
# (presence and its acknowledgment): give the last ones time before the bench reports.
sleep 3
kill -USR1 "$bench_pid"
wait "$bench_pid" || true
grep -E 'moved|move_' "$out/idle.txt" | tee -a "$out/result.txt" || tail -20 "$out/idle.txt"

echo "== messages during a move: $PAIRS pairs at $CHAT_RATE msg/s, every user moved back to slave1"
# The chat's users log in (on slave2 now), then old.toml gives them all back to slave1 while
# they send; `chat --follow-moves` counts what arrived, duplicates, and what a moved sender
# had sent without an acknowledgment.
"$bin/jabberfarm-bench" chat --port 5222 --follow-redirects --follow-moves \
  --tls starttls --ca "$data/tls/ca.pem" --mechanism SCRAM-SHA-256 \
  --pairs "$PAIRS" --rate "$CHAT_RATE" --duration 12 --timeout 60 \
  --json "$out/chat.json" >"$out/chat.txt" 2>&1 &
chat_pid=$!
for _ in $(seq 1 600); do
  if "$bin/jabberfarm" status --config "$out/farm.toml" 2>/dev/null \
      | awk -v n="$(( 2 * PAIRS ))" '$1 == "slave2" && $8 >= n { found = 1 } END { exit !found }'; then
    break
  fi
  sleep 0.05
done
sleep 2   # the chat under way
cp "$out/old.toml" "$out/farm.toml"
"$bin/jabberfarm" reload --config "$out/farm.toml"
wait "$chat_pid" || true
grep -E 'delivered|lost|parameters' "$out/chat.txt" | tee -a "$out/result.txt"
echo "results in $out"
