#!/usr/bin/env bash
# Farm links cut under load (issue 14): the demo farm (master, slave1, slave2 as separate
# processes), an open-loop chat between users of slave1 and slave2 (every message crosses the
# slave1–slave2 link), and every few seconds every TCP connection to slave2's farm port is
# killed (`ss -K`: the kernel aborts it, as a failing switch or a NAT losing its state would).
# The links reconnect by themselves and resend what the other side had not taken. The bench
# counts every message end to end (`--follow-moves`: each sender pings after each message, so
# an acknowledged message that never arrives is `lost`; each receiver counts `duplicates`).
#
#   bash bench/link-cut.sh      # PAIRS=100 RATE=1000 DURATION=20 CUTS=6 EVERY=2.5 by default
#
# Needs root (ss -K) and a release build in $BIN (default $CARGO_TARGET_DIR/release). Ports
# 5222-5223, 5322-5323, 5422-5423 and 7100-7102 must be free. Results in
# /tmp/jabberfarm-link-cut/<date-time>/.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release}
PAIRS=${PAIRS:-100} RATE=${RATE:-1000} DURATION=${DURATION:-20} CUTS=${CUTS:-6} EVERY=${EVERY:-2.5}
out=/tmp/jabberfarm-link-cut/$(date -u +%Y%m%dT%H%M%SZ)
demo_chat_farm_start "$out" "$BIN"
"$BIN/jabberfarm-bench" chat --pairs "$PAIRS" --rate "$RATE" --duration "$DURATION" --across \
  --follow-redirects --follow-moves --server-pid "${pid_of[slave1]}" \
  --server-pid "${pid_of[slave2]}" >"$out/bench.txt" 2>&1 &
bench=$!
sleep 3
for i in $(seq 1 "$CUTS"); do
  # The connector's sockets (dport): the kernel aborts them and resets the peer's.
  ss -K dst 127.0.0.1 dport = :7102 >/dev/null 2>&1
  echo "cut $i: $(date -u +%T.%N | cut -c1-12)"
  sleep "$EVERY"
done
wait "$bench" || true
echo "--- bench"
grep -E "moved=|open loop|server CPU|error" "$out/bench.txt" || cat "$out/bench.txt"
echo "--- links"
echo "slave1 <-> slave2 came up $(grep -c 'farm link slave1 <-> slave2 up' "$out/slave1.log") times (once at start)"
grep -h "kept for it" "$out/slave1.log" "$out/slave2.log" | sed -E 's/^.*WARN [^ ]+ //' | head -12
