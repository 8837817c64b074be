#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run calls exactly this). On a fresh machine it
# installs what the tests need first; each install step is skipped when already done.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/jabberfarm-target}"
export CARGO_TERM_COLOR=never

step() { printf '\n== %s\n' "$*"; }

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

step "format"
cargo fmt --all --check

step "lint"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
# nextest does not run doctests
cargo test --workspace --locked --doc

step "ok"
