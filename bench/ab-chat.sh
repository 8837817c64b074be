#!/usr/bin/env bash
# Closed-loop chat, two builds alternated: server CPU per message, one slave and across slaves.
#
#   bash bench/ab-chat.sh BEFORE_DIR AFTER_DIR [ROUNDS]
#   BEFORE_ARGS=... AFTER_ARGS=... bash bench/ab-chat.sh DIR DIR [ROUNDS]   # one build, two ways
#
# BEFORE_DIR and AFTER_DIR hold a release build's `jabberfarm` and `jabberfarm-bench` (e.g.
# the target/release of a `git worktree` of the older commit, and $CARGO_TARGET_DIR/release).
# Each round starts the demo farm (redirect "always", no shaper) of each build on core 0 with
# 2,000 users of its own, runs `jabberfarm-bench chat --pairs 50 --duration 8` on core 1 on
# one slave and across slaves, and stops it. Alternating the builds spreads the machine's
# drift over both; the spread between rounds is the noise to compare a difference with.
# BEFORE_ARGS / AFTER_ARGS are added to each side's jabberfarm-bench command (e.g.
# AFTER_ARGS=--sm: the same build with the clients using stream management).
# Ports 5222-5223, 5322-5323, 5422-5423 and 7100-7102 must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
[ "$#" -ge 2 ] || { sed -n 2,15p "$0"; exit 2; }
before=$1 after=$2 rounds=${3:-3}
ports_free "a farm" 5222 5322 5422
echo "round build where µs-per-message"
for round in $(seq 1 "$rounds"); do
  for which in before after; do
    bin=$before; args=${BEFORE_ARGS:-}
    [ "$which" = after ] && bin=$after args=${AFTER_ARGS:-}
    dir=$(mktemp -d)
    demo_config always "$dir/farm.toml"
    CONFIG="$dir/farm.toml" DATA_DIR="$dir/data" JABBERFARM="$bin/jabberfarm" \
      bash bench/setup-users.sh 2000 >/dev/null
    taskset -c 0 "$bin/jabberfarm" up --config "$dir/farm.toml" --data-dir "$dir/data" \
      >"$dir/farm.log" 2>&1 &
    farm=$!
    for p in 5222 5322 5422; do wait_port "$p"; done
    sleep 2   # farm links up
    for where in same across; do
      extra=(); [ "$where" = across ] && extra=(--across)
      line=$(taskset -c 1 "$bin/jabberfarm-bench" chat --pairs 50 --duration 8 \
        --follow-redirects --server-pid "$farm" "${extra[@]}" $args 2>&1 | grep "per message" || true)
      echo "$round $which $where ${line:-failed: see $dir/farm.log}" \
        | sed -E 's/server CPU .*= ([0-9.]+) µs per message/\1/'
    done
    kill -TERM "$farm"; wait "$farm" 2>/dev/null || true
    rm -rf "$dir"
  done
done
