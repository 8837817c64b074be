#!/usr/bin/env bash
# Chat through federation: users of a jabberfarm farm (farm.test) paired with users of a
# Prosody (remote.test), every message crossing server-to-server streams: out from the
# sender's slave to Prosody, and in through the master's s2s listener and a farm link to the
# owning slave.
#
#   bash bench/federation.sh [OUT_DIR]     # default OUT_DIR: /tmp/jabberfarm-federation/<date-time>
#
# Needs root: it installs Prosody (with lua-unbound) from Debian when missing, and adds two
# lines to /etc/hosts for the run (farm.test → 127.0.0.12, remote.test → 127.0.0.13; Prosody
# resolves names through libunbound, which reads /etc/hosts), removed on exit. The farm finds
# Prosody through a static route ([s2s.routes]). Ports: 5269 on 127.0.0.12 and 127.0.0.13,
# 28222-28422 and 28500-28502 on 127.0.0.12, 28622 on 127.0.0.13.
#
# Runs, each after a warm-up that opens the s2s streams: closed loop (PAIRS pairs bouncing one
# message each) and open loop at RATE msg/s. The bench reports the farm's CPU per message (the
# farm's side of a federated message: c2s in + s2s out, or s2s in + farm link + c2s out); the
# script reads Prosody's from /proc for the same window.
#
# Environment: PAIRS (default 20), RATE (default 1000), DURATION (seconds per run, default 10),
# SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
out="${1:-${TMPDIR:-/tmp}/jabberfarm-federation/$(date +%Y%m%d-%H%M%S)}"
pairs="${PAIRS:-20}"
rate="${RATE:-1000}"
duration="${DURATION:-10}"
bin="$CARGO_TARGET_DIR/release"
farm_ip=127.0.0.12
remote_ip=127.0.0.13
farm_domain=farm.test
remote_domain=remote.test
prosody_c2s=28622
marker="# jabberfarm bench/federation.sh $$"

[ "$(id -u)" = 0 ] || { echo "run as root: it edits /etc/hosts (and may install Prosody)" >&2; exit 1; }
missing=()
command -v prosody >/dev/null || missing+=(prosody)
dpkg -s lua-unbound >/dev/null 2>&1 || missing+=(lua-unbound)
command -v openssl >/dev/null || missing+=(openssl)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian"
  # shellcheck source=bench/apt-install.sh
  source bench/apt-install.sh
  mkdir -p "$out"
  install_quietly "$out/apt.log" "${missing[@]}" ||
    { echo "apt-get failed (see $out/apt.log)" >&2; exit 1; }
fi
[ -n "${SKIP_BUILD:-}" ] || cargo build --release -p jabberfarm -p jabberfarm-bench

in_use() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
for a in "$farm_ip:5269" "$remote_ip:5269" "$farm_ip:28222" "$farm_ip:28322" "$farm_ip:28422" \
  "$farm_ip:28500" "$remote_ip:$prosody_c2s"; do
  if in_use "${a%:*}" "${a#*:}"; then echo "$a is in use" >&2; exit 1; fi
done
mkdir -p "$out/prosody/data" "$out/prosody/certs"

farm_pid=""
prosody_pid=""
cleanup() {
  for p in $farm_pid $prosody_pid; do kill -TERM "$p" 2>/dev/null || true; done
  for p in $farm_pid $prosody_pid; do wait "$p" 2>/dev/null || true; done
  if grep -qF "$marker" /etc/hosts; then
    # Rewrite in place (/etc/hosts may be a bind mount: no rename).
    grep -vF "$marker" /etc/hosts >"$out/hosts.kept" || true
    cat "$out/hosts.kept" >/etc/hosts
  fi
}
trap cleanup EXIT
printf '%s %s %s\n%s %s %s\n' "$farm_ip" "$farm_domain" "$marker" "$remote_ip" "$remote_domain" "$marker" >>/etc/hosts

wait_port() { # IP PORT
  for _ in $(seq 1 300); do
    in_use "$1" "$2" && return 0
    sleep 0.1
  done
  echo "nothing listens on $1:$2 (see $out)" >&2
  return 1
}
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# --- Prosody for remote.test --------------------------------------------------------------
p="$out/prosody"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$remote_domain" \
  -addext "subjectAltName=DNS:$remote_domain" -keyout "$p/certs/$remote_domain.key" \
  -out "$p/certs/$remote_domain.crt" 2>/dev/null
cat >"$p/prosody.cfg.lua" <<EOF
pidfile = "$p/prosody.pid"
admin_socket = "$p/admin.sock"
data_path = "$p/data"
interfaces = { "$remote_ip" }
c2s_ports = { $prosody_c2s }
s2s_ports = { 5269 }
s2s_interfaces = { "$remote_ip" }
http_ports = {}
https_ports = {}
modules_enabled = { "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "admin_shell" }
modules_disabled = { "posix" }
c2s_require_encryption = false
s2s_require_encryption = true
s2s_secure_auth = false
allow_unencrypted_plain_auth = true
authentication = "internal_hashed"
log = { warn = "$p/prosody.log" }
unbound = { hoststxt = "/etc/hosts" }
certificates = "$p/certs"
run_as_root = true
VirtualHost "$remote_domain"
EOF
prosody --config "$p/prosody.cfg.lua" -F >"$p/stdout.log" 2>&1 &
prosody_pid=$!
wait_port "$remote_ip" "$prosody_c2s"
wait_port "$remote_ip" 5269
# Users through the admin shell of the running server: one process for all.
for ((i = 0; i < pairs; i++)); do
  printf 'user:create("bench%d@%s", "bench")\n' "$i" "$remote_domain"
done | prosodyctl --config "$p/prosody.cfg.lua" shell >"$p/register.log" 2>&1
n=$(find "$p/data" -path "*accounts*" -name 'bench*.dat' | wc -l)
(( n >= pairs )) || { echo "prosody: only $n of $pairs users created (see $p/register.log)" >&2; exit 1; }

# --- the farm for farm.test ---------------------------------------------------------------
cfg="$out/farm.toml"
cat >"$cfg" <<EOF
# Written by bench/federation.sh.
domain = "$farm_domain"
secret = "federation-bench-secret"
data_dir = "data"
[tls]
generate = true
required = false
[limits]
session_stanzas_per_second = 0  # a load generator is not a person: no per-session shaper
session_bytes_per_second = 0
[routing]
mode = "hash"
hash_key = "6a61626265726661726d2d64656d6f21"
[s2s.routes]
"$remote_domain" = "$remote_ip:5269"
[[node]]
name = "master"
role = "master"
c2s = "$farm_ip:28222"
farm = "$farm_ip:28500"
s2s = "$farm_ip:5269"
[[node]]
name = "slave1"
role = "slave"
c2s = "$farm_ip:28322"
farm = "$farm_ip:28501"
[[node]]
name = "slave2"
role = "slave"
c2s = "$farm_ip:28422"
farm = "$farm_ip:28502"
EOF
JABBERFARM="$bin/jabberfarm" CONFIG="$cfg" DATA_DIR="$out/data" bash bench/setup-users.sh "$pairs" >/dev/null
"$bin/jabberfarm" up --config "$cfg" --data-dir "$out/data" >"$out/farm.out" 2>"$out/farm.log" &
farm_pid=$!
for port in 28222 28322 28422; do wait_port "$farm_ip" "$port"; done
wait_port "$farm_ip" 5269
sleep 2 # farm links

{
  echo "machine: $(nproc) cores, $(uname -sr), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"
  if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    echo "commit:  $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo ' (with local changes)')"
  fi
  echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "prosody: $(dpkg-query -W -f '${Version}' prosody 2>/dev/null || echo unknown)"
} | tee "$out/machine.txt"

chat() { # NAME ARGS…: one run; Prosody's CPU over it to OUT/NAME.prosody
  local name=$1
  shift
  local c0 c1
  c0=$(cpu_ticks "$prosody_pid")
  "$bin/jabberfarm-bench" chat --host "$farm_ip" --port 28222 --domain "$farm_domain" \
    --follow-redirects --user-count "$pairs" --pairs "$pairs" \
    --peer-host "$remote_ip" --peer-port "$prosody_c2s" --peer-domain "$remote_domain" \
    --server-pid "$farm_pid" "$@" --json "$out/$name.json" >"$out/$name.txt"
  c1=$(cpu_ticks "$prosody_pid")
  echo "$(( c1 - c0 ))" >"$out/$name.prosody"
}

# Warm-up: the first messages open the s2s streams both ways (dialback included).
chat warmup --duration 3
chat closed --duration "$duration"
chat open --duration "$duration" --rate "$rate"

hz=$(getconf CLK_TCK)
{
  echo
  echo "## Chat through federation: $pairs pairs, farm.test (jabberfarm) ↔ remote.test (Prosody)"
  echo
  for run in closed open; do
    echo "--- $run loop"
    grep -E "messages/s|latency|messages |server CPU" "$out/$run.txt" | sed 's/^ */    /'
    python3 - "$out/$run.json" "$(cat "$out/$run.prosody")" "$hz" <<'PY'
import json, sys
rep = json.load(open(sys.argv[1]))
delivered = (rep.get("chat") or {}).get("delivered") or rep.get("completed") or 0
ticks, hz = int(sys.argv[2]), int(sys.argv[3])
if delivered:
    print(f"    Prosody CPU          {ticks / hz:.2f} s = {ticks / hz * 1e6 / delivered:.1f} µs per message")
PY
  done
} | tee "$out/summary.md"
echo "results in $out"
