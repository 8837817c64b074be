#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this). On a fresh machine it
# installs what the tests need first; each install step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
export CARGO_TERM_COLOR=never

step() { printf '\n== %s\n' "$*"; }

# apt_install WHAT PACKAGE...: install Debian packages (root only), never leaving a service
# running: the tests start their own throwaway servers.
apt_install() {
  local what=$1; shift
  if [ "$(id -u)" != 0 ]; then
    echo "$what is needed for the tests: apt-get install $* (as root)"; exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  for svc in "$@"; do service "$svc" stop >/dev/null 2>&1 || true; done
}

step "tools"
command -v cargo >/dev/null || { echo "cargo is missing: install Rust (rustup)"; exit 1; }
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm
  else
    echo "node and npm are needed for the xmpp.js tests: apt-get install nodejs npm"; exit 1
  fi
fi
node --version

step "xmpp.js (tests/js)"
if [ ! -f tests/js/node_modules/.package-lock.json ] \
   || ! cmp -s tests/js/package-lock.json tests/js/node_modules/.lock-copy 2>/dev/null; then
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error
  cp tests/js/package-lock.json tests/js/node_modules/.lock-copy
fi

step "slixmpp (tests/py)"
# Debian's package, for Debian's /usr/bin/python3 (a pyenv python3 on PATH does not see it).
if ! /usr/bin/python3 -c 'import slixmpp' 2>/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-slixmpp
  else
    echo "slixmpp is needed for the slixmpp tests: apt-get install python3-slixmpp"; exit 1
  fi
fi
/usr/bin/python3 -c 'import slixmpp; print("slixmpp", slixmpp.__version__)'

step "real clients: nbxmpp, sendxmpp, go-sendxmpp (tests/clients.rs), profanity in tmux (tests/profanity.rs)"
if ! /usr/bin/python3 -c 'import nbxmpp' 2>/dev/null || ! command -v sendxmpp >/dev/null \
   || ! command -v go-sendxmpp >/dev/null || ! command -v profanity >/dev/null \
   || ! command -v tmux >/dev/null || ! command -v ss >/dev/null; then
  apt_install "the real clients" python3-nbxmpp sendxmpp go-sendxmpp profanity tmux iproute2
fi
/usr/bin/python3 -c 'import nbxmpp; print("nbxmpp", nbxmpp.__version__)'

step "slixmpp from PyPI and its integration tests (tests/clients.rs)"
# The itests ship in the sdist only; the library comes as a wheel of the same version, into a
# venv of its own (Debian's slixmpp, 1.8, stays for the other tests).
slix_version=1.9.1
py_venv="$HOME/.cache/jabberfarm-py"
slix_dir="$HOME/.cache/jabberfarm-slixmpp"
if ! "$py_venv/bin/python" -c "import slixmpp, sys; sys.exit(slixmpp.__version__ != '$slix_version')" 2>/dev/null; then
  rm -rf "$py_venv"
  made=""
  for py in python3 /usr/bin/python3; do
    if "$py" -m venv "$py_venv" 2>/dev/null; then made=1; break; fi
  done
  if [ -z "$made" ]; then
    [ "$(id -u)" = 0 ] || { echo "python3 -m venv is needed: apt-get install python3-venv"; exit 1; }
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
    /usr/bin/python3 -m venv "$py_venv"
  fi
  "$py_venv/bin/pip" install -q --disable-pip-version-check --only-binary :all: "slixmpp==$slix_version"
fi
if [ ! -d "$slix_dir/slixmpp-$slix_version/itests" ]; then
  mkdir -p "$slix_dir"
  # The sdist straight from PyPI, checked against its published digest: `pip download
  # --no-binary` would build its metadata first, which compiles maturin from source (minutes).
  "$py_venv/bin/python" - "$slix_version" "$slix_dir" <<'PY'
import hashlib, re, sys, urllib.request
version, into = sys.argv[1], sys.argv[2]
name = f"slixmpp-{version}.tar.gz"
with urllib.request.urlopen("https://pypi.org/simple/slixmpp/", timeout=120) as r:
    index = r.read().decode()
m = re.search(r'href="([^"#]*/' + re.escape(name) + r')#sha256=([0-9a-f]{64})"', index)
if not m:
    sys.exit(f"{name} is not on PyPI's index")
with urllib.request.urlopen(m.group(1), timeout=300) as r:
    data = r.read()
if hashlib.sha256(data).hexdigest() != m.group(2):
    sys.exit(f"{name}: sha256 does not match PyPI's")
with open(f"{into}/{name}", "wb") as f:
    f.write(data)
PY
  tar xzf "$slix_dir/slixmpp-$slix_version.tar.gz" -C "$slix_dir"
fi
"$py_venv/bin/python" -c 'import slixmpp; print("slixmpp (PyPI, itests)", slixmpp.__version__)'

step "Prosody (federation tests)"
if ! command -v prosody >/dev/null || ! dpkg -s lua-unbound >/dev/null 2>&1; then
  apt_install Prosody prosody lua-unbound openssl
fi
dpkg -s prosody | grep '^Version'

step "MariaDB and OpenLDAP (central backend tests)"
# Only the programs: the tests start throwaway servers of their own (tests/servers/).
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }
if ! have mariadbd || ! have mariadb-install-db || ! have slapd || ! have slapadd \
   || ! have slappasswd || ! have ldapsearch || ! have openssl; then
  apt_install "MariaDB and OpenLDAP" mariadb-server slapd ldap-utils openssl
fi
"$(command -v mariadbd || echo /usr/sbin/mariadbd)" --version
"$(command -v slapd || echo /usr/sbin/slapd)" -VV 2>&1 | head -1

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings
# The optional allocator build must keep compiling too.
cargo clippy -p jabberfarm --bins --locked --features mimalloc -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
# nextest does not run doctests
cargo test --workspace --locked --doc

step "fuzzing smoke run (fuzz/, docs/fuzzing.md)"
# Each target ~15 s from its seeds (the inputs of every finding among them); nightly toolchain,
# cargo-fuzz installed when missing.
bash scripts/fuzz-smoke.sh

step "ok"
