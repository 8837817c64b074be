-- Prosody for bench/compare.sh: a throwaway config; compare.sh replaces @DIR@ (its work dir)
-- and @PORT@ (the c2s port) and runs `prosody --config THIS -F` pinned to one core.
-- Nothing but c2s on loopback: no s2s, no direct TLS, no HTTP, no components.
run_as_root = true                      -- the bench machine runs everything as root
daemonize = false
pidfile = "@DIR@/prosody.pid"           -- only written by mod_posix, disabled below; compare.sh uses $!
data_path = "@DIR@/data"
certificates = "@DIR@/certs"            -- empty: no TLS, as the baseline
log = { info = "@DIR@/prosody.log" }    -- Debian's default level
admin_socket = "@DIR@/admin.sock"       -- for `prosodyctl shell` (user creation)

interfaces = { "127.0.0.1" }
c2s_ports = { @PORT@ }
c2s_direct_tls_ports = { }
legacy_ssl_ports = { }
s2s_ports = { }

-- posix: daemonizing and privilege drop (not wanted here); s2s: no federation in the bench;
-- limits: mod_limits (the c2s rate limit) is not loaded at all.
modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "offline"; "admin_shell" }
modules_disabled = { "posix"; "s2s"; "limits" }
-- In case mod_limits gets loaded anyway (a global modules_enabled elsewhere): no practical limit.
limits = { c2s = { rate = "100mb/s"; burst = "10mb" } }

-- @AUTH@ is "internal_hashed" (compare.sh's default, PASSWORDS=hashed: passwords stored as
-- SCRAM-SHA-1 keys, Prosody's default) or "internal_plain" (PASSWORDS=plain). The PBKDF2
-- iteration count is the farm demo's and ejabberd's here, so with hashed storage a PLAIN login
-- costs one 4096-round PBKDF2 on all three (Prosody's default count is 10000).
authentication = "@AUTH@"
default_iteration_count = 4096
c2s_require_encryption = false          -- the baseline is plain TCP
allow_unencrypted_plain_auth = true     -- PLAIN without TLS (otherwise only SCRAM is offered)

VirtualHost "localhost"
