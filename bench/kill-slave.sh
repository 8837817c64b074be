#!/usr/bin/env bash
# A slave killed with kill -9 under load, and restarted (issue 14): the demo farm (master,
# slave1, slave2 as separate processes), an open-loop chat between users of slave1 and slave2
# with stream management (every message crosses the slave1–slave2 link, both ways), slave2
# killed with SIGKILL and started again DOWN seconds later. The bench counts every message end
# to end (`--follow-moves --sm`): a message the server acknowledged (XEP-0198 `h`) that never
# arrives is `lost`; receivers count `duplicates` and `out_of_order`. Sessions of slave2 log in
# again through the master (retrying while slave2 is down); messages their senders never saw
# acknowledged are counted apart (`unacked_at_move`, `unacked_at_move_arrived`).
#
#   bash bench/kill-slave.sh      # PAIRS=100 RATE=1000 DURATION=30 KILL_AT=8 DOWN=10 by default
#
# Needs a release build in $BIN (default $CARGO_TARGET_DIR/release). Ports 5222-5223,
# 5322-5323, 5422-5423 and 7100-7102 must be free. Results in
# /tmp/jabberfarm-kill-slave/<date-time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
PAIRS=${PAIRS:-100} RATE=${RATE:-1000} DURATION=${DURATION:-30} KILL_AT=${KILL_AT:-8}
DOWN=${DOWN:-10}
out=/tmp/jabberfarm-kill-slave/$(date -u +%Y%m%dT%H%M%SZ)
demo_chat_farm_start "$out" "$BIN"
"$BIN/jabberfarm-bench" chat --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" --across \
  --follow-redirects --follow-moves --sm >"$out/bench.txt" 2>&1 &
bench=$!
sleep "$KILL_AT"
kill -KILL "${pid_of[slave2]}"
echo "slave2 killed: $(date -u +%T.%N | cut -c1-12)"
sleep "$DOWN"
"$BIN/jabberfarm" run --config "$out/farm.toml" --node slave2 --data-dir "$out/data" \
  >>"$out/slave2.log" 2>&1 &
pids+=($!)
pid_of[slave2]=$!
echo "slave2 started again: $(date -u +%T.%N | cut -c1-12)"
wait "$bench" || true
echo "--- bench"
grep -E "moved=|open loop|lost|duplicates|out_of_order|unacked|error" "$out/bench.txt" \
  || cat "$out/bench.txt"
echo "--- slave1"
grep -hE "lost \(|held|not delivered|acknowledged anyway" "$out/slave1.log" \
  | sed -E 's/^.*(WARN|INFO) [^ ]+ //' | head -12
