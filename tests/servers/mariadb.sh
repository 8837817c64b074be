#!/usr/bin/env bash
# A throwaway MariaDB for the tests: its own data directory, a unix socket in it and a TCP port
# on 127.0.0.1. Never systemd, never the machine's own server.
#
#   mariadb.sh start DIR PORT OWNER_PID   initialise DIR on first use, start the server, wait
#                                         until it answers; prints `url=mysql://...` (the
#                                         test user `jabberfarm` with its password)
#   mariadb.sh stop DIR                   stop the server (SIGTERM, wait for the process)
#   mariadb.sh kill DIR                   stop it at once (SIGKILL), for a server being discarded
#   mariadb.sh sql DIR 'SQL'              run SQL as root over the socket
#   mariadb.sh log DIR                    print the server's error log
#
# The test user may create and use databases named jf_*; root logs in over the socket only.
# The system tables are made once per machine and server version (mariadb-install-db) into
# $TMPDIR/jabberfarm-mariadb-template-UID-VERSION and copied for each new server.
# A watchdog stops the server when OWNER_PID (the test process) is gone, so a killed test run
# leaves no server behind. Exit status 1 with the server's log when it does not come up.
set -euo pipefail

PASSWORD='jf-test-pw'
cmd=${1:?usage: mariadb.sh start|stop|sql|log DIR ...}
dir=${2:?data directory}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
sock="$dir/mysql.sock"
pidfile="$dir/mariadbd.pid"
log="$dir/error.log"

find_bin() {
  for b in "$@"; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
    for d in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin; do
      if [ -x "$d/$b" ]; then echo "$d/$b"; return 0; fi
    done
  done
  echo "mariadb.sh: none of $* found: install mariadb-server (apt-get install mariadb-server)" >&2
  return 1
}

as_root_user=()
[ "$(id -u)" = 0 ] && as_root_user=(--user=root)

client() {
  "$(find_bin mariadb mysql)" --no-defaults --protocol=socket -S "$sock" -uroot "$@"
}

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

case "$cmd" in
start)
  port=${3:?port}
  owner=${4:?owner pid}
  server=$(find_bin mariadbd mysqld)
  if running; then
    echo "mariadb.sh: already running in $dir" >&2
    exit 1
  fi
  if [ ! -d "$dir/data/mysql" ]; then
    # mariadb-install-db takes seconds; do it once per machine and server version into a
    # template (under a lock: test processes start in parallel), then copy the template.
    version=$("$server" --version | cksum | cut -d' ' -f1)
    template="${TMPDIR:-/tmp}/jabberfarm-mariadb-template-$(id -u)-$version"
    (
      flock 9
      if [ ! -d "$template/mysql" ]; then
        rm -rf "$template.tmp"
        mkdir -p "$template.tmp"
        if ! "$(find_bin mariadb-install-db mysql_install_db)" --no-defaults \
            "${as_root_user[@]}" --datadir="$template.tmp" \
            --auth-root-authentication-method=normal --skip-test-db \
            >"$dir/install.log" 2>&1; then
          echo "mariadb.sh: mariadb-install-db failed:" >&2
          cat "$dir/install.log" >&2
          exit 1
        fi
        mv "$template.tmp" "$template"
      fi
    ) 9>"$template.lock"
    cp -a "$template" "$dir/data"
    fresh=1
  else
    fresh=0
  fi
  # Small and fast: a test database, not a production server.
  nohup "$server" --no-defaults "${as_root_user[@]}" --datadir="$dir/data" \
    --socket="$sock" --port="$port" --bind-address=127.0.0.1 --pid-file="$pidfile" \
    --log-error="$log" --skip-name-resolve --skip-log-bin --performance-schema=0 \
    --innodb-buffer-pool-size=32M --innodb-log-file-size=16M \
    --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 \
    --max-connections=200 >/dev/null 2>&1 </dev/null &
  started=$!
  for _ in $(seq 1 300); do
    if client -e 'SELECT 1' >/dev/null 2>&1; then break; fi
    # Gone already (it could not bind, …): no use waiting.
    kill -0 "$started" 2>/dev/null || break
    sleep 0.1
  done
  if ! client -e 'SELECT 1' >/dev/null 2>&1; then
    if grep -q "Address already in use" "$log" 2>/dev/null; then
      # The port was free when the caller chose it and taken since (an outgoing connection's
      # ephemeral port, another test's server): exit 3, so that it tries another; a fresh
      # data directory goes with this attempt, so the next one sets its user up again.
      echo "mariadb.sh: port $port was taken before the server could bind it" >&2
      [ "$fresh" = 0 ] || rm -rf "$dir/data"
      rm -f "$log"
      exit 3
    fi
    echo "mariadb.sh: the server did not come up within 30 s; its log ($log):" >&2
    cat "$log" >&2 2>/dev/null || true
    exit 1
  fi
  if [ "$fresh" = 1 ]; then
    client -e "CREATE USER 'jabberfarm'@'127.0.0.1' IDENTIFIED BY '$PASSWORD';
               GRANT ALL PRIVILEGES ON \`jf\\_%\`.* TO 'jabberfarm'@'127.0.0.1';"
  fi
  # The watchdog: stop the server once the test process is gone.
  server_pid=$(cat "$pidfile")
  nohup bash -c "while kill -0 $owner 2>/dev/null && kill -0 $server_pid 2>/dev/null; do
                   sleep 1; done; kill $server_pid 2>/dev/null" >/dev/null 2>&1 </dev/null &
  echo "url=mysql://jabberfarm:$PASSWORD@127.0.0.1:$port"
  ;;
stop)
  if running; then
    pid=$(cat "$pidfile")
    kill -TERM "$pid"
    for _ in $(seq 1 300); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  ;;
kill)
  # The end of a test: no clean shutdown needed, the data directory is thrown away.
  if running; then
    pid=$(cat "$pidfile")
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
  fi
  ;;
sql)
  client -e "${3:?SQL}"
  ;;
log)
  cat "$log" 2>/dev/null || true
  ;;
*)
  echo "mariadb.sh: unknown command $cmd" >&2
  exit 2
  ;;
esac
