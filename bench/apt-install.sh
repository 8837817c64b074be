# Sourced by the bench scripts: install_quietly LOG PACKAGE… installs Debian packages (as
# root) without letting their init scripts start system-wide servers (a policy-rc.d that
# refuses, removed afterwards unless one was there already); apt-get's output goes to LOG.
# Tries without `apt-get update` first (fast when the lists are fresh), then with it.
install_quietly() {
  local log=$1
  shift
  local made_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local rc=0
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >"$log" 2>&1 ||
    { apt-get update -q >>"$log" 2>&1 &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@" >>"$log" 2>&1; } || rc=$?
  [ -z "$made_policy" ] || rm -f /usr/sbin/policy-rc.d
  return "$rc"
}
