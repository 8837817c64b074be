#!/usr/bin/env bash
# Prosody, ejabberd and jabberfarm side by side, in one run, with the same load client:
#
#   bash bench/compare.sh [OUT_DIR]      # default OUT_DIR: /tmp/jabberfarm-compare/<date-time>
#
# 1. installs Prosody and ejabberd from Debian when missing (apt-get, as root, services kept
#    from starting; a system instance found running is stopped with `service X stop`);
# 2. starts each server on loopback with a throwaway config and data dir under OUT_DIR, on
#    ports of its own (Prosody 25222, ejabberd 25322, the farm's master 25422 and its one slave
#    25522: nothing binds 5222/5269), rate limits lifted (configs: bench/compare/), pinned to
#    core 0, and creates the same users (bench0 … bench(USERS-1), password "bench") with each
#    server's own tool;
# 3. runs the same scenarios with jabberfarm-bench pinned to core 1 — PLAIN and SCRAM logins
#    without TLS, idle sessions on a fresh process, chat closed loop and open loop at 1,000 and
#    4,000 msg/s; for the farm also redirects at the master — each with the server's pid, so
#    server CPU per operation is measured; every measured run (and the CPU-heavy user
#    creation) holds `flock /tmp/jabberfarm-bench.lock`, so it never overlaps another
#    benchmark on this machine;
# 4. prints the side-by-side table (OUT_DIR/side-by-side.md) and writes it, with the machine,
#    versions and commands, into docs/benchmarks.md between the "compare.sh" markers.
#
# Environment: USERS (accounts per server and idle sessions, default 2000), LOGIN_USERS (users
# the login runs cycle through, default 500), DURATION (seconds per timed phase, default 10),
# PAIRS (chat pairs, default 20), PASSWORDS (hashed, the default: Prosody and ejabberd store
# SCRAM keys, as the farm always does; plain: they store the password itself), SKIP_BUILD=1, SKIP_INSTALL=1, NO_DOCS=1 (leave
# docs/benchmarks.md alone), SERVERS (default "prosody ejabberd farm").
# Takes 5–8 minutes (longer while another benchmark holds the lock).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
users="${USERS:-2000}"
login_users="${LOGIN_USERS:-500}"
[ "$login_users" -le "$users" ] || login_users=$users
duration="${DURATION:-10}"
pairs="${PAIRS:-20}"
passwords="${PASSWORDS:-hashed}"
case $passwords in hashed | plain) ;; *) echo "PASSWORDS must be hashed or plain" >&2; exit 2 ;; esac
servers="${SERVERS:-prosody ejabberd farm}"
lock=/tmp/jabberfarm-bench.lock
out="${1:-${TMPDIR:-/tmp}/jabberfarm-compare/$(date +%Y%m%d-%H%M%S)}"
bin="$CARGO_TARGET_DIR/release"
prosody_port=25222
ejabberd_port=25322
farm_master_port=25422 # these two are in bench/compare/farm.toml
farm_slave_port=25522
server_core=0
client_core=1

log() { echo "compare: $*" >&2; }
# shellcheck source=bench/apt-install.sh
source bench/apt-install.sh

# --- 1. Prosody and ejabberd ----------------------------------------------------------------
install_servers() {
  local missing=()
  command -v prosody >/dev/null || missing+=(prosody)
  command -v ejabberdctl >/dev/null || missing+=(ejabberd)
  if [ ${#missing[@]} -gt 0 ]; then
    [ "$(id -u)" = 0 ] || { log "need root to install ${missing[*]}"; exit 1; }
    log "installing ${missing[*]} from Debian"
    # Without system-wide servers on 5222/5269 (bench/apt-install.sh).
    install_quietly "$out/apt.log" "${missing[@]}"
  fi
  # A system instance left running (e.g. installed elsewhere with services allowed) would
  # hold 5222/5269, which other tests here need: stop it. Only the packaged instances are
  # looked at (their pidfile, their default node), never other Prosody/Erlang processes.
  if [ -s /run/prosody/prosody.pid ] && kill -0 "$(cat /run/prosody/prosody.pid)" 2>/dev/null; then
    log "stopping the system Prosody"
    service prosody stop || true
  fi
  # (Not `ejabberdctl status`: that starts an Erlang VM, and epmd on all interfaces with it.)
  if ! port_free 4369 && epmd -names 2>/dev/null | grep -q '^name ejabberd at'; then
    log "stopping the system ejabberd"
    service ejabberd stop || true
  fi
}

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  log "nothing listens on $1"
  return 1
}

wait_gone() { # PID [tenths of a second]
  for _ in $(seq 1 "${2:-100}"); do
    kill -0 "$1" 2>/dev/null || return 0
    sleep 0.1
  done
  return 1
}

# --- the servers ----------------------------------------------------------------------------
prosody_pid=""
ejabberd_pid=""
master_pid=""
slave_pid=""
epmd_before=""

prosody_start() {
  local d="$out/prosody"
  echo "# prosody: taskset -c $server_core prosody --config $d/prosody.cfg.lua -F" >>"$out/commands.txt"
  taskset -c "$server_core" prosody --config "$d/prosody.cfg.lua" -F >>"$d/stdout.log" 2>&1 &
  prosody_pid=$! # /usr/bin/prosody is a Lua script: this pid is the server itself
  wait_port "$prosody_port"
}

prosody_stop() {
  [ -n "$prosody_pid" ] || return 0
  kill -TERM "$prosody_pid" 2>/dev/null || true
  wait_gone "$prosody_pid" || kill -KILL "$prosody_pid" 2>/dev/null || true
  wait "$prosody_pid" 2>/dev/null || true
  prosody_pid=""
}

prosody_setup() {
  local d="$out/prosody"
  mkdir -p "$d/data" "$d/certs"
  sed -e "s|@DIR@|$d|g" -e "s|@PORT@|$prosody_port|g" -e "s|@AUTH@|internal_$passwords|g" \
    bench/compare/prosody.cfg.lua >"$d/prosody.cfg.lua"
  prosody_start
  # prosodyctl's admin shell reads commands from stdin: one process for all users (one
  # `prosodyctl register` per user costs ~0.15 s of start-up each).
  local start=$SECONDS
  echo "# prosody users: printf 'user:create(\"bench%d@localhost\", \"bench\")\\n' 0…$((users - 1)) | prosodyctl --config $d/prosody.cfg.lua shell" >>"$out/commands.txt"
  for ((i = 0; i < users; i++)); do
    printf 'user:create("bench%d@localhost", "bench")\n' "$i"
  done | flock "$lock" prosodyctl --config "$d/prosody.cfg.lua" shell >"$d/register.log" 2>&1
  local n
  n=$(find "$d/data/localhost/accounts" -name 'bench*.dat' | wc -l)
  [ "$n" -ge "$users" ] || { log "prosody: only $n of $users users created (see $d/register.log)"; exit 1; }
  log "prosody: $users users in $((SECONDS - start)) s"
  prosody_stop # measured runs start on a fresh process
}

ejabberd_node="jfcompare$$@localhost"
ejabberdctl_() {
  local d="$out/ejabberd"
  ejabberdctl --config-dir "$d/etc" --spool "$d/spool" --logs "$d/logs" --node "$ejabberd_node" "$@"
}

ejabberd_start() {
  local d="$out/ejabberd"
  # As the ejabberd user through setpriv, not ejabberdctl's own `su`: su's PAM session resets
  # the open-files limit to 1024 (ejabberd then fails accepts with "too many open files" near
  # 1,000 sessions); setpriv keeps ours (20,000 here).
  echo "# ejabberd: taskset -c $server_core setpriv --reuid=ejabberd --regid=ejabberd --init-groups env HOME=/var/lib/ejabberd ejabberdctl --config-dir $d/etc --spool $d/spool --logs $d/logs --node $ejabberd_node foreground" >>"$out/commands.txt"
  (cd "$d" && exec taskset -c "$server_core" setpriv --reuid=ejabberd --regid=ejabberd --init-groups \
    env HOME=/var/lib/ejabberd ejabberdctl --config-dir "$d/etc" --spool "$d/spool" \
    --logs "$d/logs" --node "$ejabberd_node" foreground >>"$d/foreground.log" 2>&1) &
  # ejabberdctl → su ejabberd → erl → beam.smp: the server is the beam.smp with our node name.
  for _ in $(seq 1 300); do
    ejabberd_pid=$(pgrep -f "beam.smp.*-sname $ejabberd_node" | head -1 || true)
    [ -n "$ejabberd_pid" ] && break
    sleep 0.1
  done
  [ -n "$ejabberd_pid" ] || { log "ejabberd did not start (see $d/logs, $d/foreground.log)"; exit 1; }
  ejabberdctl_ started >/dev/null
  wait_port "$ejabberd_port"
}

ejabberd_stop() {
  [ -n "$ejabberd_pid" ] || return 0
  ejabberdctl_ stop >/dev/null 2>&1 || kill -TERM "$ejabberd_pid" 2>/dev/null || true
  wait_gone "$ejabberd_pid" 200 || kill -KILL "$ejabberd_pid" 2>/dev/null || true
  ejabberd_pid=""
}

ejabberd_setup() {
  local d="$out/ejabberd"
  mkdir -p "$d/etc" "$d/spool" "$d/logs"
  local format=scram
  [ "$passwords" = hashed ] || format=plain
  sed -e "s|@PORT@|$ejabberd_port|g" -e "s|@PWFORMAT@|$format|g" bench/compare/ejabberd.yml >"$d/etc/ejabberd.yml"
  cp /etc/ejabberd/inetrc "$d/etc/inetrc"
  cp bench/compare/ejabberd-register.escript "$d/register.escript"
  # Erlang distribution and epmd on loopback only; the pid file in our dir.
  cat >"$d/etc/ejabberdctl.cfg" <<EOF
ERL_OPTIONS="-env ERL_CRASH_DUMP_BYTES 0"
ERL_EPMD_ADDRESS=127.0.0.1
INET_DIST_INTERFACE=127.0.0.1
EJABBERD_PID_PATH=$d/spool/ejabberd.pid
EOF
  # ejabberdctl run as root runs the node as the ejabberd user.
  chown -R ejabberd: "$d"
  chmod o+rx "$out"
  port_free 4369 || epmd_before=running # Erlang's port mapper, shared by all Erlang nodes
  ejabberd_start
  local start=$SECONDS
  echo "# ejabberd users: su -s /bin/sh ejabberd -c 'escript bench/compare/ejabberd-register.escript $ejabberd_node localhost bench{n} $users bench'" >>"$out/commands.txt"
  flock "$lock" su -s /bin/sh ejabberd -c \
    "cd $(printf %q "$d") && HOME=/var/lib/ejabberd ERL_EPMD_ADDRESS=127.0.0.1 escript register.escript $ejabberd_node localhost 'bench{n}' $users bench" \
    >"$d/register.log" 2>&1 || { log "ejabberd: registration failed: $(tail -3 "$d/register.log")"; exit 1; }
  log "ejabberd: $users users in $((SECONDS - start)) s"
  ejabberd_stop
}

farm_config=bench/compare/farm.toml
farm_start() {
  local d="$out/farm"
  # The master first: on the first start it generates the demo CA and certificate, which the
  # slave then reads (started together, the slave can find the CA half-written).
  echo "# farm: taskset -c $server_core jabberfarm run --config $farm_config --node master --data-dir $d/data; the same with --node slave1" >>"$out/commands.txt"
  taskset -c "$server_core" "$bin/jabberfarm" run --config "$farm_config" --node master --data-dir "$d/data" \
    >>"$d/master.log" 2>&1 &
  master_pid=$!
  wait_port "$farm_master_port"
  taskset -c "$server_core" "$bin/jabberfarm" run --config "$farm_config" --node slave1 --data-dir "$d/data" \
    >>"$d/slave1.log" 2>&1 &
  slave_pid=$!
  wait_port "$farm_slave_port"
  sleep 2 # the farm link (the master redirects only to slaves it sees alive)
}

farm_stop() {
  for p in $master_pid $slave_pid; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $master_pid $slave_pid; do wait "$p" 2>/dev/null || true; done
  master_pid=""
  slave_pid=""
}

farm_setup() {
  local d="$out/farm"
  mkdir -p "$d/data"
  echo "# farm users: JABBERFARM=jabberfarm CONFIG=$farm_config DATA_DIR=$d/data bash bench/setup-users.sh $users" >>"$out/commands.txt"
  JABBERFARM="$bin/jabberfarm" CONFIG="$farm_config" DATA_DIR="$d/data" \
    flock "$lock" bash bench/setup-users.sh "$users" >"$d/register.log" 2>&1 ||
    { log "farm: user creation failed: $(tail -3 "$d/register.log")"; exit 1; }
  log "farm: $(tail -1 "$d/register.log")"
}

cleanup() {
  prosody_stop
  ejabberd_stop
  farm_stop
  # epmd (Erlang's port mapper, started by ejabberd on 127.0.0.1:4369): stop it if we started it.
  if [ -n "${ejabberd_started:-}" ] && [ -z "$epmd_before" ] && ! port_free 4369; then
    ERL_EPMD_ADDRESS=127.0.0.1 epmd -kill >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the runs -------------------------------------------------------------------------------
run() { # SERVER NAME SCENARIO ARGS… : one measured run, table to OUT/SERVER-NAME.txt, JSON beside
  local server=$1 name=$2
  shift 2
  echo "--- $server $name: jabberfarm-bench $*" | tee "$out/$server-$name.txt" >>"$out/commands.txt"
  if ! flock "$lock" taskset -c "$client_core" "$bin/jabberfarm-bench" "$@" --json "$out/$server-$name.json" \
    >>"$out/$server-$name.txt" 2>&1; then
    log "$server $name failed: $(tail -2 "$out/$server-$name.txt")"
  fi
  cat "$out/$server-$name.txt"
}

scenarios() { # SERVER PORT SCRAM-MECHANISM PID… : the same runs against any server
  local server=$1 port=$2 scram=$3
  shift 3
  local pids=()
  for p in "$@"; do pids+=(--server-pid "$p"); done
  local t=(--port "$port" --domain localhost --duration "$duration" "${pids[@]}")
  run "$server" login-plain login "${t[@]}" --user-count "$login_users" --count 20000 --concurrency 20 --mechanism PLAIN
  run "$server" login-scram login "${t[@]}" --user-count "$login_users" --count 20000 --concurrency 20 --mechanism "$scram"
  run "$server" chat-closed chat "${t[@]}" --user-count $((2 * pairs)) --pairs "$pairs"
  run "$server" chat-1000 chat "${t[@]}" --user-count $((2 * pairs)) --pairs "$pairs" --rate 1000
  run "$server" chat-4000 chat "${t[@]}" --user-count $((2 * pairs)) --pairs "$pairs" --rate 4000
}

idle() { # SERVER PORT SCRAM-MECHANISM PID… : on a freshly started server
  local server=$1 port=$2 scram=$3
  shift 3
  local pids=()
  for p in "$@"; do pids+=(--server-pid "$p"); done
  run "$server" idle idle --port "$port" --domain localhost --duration "$duration" "${pids[@]}" \
    --user-count "$users" --count "$users" --concurrency 50 --hold 5 --mechanism "$scram"
}

# --- main -----------------------------------------------------------------------------------
mkdir -p "$out"
: >"$out/commands.txt"
start_all=$SECONDS
[ -n "${SKIP_INSTALL:-}" ] || install_servers
if [ -z "${SKIP_BUILD:-}" ]; then
  log "building"
  cargo build --release -p jabberfarm -p jabberfarm-bench >"$out/build.log" 2>&1 ||
    { tail -20 "$out/build.log"; exit 1; }
fi
# Our own copy: a build by someone else during the run must not swap the binaries under us.
mkdir -p "$out/bin"
cp "$bin/jabberfarm" "$bin/jabberfarm-bench" "$out/bin/"
bin="$out/bin"
for p in $prosody_port $ejabberd_port $farm_master_port $farm_slave_port 27100 27101; do
  port_free "$p" || { log "port $p is in use (an earlier compare.sh still running?)"; exit 1; }
done

{
  echo "date:       $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "machine:    $(nproc) cores,$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-), $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
  echo "prosody:    $(dpkg-query -W -f '${Version}' prosody 2>/dev/null) (Debian), $(lua5.4 -v 2>&1 | awk 'NR == 1 {print $1, $2}' || true), network backend epoll"
  echo "ejabberd:   $(dpkg-query -W -f '${Version}' ejabberd 2>/dev/null) (Debian), Erlang/OTP $(erl -noshell -eval 'io:format("~s", [erlang:system_info(otp_release)]), halt().' 2>/dev/null || echo '?'), mnesia"
  echo "jabberfarm: commit $(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD 2>/dev/null || echo ' + local changes'), release build, SQLite, one master + one slave process"
  echo "client:     jabberfarm-bench on core $client_core; servers on core $server_core"
  echo "passwords:  Prosody and ejabberd: $passwords storage (PASSWORDS=$passwords); jabberfarm: SCRAM keys, 4096 iterations"
  echo "runs:       USERS=$users LOGIN_USERS=$login_users DURATION=$duration PAIRS=$pairs"
} | tee "$out/machine.txt"

# Idle logins take each server's cheap path: with hashed storage SCRAM (no PBKDF2 on the server),
# with plain storage PLAIN (SCRAM would derive keys at every login; in ejabberd that garbage
# inflated RSS to ~400 KiB per session and hid the sessions' own memory).
if [ "$passwords" = hashed ]; then
  idle_mech_prosody=SCRAM-SHA-1 # Prosody 0.12's internal_hashed offers no SCRAM-SHA-256
  idle_mech_ejabberd=SCRAM-SHA-256 # auth_scram_hash: sha256 offers only this one
else
  idle_mech_prosody=PLAIN
  idle_mech_ejabberd=PLAIN
fi
for s in $servers; do
  case $s in
    prosody)
      prosody_setup
      prosody_start
      idle prosody "$prosody_port" "$idle_mech_prosody" "$prosody_pid"
      prosody_stop
      prosody_start
      scenarios prosody "$prosody_port" SCRAM-SHA-1 "$prosody_pid"
      prosody_stop
      ;;
    ejabberd)
      ejabberd_started=1
      ejabberd_setup
      ejabberd_start
      idle ejabberd "$ejabberd_port" "$idle_mech_ejabberd" "$ejabberd_pid"
      ejabberd_stop
      ejabberd_start
      scenarios ejabberd "$ejabberd_port" SCRAM-SHA-256 "$ejabberd_pid"
      ejabberd_stop
      ;;
    farm)
      farm_setup
      farm_start
      idle farm "$farm_slave_port" SCRAM-SHA-256 "$slave_pid"
      farm_stop
      farm_start
      run farm redirect redirect --port "$farm_master_port" --domain localhost --duration "$duration" \
        --server-pid "$master_pid" --user-count "$login_users" --count 20000 --concurrency 50
      scenarios farm "$farm_slave_port" SCRAM-SHA-256 "$slave_pid"
      farm_stop
      ;;
    *) log "unknown server $s"; exit 2 ;;
  esac
done

python3 bench/compare/table.py "$out" >"$out/side-by-side.md"
jsons=()
for f in "$out"/{prosody,ejabberd,farm}-*.json; do [ -e "$f" ] && jsons+=("$f"); done
"$bin/jabberfarm-bench" summary "${jsons[@]}" >"$out/runs.md"
log "done in $((SECONDS - start_all)) s; results in $out"
echo
cat "$out/side-by-side.md"

# --- 4. docs/benchmarks.md --------------------------------------------------------------------
if [ -z "${NO_DOCS:-}" ]; then
  section="$out/docs-section.md"
  {
    echo "<!-- compare.sh: begin (generated by bench/compare.sh; edit the script, not this) -->"
    echo "Run of \`bash bench/compare.sh\`:"
    echo
    echo '```'
    cat "$out/machine.txt"
    echo '```'
    echo
    cat "$out/side-by-side.md"
    echo
    echo "Every run (\`jabberfarm-bench summary\`):"
    echo
    cat "$out/runs.md"
    echo
    echo "The commands, in order (\`#\` lines: servers started and users created; \`--server-pid\` is the"
    echo "server's process; the farm's login, idle and chat runs load the slave, the redirect run the"
    echo "master; each server is restarted between its idle run and the rest):"
    echo
    echo '```'
    sed "s|$out|\$OUT|g" "$out/commands.txt"
    echo '```'
    echo "<!-- compare.sh: end -->"
  } >"$section"
  doc=docs/benchmarks.md
  if grep -q '^<!-- compare.sh: begin' "$doc" && grep -q '^<!-- compare.sh: end' "$doc"; then
    awk -v sec="$section" '
      /^<!-- compare.sh: begin/ { while ((getline line < sec) > 0) print line; skip = 1; next }
      /^<!-- compare.sh: end/ { skip = 0; next }
      !skip { print }' "$doc" >"$doc.new" && mv "$doc.new" "$doc"
  else
    { echo; echo "## Side by side: Prosody, ejabberd, jabberfarm"; echo; cat "$section"; } >>"$doc"
  fi
  log "wrote the side-by-side section of $repo/$doc"
fi
