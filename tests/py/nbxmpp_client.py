#!/usr/bin/python3
"""Gajim's XMPP library (Debian python3-nbxmpp) as a one-shot client, for tests/clients.rs.

    /usr/bin/python3 tests/py/nbxmpp_client.py --host 127.0.0.1 --port PORT \
        --jid user@localhost --password PW --to peer@localhost --body TEXT [--expect TEXT] \
        [--direct-tls]

Logs in (STARTTLS required, or TLS first with --direct-tls (XEP-0368); the farm's demo CA is unknown to the system, so only that error is
accepted: the certificate must still name the JID's domain), sends available presence and one
chat message to --to, then, with --expect, waits for a message whose body is that text. It
prints JSON lines:

    {"event": "error", "attempt": N, "error": "..."}   a connection attempt ended before login
    {"event": "online", "jid": "...", "attempt": N}
    {"event": "message", "from": "...", "body": "..."}
    {"event": "done"}                                     then it exits 0

nbxmpp does not follow <see-other-host/>: it reports a stream error and disconnects. Gajim
then reconnects on its own, to the same host; this script does the same, at most
--attempts times (default 3), as Gajim's automatic reconnect would. Exit 1 when it never
came online or the expected message never arrived (10 s).
"""

import argparse
import json
import sys

try:
    from gi.repository import Gio, GLib
    import nbxmpp
    from nbxmpp.client import Client
    from nbxmpp.const import ConnectionProtocol, ConnectionType
    from nbxmpp.protocol import JID, Message, Presence
    from nbxmpp.structs import StanzaHandler
except ImportError as err:  # pragma: no cover - reported to the Rust test
    sys.stderr.write(
        f"nbxmpp_client.py: cannot import nbxmpp ({err}): apt-get install python3-nbxmpp\n"
    )
    sys.exit(3)

TIMEOUT_MS = 10_000


def emit(event, **fields):
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


class OneShot:
    def __init__(self, args):
        self.args = args
        self.loop = GLib.MainLoop()
        self.attempt = 0
        self.ok = False
        self.online = False
        self.client = None
        self.timer = None

    def connect(self):
        self.attempt += 1
        jid = JID.from_string(self.args.jid)
        c = Client()
        c.set_domain(jid.domain)
        c.set_username(jid.localpart)
        c.set_resource("nbxmpp")
        c.set_password(self.args.password)
        c.set_custom_host(
            f"{self.args.host}:{self.args.port}",
            ConnectionProtocol.TCP,
            ConnectionType.DIRECT_TLS if self.args.direct_tls else ConnectionType.START_TLS,
        )
        c.set_ignored_tls_errors({Gio.TlsCertificateFlags.UNKNOWN_CA})
        c.subscribe("login-successful", self.on_login)
        c.subscribe("connected", self.on_connected)
        c.subscribe("connection-failed", self.on_failed)
        c.subscribe("disconnected", self.on_disconnected)
        c.register_handler(StanzaHandler(name="message", callback=self.on_message))
        self.client = c
        c.connect()

    def on_login(self, _client, _signal):
        pass

    def on_connected(self, client, _signal):
        self.online = True
        emit("online", jid=str(client.get_bound_jid()), attempt=self.attempt)
        client.send_stanza(Presence())
        client.send_stanza(Message(to=self.args.to, body=self.args.body, typ="chat"))
        if self.args.expect is None:
            self.finish(True)

    def on_message(self, _client, stanza, _properties):
        body = stanza.getBody()
        emit("message", **{"from": str(stanza.getFrom()), "body": body})
        if self.args.expect is not None and body == self.args.expect:
            self.finish(True)

    def retry_or_stop(self, why):
        emit("error", attempt=self.attempt, error=why)
        if self.attempt < self.args.attempts:
            # Gajim's reconnect: the same account, the same host.
            GLib.timeout_add(200, lambda: (self.connect(), False)[1])
        else:
            self.finish(False)

    def on_failed(self, client, _signal):
        self.retry_or_stop(str(client.get_error()))

    def on_disconnected(self, client, _signal):
        if self.ok:
            self.loop.quit()
        elif not self.online:
            self.retry_or_stop(str(client.get_error()))
        else:
            self.finish(False)

    def finish(self, ok):
        if self.loop.is_running() and not self.ok:
            self.ok = ok
            if ok:
                emit("done")
            if self.client is not None and self.online:
                # A clean close; the loop ends on "disconnected".
                GLib.timeout_add(100, lambda: (self.client.disconnect(), False)[1])
                GLib.timeout_add(3000, lambda: (self.loop.quit(), False)[1])
            else:
                self.loop.quit()

    def run(self):
        GLib.timeout_add(TIMEOUT_MS, self.timeout)
        self.connect()
        self.loop.run()
        return self.ok

    def timeout(self):
        emit("error", attempt=self.attempt, error="timed out")
        self.loop.quit()
        return False


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--jid", required=True)
    p.add_argument("--password", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--body", required=True)
    p.add_argument("--expect")
    p.add_argument("--attempts", type=int, default=3)
    p.add_argument("--direct-tls", action="store_true")
    args = p.parse_args()
    sys.exit(0 if OneShot(args).run() else 1)


if __name__ == "__main__":
    main()
