#!/usr/bin/env bash
# Concurrent sessions: how many logged-in, idle sessions a farm of separate processes holds on
# this machine, and what they cost in memory.
#
#   bash bench/scale.sh SESSIONS [OUT_DIR]
#       SESSIONS   e.g. 19000 (one slave process) or 100000 (a farm: 6 slaves, 6 clients)
#       OUT_DIR    default /tmp/jabberfarm-scale/<date-time>
#
# A process may hold at most `ulimit -n` (here 20,000) files, so one slave process tops out
# below that, and so does one load client. The script
#   1. writes a farm config (OUT/farm.toml): a master and SLAVES slaves on loopback
#      (ports 27222, 27300+i, farm links 27500+i), hash routing, SQLite, max_connections 19,600;
#   2. creates the users bench0 … bench(SESSIONS-1) (password "bench") and 40 probe users;
#   3. starts every node as its own process (`jabberfarm run --node`);
#   4. starts CLIENTS `jabberfarm-bench idle` processes, each logging in its own range of users
#      through the master (SCRAM-SHA-256, following the redirect to the owning slave) and
#      holding them; each writes a ready file once all its sessions are in;
#   5. with every session open: counts the established client connections on each slave's port
#      (ss), reads each slave's RSS, and runs a short `chat --across` between probe users (the
#      farm still delivers, and what a message costs with all those sessions open);
#   6. releases the clients (SIGUSR1), stops the farm, and writes OUT/summary.md.
#
# Environment: SLAVES (default: one per 19,000 sessions, rounded up), CLIENTS (default: one per
# 19,000), CONCURRENCY (logins at a time per client, default 50), MECHANISM (default
# SCRAM-SHA-256), SKIP_BUILD=1 (use the release binaries already built).
# Every phase is bounded: logins by the clients' --duration, the wait for them by READY_TIMEOUT
# (default 900 s). Takes about 2 minutes for 19,000 sessions and 6–8 minutes for 100,000.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
sessions="${1:?usage: bash bench/scale.sh SESSIONS [OUT_DIR]}"
case "$sessions" in
  ''|*[!0-9]*) echo "SESSIONS must be a number, got '$sessions'" >&2; exit 2 ;;
esac
out="${2:-${TMPDIR:-/tmp}/jabberfarm-scale/$(date +%Y%m%d-%H%M%S)}"
slaves="${SLAVES:-$(( (sessions + 18999) / 19000 ))}"
clients="${CLIENTS:-$(( (sessions + 18999) / 19000 ))}"
concurrency="${CONCURRENCY:-50}"
mechanism="${MECHANISM:-SCRAM-SHA-256}"
ready_timeout="${READY_TIMEOUT:-900}"
bin="$CARGO_TARGET_DIR/release"
fd_limit=$(ulimit -n)

per_client=$(( (sessions + clients - 1) / clients ))
if (( per_client > 19500 )); then
  echo "$per_client sessions per client is over the bench's cap of 19,500: raise CLIENTS" >&2
  exit 2
fi
if (( sessions / slaves > fd_limit - 500 )); then
  echo "$(( sessions / slaves )) sessions per slave will not fit in $fd_limit open files: raise SLAVES" >&2
  exit 2
fi

[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p jabberfarm -p jabberfarm-bench
mkdir -p "$out"
data="$out/data"
cfg="$out/farm.toml"
ports=(27222)
for ((i = 1; i <= slaves; i++)); do ports+=($((27300 + i)) $((27500 + i))); done
ports+=(27500)
for p in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is in use (another scale run?)" >&2
    exit 1
  fi
done

{
  cat <<EOF
# Written by bench/scale.sh: a master and $slaves slaves on loopback, for $sessions sessions.
domain = "localhost"
secret = "scale-farm-secret"
data_dir = "data"
[tls]
generate = true
required = false
[limits]
max_connections = 19600
session_stanzas_per_second = 0  # a load generator is not a person: no per-session shaper
session_bytes_per_second = 0
[routing]
mode = "hash"
hash_key = "6a61626265726661726d2d64656d6f21"
[storage]
backend = "sqlite"
scram_iterations = 4096
[[node]]
name = "master"
role = "master"
c2s = "127.0.0.1:27222"
farm = "127.0.0.1:27500"
EOF
  for ((i = 1; i <= slaves; i++)); do
    printf '[[node]]\nname = "slave%d"\nrole = "slave"\nc2s = "127.0.0.1:%d"\nfarm = "127.0.0.1:%d"\n' \
      "$i" $((27300 + i)) $((27500 + i))
  done
} >"$cfg"
"$bin/jabberfarm" check --config "$cfg" >/dev/null

{
  echo "machine:  $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), open files per process: $fd_limit"
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "commit:   $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with local changes)')"
  fi
  echo "date:     $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "command:  bash bench/scale.sh $sessions   (SLAVES=$slaves CLIENTS=$clients CONCURRENCY=$concurrency MECHANISM=$mechanism)"
} | tee "$out/machine.txt"

JABBERFARM="$bin/jabberfarm" CONFIG="$cfg" DATA_DIR="$data" bash bench/setup-users.sh "$sessions"
JABBERFARM="$bin/jabberfarm" CONFIG="$cfg" DATA_DIR="$data" bash bench/setup-users.sh 40 'probe{n}' >/dev/null

node_pids=()
client_pids=()
cleanup() {
  for p in "${client_pids[@]}" "${node_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${client_pids[@]}" "${node_pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1 (see $out/*.log)" >&2
  return 1
}
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
established() { ss -Htn state established "( sport = :$1 )" | wc -l; }

names=(master)
for ((i = 1; i <= slaves; i++)); do names+=("slave$i"); done
for n in "${names[@]}"; do
  "$bin/jabberfarm" run --config "$cfg" --data-dir "$data" --node "$n" >"$out/$n.out" 2>"$out/$n.log" &
  node_pids+=($!)
done
wait_port 27222
for ((i = 1; i <= slaves; i++)); do wait_port $((27300 + i)); done
# Every link of the mesh up: the master redirects only to slaves it sees alive.
links=$(( (slaves + 1) * slaves / 2 ))
for _ in $(seq 1 300); do
  up=$(cat "$out"/*.log | grep -c "farm link .* up" || true)
  (( up >= 2 * links )) && break
  sleep 0.1
done

declare -A rss_before
for ((i = 1; i <= slaves; i++)); do rss_before[$i]=$(rss_kib "${node_pids[$i]}"); done
master_rss_before=$(rss_kib "${node_pids[0]}")

# One client: it reads the slaves' RSS itself after its discovery pass (which warms the
# stores' caches), so its figure is the sessions' alone.
pid_args=()
if (( clients == 1 )); then
  for ((i = 1; i <= slaves; i++)); do pid_args+=(--server-pid "${node_pids[$i]}"); done
fi
echo "--- logging in $sessions sessions: $clients clients × $per_client, $concurrency at a time each"
t0=$(date +%s)
for ((k = 0; k < clients; k++)); do
  first=$(( k * per_client ))
  count=$(( sessions - first < per_client ? sessions - first : per_client ))
  "$bin/jabberfarm-bench" idle --host 127.0.0.1 --port 27222 --follow-redirects \
    --mechanism "$mechanism" --first "$first" --user-count "$count" --count "$count" \
    --concurrency "$concurrency" --duration "$ready_timeout" --timeout 60 \
    --hold "$(( ready_timeout + 300 ))" --ready-file "$out/ready.$k" \
    "${pid_args[@]}" --json "$out/client.$k.json" >"$out/client.$k.txt" 2>&1 &
  client_pids+=($!)
done

deadline=$(( $(date +%s) + ready_timeout + 60 ))
while :; do
  ready=0
  for ((k = 0; k < clients; k++)); do [ -s "$out/ready.$k" ] && ready=$((ready + 1)); done
  (( ready == clients )) && break
  for ((k = 0; k < clients; k++)); do
    if ! kill -0 "${client_pids[$k]}" 2>/dev/null && [ ! -s "$out/ready.$k" ]; then
      echo "client $k ended before its sessions were in:" >&2
      tail -20 "$out/client.$k.txt" >&2
      exit 1
    fi
  done
  if (( $(date +%s) > deadline )); then
    echo "clients not ready after $ready_timeout s" >&2
    exit 1
  fi
  sleep 1
done
login_s=$(( $(date +%s) - t0 ))
sleep 2

held=0
for ((k = 0; k < clients; k++)); do held=$(( held + $(cat "$out/ready.$k") )); done
total_sessions=0
total_before=0
total_after=0
table=""
for ((i = 1; i <= slaves; i++)); do
  s=$(established $((27300 + i)))
  a=$(rss_kib "${node_pids[$i]}")
  b=${rss_before[$i]}
  per=$(awk -v a="$a" -v b="$b" -v s="$s" 'BEGIN { printf "%.1f", s ? (a - b) / s : 0 }')
  table+="| slave$i | $s | $(( b / 1024 )) | $(( a / 1024 )) | $per |"$'\n'
  total_sessions=$(( total_sessions + s ))
  total_before=$(( total_before + b ))
  total_after=$(( total_after + a ))
done
per_total=$(awk -v a="$total_after" -v b="$total_before" -v s="$total_sessions" \
  'BEGIN { printf "%.1f", s ? (a - b) / s : 0 }')
master_rss=$(rss_kib "${node_pids[0]}")

# What the farm burns doing nothing with every session open.
cpu_ticks() {
  local t=0 p
  for p in "${node_pids[@]}"; do t=$(( t + $(awk '{print $14 + $15}' "/proc/$p/stat") )); done
  echo "$t"
}
idle_s=10
c0=$(cpu_ticks)
sleep "$idle_s"
idle_pct=$(awk -v t="$(( $(cpu_ticks) - c0 ))" -v hz="$(getconf CLK_TCK)" -v s="$idle_s" \
  'BEGIN { printf "%.1f", 100 * t / hz / s }')

echo "--- $total_sessions sessions open; chat across slaves between probe users meanwhile"
slave_pid_args=()
for ((i = 1; i <= slaves; i++)); do slave_pid_args+=(--server-pid "${node_pids[$i]}"); done
chat_ok=1
if (( slaves > 1 )); then across=(--across); else across=(); fi
"$bin/jabberfarm-bench" chat --host 127.0.0.1 --port 27222 --follow-redirects \
  --users 'probe{n}' --user-count 40 --pairs 20 --rate 1000 "${across[@]}" --duration 10 \
  "${slave_pid_args[@]}" --json "$out/chat.json" >"$out/chat.txt" 2>&1 || chat_ok=0
cat "$out/chat.txt"

for p in "${client_pids[@]}"; do kill -USR1 "$p" 2>/dev/null || true; done
client_fail=0
for ((k = 0; k < clients; k++)); do wait "${client_pids[$k]}" || client_fail=1; done
client_pids=()
sleep 2
after_close=0
for ((i = 1; i <= slaves; i++)); do after_close=$(( after_close + $(rss_kib "${node_pids[$i]}") )); done
left=0
for ((i = 1; i <= slaves; i++)); do left=$(( left + $(established $((27300 + i))) )); done

t_stop=$(date +%s%N)
for p in "${node_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
for p in "${node_pids[@]}"; do wait "$p" 2>/dev/null || true; done
stop_ms=$(( ($(date +%s%N) - t_stop) / 1000000 ))
node_pids=()

errors=$(grep -hE "errors [1-9]|first error" "$out"/client.*.txt | head -5 || true)
{
  echo "## $sessions idle sessions on $slaves slave process(es)"
  echo
  cat "$out/machine.txt" | sed 's/^/    /'
  echo
  echo "Logged in (SCRAM through the master's redirect, $clients client processes): $held of $sessions in ${login_s} s"
  echo "(each user's first login is a discovery pass, so every user authenticated twice; the"
  echo "measured logins per client:)"
  echo
  for ((k = 0; k < clients; k++)); do
    grep -E "logins/s|latency" "$out/client.$k.txt" | sed "s/^ */    client $k: /"
  done
  echo
  echo "| slave | open sessions (ss) | RSS before, MiB | RSS with sessions, MiB | KiB per session |"
  echo "|---|---:|---:|---:|---:|"
  printf '%s' "$table"
  echo "| **all** | **$total_sessions** | $(( total_before / 1024 )) | $(( total_after / 1024 )) | **$per_total** |"
  echo
  if (( clients == 1 )); then
    echo "The client's own figure, slaves' RSS read after its discovery pass (the stores' caches"
    echo "warm), so the sessions alone:"
    echo
    grep -E "server RSS|per session" "$out/client.0.txt" | sed 's/^ */    /'
    echo
  fi
  echo "All nodes together, every session open and idle: ${idle_pct}% of one core over ${idle_s} s."
  echo "Master RSS: $(( master_rss_before / 1024 )) → $(( master_rss / 1024 )) MiB. After the clients left:"
  echo "$left connections open, slaves' RSS $(( after_close / 1024 )) MiB. SIGTERM to every node stopped the farm in ${stop_ms} ms."
  echo
  if (( chat_ok )); then
    echo "Meanwhile, 20 pairs of other users chatting ${across[*]:-on one slave} at 1,000 msg/s for 10 s:"
    echo
    grep -E "delivered|latency|CPU" "$out/chat.txt" | sed 's/^/    /' || true
  else
    echo "The chat during the hold FAILED: see $out/chat.txt"
  fi
  [ -z "$errors" ] || { echo; echo "Client errors:"; echo "$errors" | sed 's/^/    /'; }
} | tee "$out/summary.md"
echo "results in $out"
if (( total_sessions < sessions || client_fail || !chat_ok )); then
  echo "scale run FAILED: $total_sessions of $sessions sessions open" >&2
  exit 1
fi
