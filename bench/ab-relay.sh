#!/usr/bin/env bash
# The master as a relay, two builds alternated: the master's CPU per relayed message.
#
#   bash bench/ab-relay.sh BEFORE_DIR AFTER_DIR [ROUNDS]
#
# BEFORE_DIR and AFTER_DIR hold a release build's `jabberfarm` and `jabberfarm-bench` (e.g.
# the target/release of a `git worktree` of the older commit, and $CARGO_TARGET_DIR/release).
# Each round starts the demo farm of each build with `redirect = "never"` (every client
# relayed), every node its own process on core 0, 2,000 users of its own, runs
# `jabberfarm-bench chat --across --pairs 50 --duration 8` over STARTTLS with SCRAM-SHA-256
# on core 1 measuring the master, and stops it. Each message crosses the master twice (in
# from its sender, out to its receiver). Alternating the builds spreads the machine's drift
# over both; the spread between rounds is the noise to compare a difference with.
# Ports 5222-5223, 5322-5323, 5422-5423 and 7100-7102 must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
[ "$#" -ge 2 ] || { sed -n 2,14p "$0"; exit 2; }
before=$1 after=$2 rounds=${3:-3}
ports_free "a farm" 5222 5322 5422 7100
trap cleanup EXIT
echo "round build msg/s µs-per-message(master)"
for round in $(seq 1 "$rounds"); do
  for which in before after; do
    bin=$before
    [ "$which" = after ] && bin=$after
    dir=$(mktemp -d)
    demo_config never "$dir/farm.toml"
    CONFIG="$dir/farm.toml" DATA_DIR="$dir/data" JABBERFARM="$bin/jabberfarm" \
      bash bench/setup-users.sh 2000 >/dev/null
    start_demo_nodes "$bin" "$dir/farm.toml" "$dir/data" "$dir" 0
    master=${pid_of[master]}
    out=$(taskset -c 1 "$bin/jabberfarm-bench" chat --user-count 2000 --across \
      --farm-config "$dir/farm.toml" --pairs 50 --duration 8 --tls starttls \
      --ca "$dir/data/tls/ca.pem" --mechanism SCRAM-SHA-256 --server-pid "$master" 2>&1 || true)
    rate=$(echo "$out" | sed -nE 's/.*messages\/s +([0-9]+).*/\1/p')
    cpu=$(echo "$out" | sed -nE 's/.*= ([0-9.]+) µs per message.*/\1/p')
    echo "$round $which ${rate:-?} ${cpu:-failed: see $dir/*.log}"
    cleanup
    rm -rf "$dir"
  done
done
