# Shared by the bench scripts (sourced): waiting for a port, refusing busy ports, and the
# machine / commit / date header every run records.

# wait_port PORT: until something accepts on 127.0.0.1:PORT (at most 20 s).
wait_port() {
  for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on $1" >&2
  return 1
}

# ports_free WHAT PORT...: exit when one of them is taken (WHAT says what probably holds it).
ports_free() {
  local what=$1
  shift
  for p in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "port $p is in use: is $what already running?" >&2
      exit 1
    fi
  done
}

# machine_info FILE: machine, commit and date, to stdout and FILE.
machine_info() {
  {
    echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
      echo "commit:  $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with local changes)')"
    fi
    echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
  } | tee "$1"
}

# demo_config MODE OUT: conf/farm.toml with `[relay] redirect = MODE` and no per-session shaper
# (a load generator is not a person: limits.session_* would slow it down on purpose), into OUT.
demo_config() {
  local mode=$1 out=$2
  sed -e "s/^redirect = \"auto\" /redirect = \"$mode\" /" \
      -e 's/^session_stanzas_per_second = .*/session_stanzas_per_second = 0/' \
      -e 's/^session_bytes_per_second = .*/session_bytes_per_second = 0/' \
      conf/farm.toml >"$out"
  grep -q "^redirect = \"$mode\"" "$out" \
    && grep -q '^session_stanzas_per_second = 0\b' "$out" \
    && grep -q '^session_bytes_per_second = 0\b' "$out" \
    || { echo "conf/farm.toml: no [relay] redirect or [limits] session_* lines to set" >&2; exit 1; }
}

# The processes a script starts: `pids+=($!)` (and `pid_of[NAME]=$!`) after each; `cleanup`
# stops them all (SIGTERM, then waits), and runs on exit once the script sets
# `trap cleanup EXIT`.
pids=()
declare -A pid_of
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}

# start_demo_nodes BIN CONFIG DATA OUT [CPUS]: the demo farm (master, slave1, slave2) as one
# process each (`jabberfarm run --node`, logs in OUT/NODE.log, pids in pid_of), on the CPUs
# CPUS if given (taskset -c), waiting until every node listens and the master's links are up
# (its status row says 2/2).
start_demo_nodes() {
  local bin=$1 config=$2 data=$3 out=$4 cpus=${5:-} node
  local on=()
  [ -z "$cpus" ] || on=(taskset -c "$cpus")
  for node in master slave1 slave2; do
    "${on[@]}" "$bin/jabberfarm" run --config "$config" --node "$node" --data-dir "$data" \
      >>"$out/$node.log" 2>&1 &
    pids+=($!)
    pid_of[$node]=$!
  done
  for p in 5222 5322 5422; do wait_port "$p"; done
  for _ in $(seq 1 200); do
    "$bin/jabberfarm" status --config "$config" 2>/dev/null | grep -q '^master .* 2/2 ' && return 0
    sleep 0.1
  done
  echo "the farm's links did not come up; see $out/*.log" >&2
  return 1
}

# cpu_ticks PID: the process's CPU time so far (utime + stime), in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# cpu_report BEFORE_ASSOC [NODE…]: for each node (default master, slave1, slave2), the CPU
# seconds since the ticks in the named associative array (filled with cpu_ticks before).
cpu_report() {
  local -n since=$1
  shift
  local hz node nodes=("$@")
  [ "${#nodes[@]}" -gt 0 ] || nodes=(master slave1 slave2)
  hz=$(getconf CLK_TCK)
  for node in "${nodes[@]}"; do
    awk -v n="$node" -v b="${since[$node]}" -v a="$(cpu_ticks "${pid_of[$node]}")" -v hz="$hz" \
      'BEGIN { printf "CPU %-7s %.2f s\n", n, (a - b) / hz }'
  done
}

# start_bench_mariadb DIR PORT: a throwaway MariaDB (tests/servers/mariadb.sh, data in DIR,
# on 127.0.0.1:PORT) with an empty database jf_bench; sets db_url, and stops it (after the
# nodes, `cleanup`) when the script exits.
start_bench_mariadb() {
  db_dir=$1
  db_url=$(bash tests/servers/mariadb.sh start "$db_dir" "$2" $$ | sed -n 's/^url=//p')
  [ -n "$db_url" ] || { echo "MariaDB did not start" >&2; exit 1; }
  bash tests/servers/mariadb.sh sql "$db_dir" 'CREATE DATABASE jf_bench'
  trap 'cleanup; bash tests/servers/mariadb.sh stop "$db_dir" >/dev/null 2>&1 || true' EXIT
}

# central_storage CONFIG RATE: CONFIG (from demo_config, its `backend` line set to "mysql"
# already) gets its data in start_bench_mariadb's jf_bench and [rebalance] users_per_second =
# RATE; checked.
central_storage() {
  printf '\n[storage.mysql]\nurl = "%s/jf_bench"\nmax_connections = 16\n\n[rebalance]\nusers_per_second = %s\n' \
    "$db_url" "$2" >>"$1"
  grep -q '^backend = "mysql"' "$1" || { echo "conf/farm.toml: no backend line to set" >&2; exit 1; }
}

# weigh_slave2 CONFIG WEIGHT: slave2's `weight` in CONFIG (from demo_config) set to WEIGHT, so
# that it owns that many times slave1's share of the users in hash mode; checked.
weigh_slave2() {
  awk -v w="$2" '/^name = "slave2"/ { print; getline; print; getline; print "weight = " w; next } { print }' \
    "$1" >"$1.weighed"
  mv "$1.weighed" "$1"
  grep -q "^weight = $2\$" "$1" || { echo "conf/farm.toml: slave2's weight not set" >&2; exit 1; }
}

# central_demo_config OUT RATE: OUT/farm.toml, the demo config with its data in
# start_bench_mariadb's database (failover with central data) and [rebalance] users_per_second =
# RATE (the caller checks it).
central_demo_config() {
  demo_config always "$1/farm.tmp"
  sed -e 's/^backend = "sqlite" .*/backend = "mysql"/' "$1/farm.tmp" >"$1/farm.toml"
  rm "$1/farm.tmp"
  central_storage "$1/farm.toml" "$2"
}

# hold_idle_sessions OUT DATA SESSIONS HOLD_S: SESSIONS idle sessions through the master
# (`jabberfarm-bench idle --follow-redirects --follow-moves`, SCRAM-SHA-256 over STARTTLS; a
# moved session logs in where it is sent, one whose connection ends logs in again from the
# master), held HOLD_S seconds or until SIGUSR1; returns once they are all in, with the bench's
# pid in bench_pid, its report in OUT/idle.txt and OUT/idle.json.
hold_idle_sessions() {
  "$bin/jabberfarm-bench" idle --port 5222 --follow-redirects --follow-moves \
    --tls starttls --ca "$2/tls/ca.pem" --mechanism SCRAM-SHA-256 \
    --user-count "$3" --count "$3" --concurrency 50 --duration 300 --timeout 60 \
    --hold "$4" --ready-file "$1/ready" --json "$1/idle.json" >"$1/idle.txt" 2>&1 &
  bench_pid=$!
  for _ in $(seq 1 3000); do
    [ -s "$1/ready" ] && return 0
    kill -0 "$bench_pid" 2>/dev/null || { echo "the bench ended early:" >&2; tail -20 "$1/idle.txt" >&2; exit 1; }
    sleep 0.1
  done
  echo "the sessions did not all log in within 300 s" >&2
  exit 1
}

# sessions_on NODE: NODE's sessions column in `status` of the farm in $out/farm.toml (empty if
# status cannot say; a node that is down makes it fail, which the benches expect).
sessions_on() {
  { "$bin/jabberfarm" status --config "$out/farm.toml" 2>/dev/null || true; } \
    | awk -v node="$1" '$1 == node { print $8 }'
}

# wait_sessions NODE N [SECONDS]: until NODE holds N sessions (sessions_on), at most SECONDS
# (default 120); fails if it never does.
wait_sessions() {
  local until=$((SECONDS + ${3:-120}))
  while [ "$SECONDS" -lt "$until" ]; do
    [ "$(sessions_on "$1")" = "$2" ] && return 0
    sleep 0.05
  done
  return 1
}

# report_home WHAT START N: the end of a bench that sends slave2's N users home (after WHAT,
# at START, `date +%s.%N`): how long until slave2 holds them all again (or the status, if it
# does not within 120 s), into $out/result.txt; then the idle bench (bench_pid) is released
# and its move counts are added.
report_home() {
  local home="" end
  wait_sessions slave2 "$3" && home=1
  end=$(date +%s.%N)
  if [ -n "$home" ]; then
    awk -v s="$2" -v e="$end" -v n="$3" -v w="$1" \
      'BEGIN { printf "from %s to %d sessions home on slave2: %.2f s\n", w, n, e - s }' \
      | tee -a "$out/result.txt"
  else
    echo "not every session went home:" | tee -a "$out/result.txt"
    "$bin/jabberfarm" status --config "$out/farm.toml" | tee -a "$out/result.txt"
  fi
  sleep 3
  kill -USR1 "$bench_pid"
  wait "$bench_pid" || true
  grep -E 'moved|move_' "$out/idle.txt" | tee -a "$out/result.txt" || tail -20 "$out/idle.txt"
  echo "results in $out"
}

# central_bench_start: what the central-data benches do first, from their $out, $db_port
# and $bin: the release build (unless SKIP_BUILD=1), the demo ports and DB_PORT free, $out
# with machine.txt, $data set, and a throwaway MariaDB (start_bench_mariadb) in $out/db.
central_bench_start() {
  [ -n "${SKIP_BUILD:-}" ] || cargo build --release -p jabberfarm -p jabberfarm-bench
  ports_free "a farm" 5222 5322 5422 7100 "$db_port"
  mkdir -p "$out"
  data="$out/data"
  machine_info "$out/machine.txt"
  start_bench_mariadb "$out/db" "$db_port"
}

# central_sessions_up: after central_bench_start and $out/farm.toml written, check it, create
# $sessions users in MariaDB, start every node as its own process and hold $sessions idle
# sessions (hold_idle_sessions, for up to 900 s or SIGUSR1).
central_sessions_up() {
  "$bin/jabberfarm" check --config "$out/farm.toml"
  echo "== $sessions users in MariaDB"
  CONFIG="$out/farm.toml" DATA_DIR="$data" JABBERFARM="$bin/jabberfarm" \
    bash bench/setup-users.sh "$sessions"
  start_demo_nodes "$bin" "$out/farm.toml" "$data" "$out"
  echo "== $sessions sessions"
  hold_idle_sessions "$out" "$data" "$sessions" 900
}

# demo_chat_farm_start OUT BIN: the demo farm (SQLite), every node its own process, with the
# users bench0… a chat bench needs, its files in OUT (made, with machine.txt); nodes stopped
# when the script exits.
demo_chat_farm_start() {
  ports_free "a farm" 5222 5322 5422 7100 7101 7102
  mkdir -p "$1"
  machine_info "$1/machine.txt"
  demo_config always "$1/farm.toml"
  CONFIG="$1/farm.toml" DATA_DIR="$1/data" JABBERFARM="$2/jabberfarm" \
    bash bench/setup-users.sh 2000 >/dev/null
  trap cleanup EXIT
  start_demo_nodes "$2" "$1/farm.toml" "$1/data" "$1"
}
