#!/usr/bin/env bash
# Live rebalancing with the data on the slaves (issue 13; docs/rebalancing.md): how many users a
# second move to their new slave with their data, how long a change that moves about 11 % of
# USERS takes, and what the nodes spend on it.
#
#   bash bench/rebalance.sh [OUT_DIR]   # default OUT_DIR: /tmp/jabberfarm-rebalance/<date-time>
#
# From conf/farm.toml (ports 5222-5223, 5322-5323, 5422-5423, 7100-7102 must be free) it writes
# OUT/old.toml, ranges `a-m` on slave1 and `n-z` on slave2, and OUT/new.toml, `a-j` and `k-z`:
# the names that start with k, l or m move (3 of 26 first letters: 11.5 %), both with
# [rebalance] users_per_second = RATE. It creates USERS users in the old table's files (four
# letters each, the first one cycling through a-z: aaaa, baaa, …; password "bench") and gives
# each one a roster item in a group, an offline message and a vCard
# (sqlite3, straight into the files: the farm's own tables), starts every node as its own
# process (`jabberfarm run --node`), prints `jabberfarm plan`, reloads with new.toml and waits
# for slave1 to say it handed everyone over. Then it checks the result with `jabberfarm plan`
# from the files (nothing left to move, nothing misplaced) and prints each node's CPU time
# during the move.
# Environment: USERS (default 100000), RATE (default 100000, the most the config takes),
# SKIP_BUILD=1. Takes about 2 minutes for 100,000 users (most of it creating them).
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
users="${USERS:-100000}"
rate="${RATE:-100000}"
out="${1:-${TMPDIR:-/tmp}/jabberfarm-rebalance/$(date +%Y%m%d-%H%M%S)}"
bin="$CARGO_TARGET_DIR/release"
command -v sqlite3 >/dev/null || { echo "sqlite3 is needed: apt-get install sqlite3" >&2; exit 1; }

[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p jabberfarm
ports_free "a farm" 5222 5322 5422 7100
mkdir -p "$out"
data="$out/data"
machine_info "$out/machine.txt"

# ranges_config LAST OUT: the demo config in ranges mode, names from a to LAST on slave1, the
# rest on slave2.
ranges_config() {
  local last=$1 out=$2 first
  first=$(echo "$last" | tr 'a-y' 'b-z')
  demo_config always "$out.tmp"
  sed -e '/^hash_key = /d' \
      -e "s/^mode = \"hash\"/mode = \"ranges\"\nother = \"slave1\"\n[[routing.ranges]]\nletters = \"a-$last\"\nnode = \"slave1\"\n[[routing.ranges]]\nletters = \"$first-z\"\nnode = \"slave2\"/" \
      "$out.tmp" >"$out"
  rm "$out.tmp"
  printf '\n[rebalance]\nusers_per_second = %s\n' "$rate" >>"$out"
  "$bin/jabberfarm" check --config "$out" >/dev/null
}
ranges_config m "$out/old.toml"
ranges_config j "$out/new.toml"

echo "== $users users, each with a roster item, an offline message and a vCard"
awk -v n="$users" 'BEGIN {
  split("abcdefghijklmnopqrstuvwxyz", l, "")
  for (i = 0; i < n; i++) {
    s = ""; x = i
    for (k = 0; k < 4; k++) { s = s l[x % 26 + 1]; x = int(x / 26) }
    print s ":bench"
  }
}' | "$bin/jabberfarm" user import --config "$out/old.toml" --data-dir "$data" - | tail -n 1
for node in slave1 slave2; do
  sqlite3 "$data/$node.sqlite" <<'SQL'
BEGIN;
INSERT OR REPLACE INTO roster_versions SELECT username, 1 FROM accounts;
INSERT OR REPLACE INTO roster_items SELECT username, 'friend@localhost', 'Friend', 'both', 0, 0 FROM accounts;
INSERT OR REPLACE INTO roster_groups SELECT username, 'friend@localhost', 0, 'Friends' FROM accounts;
DELETE FROM offline_messages;
INSERT INTO offline_messages (username, stanza, stamp_ms)
  SELECT username, '<message xmlns=''jabber:client'' from=''friend@localhost/home'' to=''' || username
    || '@localhost'' type=''chat'' id=''m1''><body>Hello while you were away</body></message>', 1700000000000
  FROM accounts;
INSERT OR REPLACE INTO vcards SELECT username, '<vCard xmlns=''vcard-temp''><FN>' || username || '</FN><NICKNAME>'
  || username || '</NICKNAME></vCard>' FROM accounts;
COMMIT;
SQL
done

echo "== the plan"
"$bin/jabberfarm" plan --offline --config "$out/new.toml" --from "$out/old.toml" --data-dir "$data" | tee "$out/plan.txt"

cp "$out/old.toml" "$out/farm.toml"
trap cleanup EXIT
# Every node up and linked before the change.
start_demo_nodes "$bin" "$out/farm.toml" "$data" "$out"

declare -A before
for node in master slave1 slave2; do before[$node]=$(cpu_ticks "${pid_of[$node]}"); done

echo "== reload with new.toml"
cp "$out/new.toml" "$out/farm.toml"
start=$(date +%s.%N)
"$bin/jabberfarm" reload --config "$out/farm.toml"
done_line=""
for _ in $(seq 1 6000); do
  done_line=$(grep -m1 'user(s) handed over with their data' "$out/slave1.log" || true)
  [ -n "$done_line" ] && break
  sleep 0.1
done
end=$(date +%s.%N)
[ -n "$done_line" ] || { echo "slave1 never finished the move; see $out/slave1.log" >&2; exit 1; }
echo "slave1: ${done_line#*INFO }" | tee "$out/result.txt"
{
  awk -v s="$start" -v e="$end" 'BEGIN { printf "from reload to the end of the move: %.2f s\n", e - s }'
  cpu_report before
} | tee -a "$out/result.txt"
grep -h 'not handed over yet\|hand-over:' "$out"/slave*.log | head -5 || true

echo "== the files afterwards: nothing left to move, nothing misplaced"
cleanup
"$bin/jabberfarm" plan --offline --config "$out/new.toml" --from "$out/new.toml" --data-dir "$data" \
  | tee "$out/after.txt" | head -4
if grep -q misplaced "$out/after.txt" || ! grep -q ' 0 move' "$out/after.txt"; then
  echo "the move left users behind" >&2
  exit 1
fi
echo "results in $out"
