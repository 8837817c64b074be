#!/usr/bin/env bash
# A throwaway OpenLDAP slapd for the tests: slapd.conf and an mdb database in DIR, listening on
# ldap://127.0.0.1:PORT (StartTLS offered) and ldaps://127.0.0.1:TLS_PORT with a certificate
# from a CA made here (DIR/ca.pem). Never systemd, never the machine's own directory.
#
#   slapd.sh start DIR PORT TLS_PORT OWNER_PID SEED.ldif
#                        first use: make the CA and certificate, write slapd.conf, load
#                        SEED.ldif with slapadd (suffix dc=example,dc=net); then start slapd and
#                        wait until it answers
#   slapd.sh stop DIR    stop it (SIGTERM, wait for the process)
#   slapd.sh log DIR     print its log
#   slapd.sh hash PW     print an {SSHA} userPassword value for PW (slappasswd)
#
# Access: userPassword is only usable for binds; the service account
# cn=jabberfarm,ou=services,dc=example,dc=net may read ou=people (search-then-bind); anonymous
# users see nothing. A watchdog stops slapd once OWNER_PID (the test process) is gone.
set -euo pipefail

cmd=${1:?usage: slapd.sh start|stop|log|hash ...}

find_bin() {
  for b in "$@"; do
    if command -v "$b" >/dev/null 2>&1; then command -v "$b"; return 0; fi
    for d in /usr/sbin /usr/bin /usr/local/sbin /usr/local/bin /usr/local/libexec; do
      if [ -x "$d/$b" ]; then echo "$d/$b"; return 0; fi
    done
  done
  echo "slapd.sh: $* not found: install slapd and ldap-utils (apt-get install slapd ldap-utils)" >&2
  return 1
}

if [ "$cmd" = hash ]; then
  "$(find_bin slappasswd)" -h '{SSHA}' -s "${2:?password}"
  exit 0
fi

dir=${2:?directory}
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
pidfile="$dir/slapd.pid"
log="$dir/slapd.log"

running() {
  [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

make_certs() {
  local ssl
  ssl=$(find_bin openssl)
  "$ssl" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=jabberfarm test LDAP CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>>"$dir/certs.log"
  "$ssl" req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" 2>>"$dir/certs.log"
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=critical,digitalSignature" "extendedKeyUsage=serverAuth" >"$dir/server.ext"
  "$ssl" x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 2 -extfile "$dir/server.ext" -out "$dir/server.pem" \
    2>>"$dir/certs.log"
}

write_conf() {
  local schema=/etc/ldap/schema modules=/usr/lib/ldap
  [ -d "$schema" ] || schema=/etc/openldap/schema
  local rootpw
  rootpw=$("$(find_bin slappasswd)" -h '{SSHA}' -s "root-$RANDOM$RANDOM")
  cat >"$dir/slapd.conf" <<EOF
include $schema/core.schema
include $schema/cosine.schema
include $schema/inetorgperson.schema
modulepath $modules
moduleload back_mdb
pidfile $pidfile
argsfile $dir/slapd.args
TLSCACertificateFile $dir/ca.pem
TLSCertificateFile $dir/server.pem
TLSCertificateKeyFile $dir/server.key

database mdb
maxsize 67108864
suffix "dc=example,dc=net"
rootdn "cn=admin,dc=example,dc=net"
rootpw $rootpw
directory $dir/db
index objectClass eq
index uid eq

access to attrs=userPassword
  by anonymous auth
  by * none
access to dn.subtree="ou=people,dc=example,dc=net"
  by dn.exact="cn=jabberfarm,ou=services,dc=example,dc=net" read
  by self read
  by * none
access to * by * none
EOF
}

case "$cmd" in
start)
  port=${3:?port}
  tls_port=${4:?tls port}
  owner=${5:?owner pid}
  seed=${6:?seed ldif}
  slapd=$(find_bin slapd)
  if running; then
    echo "slapd.sh: already running in $dir" >&2
    exit 1
  fi
  if [ ! -f "$dir/slapd.conf" ]; then
    if ! make_certs; then
      echo "slapd.sh: making the test certificates failed:" >&2
      cat "$dir/certs.log" >&2
      exit 1
    fi
    write_conf
    mkdir -p "$dir/db"
    if ! "$(find_bin slapadd)" -f "$dir/slapd.conf" -l "$seed" >"$dir/slapadd.log" 2>&1; then
      echo "slapd.sh: slapadd of $seed failed:" >&2
      cat "$dir/slapadd.log" >&2
      rm -f "$dir/slapd.conf"
      exit 1
    fi
  fi
  # In the foreground (-d) so that its log goes to a file: there is no syslog here.
  nohup "$slapd" -d stats -f "$dir/slapd.conf" \
    -h "ldap://127.0.0.1:$port/ ldaps://127.0.0.1:$tls_port/" >"$log" 2>&1 </dev/null &
  server_pid=$!
  echo "$server_pid" >"$dir/server.pid"
  ok=0
  for _ in $(seq 1 200); do
    if ! kill -0 "$server_pid" 2>/dev/null; then break; fi
    # Any LDAP answer will do (anonymous sees nothing, which is an answer).
    # Bounded: whatever else may hold the port must not hold this loop.
    if timeout 2 "$(find_bin ldapsearch)" -x -H "ldap://127.0.0.1:$port" -b "" -s base -LLL \
        >/dev/null 2>&1; then
      ok=1
      break
    fi
    sleep 0.1
  done
  if [ "$ok" != 1 ]; then
    kill "$server_pid" 2>/dev/null || true
    if grep -q "Address already in use" "$log" 2>/dev/null; then
      # A port was free when the caller chose it and taken since (an outgoing connection's
      # ephemeral port, another test's server): exit 3, so that it tries others.
      echo "slapd.sh: port $port or $tls_port was taken before slapd could bind it" >&2
      exit 3
    fi
    echo "slapd.sh: slapd did not come up within 20 s; its log ($log):" >&2
    cat "$log" >&2 2>/dev/null || true
    kill "$server_pid" 2>/dev/null || true
    exit 1
  fi
  nohup bash -c "while kill -0 $owner 2>/dev/null && kill -0 $server_pid 2>/dev/null; do
                   sleep 1; done; kill $server_pid 2>/dev/null" >/dev/null 2>&1 </dev/null &
  echo "ldap=ldap://127.0.0.1:$port"
  echo "ldaps=ldaps://127.0.0.1:$tls_port"
  echo "ca=$dir/ca.pem"
  ;;
stop)
  if [ -f "$dir/server.pid" ]; then
    pid=$(cat "$dir/server.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      for _ in $(seq 1 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
      done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/server.pid"
  fi
  ;;
log)
  cat "$log" 2>/dev/null || true
  ;;
*)
  echo "slapd.sh: unknown command $cmd" >&2
  exit 2
  ;;
esac
