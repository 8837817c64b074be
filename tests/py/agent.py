#!/usr/bin/python3
"""One slixmpp client, driven over stdin/stdout by the Rust tests in tests/im_clients.rs.

    /usr/bin/python3 tests/py/agent.py --host 127.0.0.1 --port PORT --jid user@localhost \
        --password PW [--resource RES] [--ca /path/to/ca.pem]

slixmpp reacts to a see-other-host redirect by reconnecting itself (1.8 comes back to the
address it was given, the master): the agent leaves that to slixmpp and reports the redirect as
{"event": "stream_error", "condition": "see-other-host", ...}. Through a master that relays
(redirect = "auto", the default) the second connection gets the session; with --host/--port of
the owning slave there is no redirect at all. With --ca the client requires STARTTLS and verifies the server's
certificate for the JID's domain against that CA; without it the stream stays in clear text
(PLAIN is then allowed in clear as well).

The agent connects, authenticates and binds (with --sm: and has stream management enabled), then
prints

    {"event": "online", "jid": "user@localhost/res", "port": PORT, "encrypted": true}

and then one JSON object per line for everything it observes (it never sleeps to wait for
anything; every wait is bounded by a 10 s timeout):

    {"event": "presence", "from": ..., "to": ..., "type": "available"|"unavailable"|"subscribe"|...,
     "show": ..., "status": ..., "priority": ..., "delay_stamp": ..., "error": condition}
    {"event": "message", "from": ..., "to": ..., "type": ..., "body": ...,
     "delay_stamp": ..., "delay_from": ..., "error": condition}
    {"event": "roster_push", "ver": ..., "jid": ..., "subscription": ..., "ask": ..., "name": ...}
    {"event": "closed", "reason": ...}      the connection ended without a `disconnect` command
    {"event": "reconnected", "jid": ..., "port": PORT}   with --reconnect: logged in again after
                                       the connection ended (as an application's automatic
                                       reconnect does), at the same --host/--port
    {"event": "resumed", "jid": ...}   with --sm and --reconnect: the session was resumed
                                       (XEP-0198, slixmpp's xep_0198 plugin) instead

Commands are JSON objects on stdin, one per line, each with an "id"; every command is answered by
{"event": "done", "id": ID, "ok": true|false, ...} ("error" says what went wrong):

    {"cmd": "roster_get", ["ver": V]} one {"event": "roster_item", ...} per item first; done has
                                       "count", "ver" and "unchanged" (empty result for ver V)
    {"cmd": "roster_add", "jid": J, "name": N}     roster set; done when the server answered
    {"cmd": "presence", ["show": S, "status": T, "priority": P]}   available broadcast presence
    {"cmd": "subscribe"|"subscribed"|"unsubscribe"|"unsubscribed", "jid": J}
    {"cmd": "message", "to": J, "body": B, ["type": T]}          (type defaults to chat)
    {"cmd": "ping", "to": J}           XEP-0199; done when the answer came
    {"cmd": "disconnect"}              closes the stream cleanly (</stream:stream>), waits for
                                       the server's close, then the agent exits 0

A failure to come online prints {"event": "fatal", "message": ...} and exits 1. With --debug,
slixmpp logs every stanza sent and received to stderr.
"""

import argparse
import asyncio
import json
import logging
import sys

try:
    import slixmpp
    from slixmpp.exceptions import IqError, IqTimeout
    from slixmpp.xmlstream.handler import Callback
    from slixmpp.xmlstream.matcher import MatchXPath
except ImportError as err:  # pragma: no cover - reported to the Rust test
    sys.stderr.write(
        f"agent.py: cannot import slixmpp with {sys.executable} ({err}). "
        "Install the Debian package: apt-get install python3-slixmpp, "
        "and run this script with /usr/bin/python3.\n"
    )
    sys.exit(3)

TIMEOUT = 10.0

NS_CLIENT = "jabber:client"
NS_DELAY = "urn:xmpp:delay"
NS_ROSTER = "jabber:iq:roster"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"


def emit(event, **fields):
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def child_text(xml, name):
    el = xml.find(f"{{{NS_CLIENT}}}{name}")
    return None if el is None else (el.text or "")


def error_condition(xml):
    err = xml.find(f"{{{NS_CLIENT}}}error")
    if err is None:
        return None
    for c in err:
        if c.tag.startswith(f"{{{NS_STANZAS}}}") and not c.tag.endswith("}text"):
            return c.tag.split("}", 1)[1]
    return "unknown"


def roster_items(xml):
    query = xml.find(f"{{{NS_ROSTER}}}query")
    if query is None:
        return None, []
    items = []
    for item in query.findall(f"{{{NS_ROSTER}}}item"):
        items.append(
            {
                "jid": item.get("jid"),
                "subscription": item.get("subscription", "none"),
                "ask": item.get("ask"),
                "name": item.get("name"),
            }
        )
    return query.get("ver"), items


class Agent(slixmpp.ClientXMPP):
    def __init__(self, jid, password):
        super().__init__(jid, password)
        # The test decides every subscription answer itself.
        self.roster.auto_authorize = None
        self.roster.auto_subscribe = False
        self.register_plugin("xep_0199")
        self.online = asyncio.get_event_loop().create_future()
        self.closing = False
        self.redirected = False
        # --sm: stream management (xep_0198) is on.
        self.sm = False
        # With --reconnect: how to connect again when the server ends the session.
        self.again = None
        # Every message and presence, whatever slixmpp's own handlers think of it.
        self.register_handler(
            Callback("agent message", MatchXPath(f"{{{NS_CLIENT}}}message"), self.on_message)
        )
        self.register_handler(
            Callback("agent presence", MatchXPath(f"{{{NS_CLIENT}}}presence"), self.on_presence)
        )
        self.add_event_handler("roster_update", self.on_roster_update)
        self.add_event_handler("session_start", self.on_session_start)
        self.add_event_handler("failed_all_auth", lambda _e: self.fail("authentication failed"))
        self.add_event_handler(
            "connection_failed", lambda e: self.fail(f"connection failed: {e}")
        )
        self.add_event_handler("stream_error", self.on_stream_error)
        self.add_event_handler("disconnected", self.on_disconnected)
        self.add_event_handler("session_resumed", self.on_session_resumed)

    def fail(self, message):
        if not self.online.done():
            self.online.set_exception(RuntimeError(message))

    def on_session_start(self, _event):
        if not self.online.done():
            # With --sm: online once the server's <enabled/> is in (on_sm_enabled), as the
            # xmpp.js agent does; a connection cut before it ends the session in slixmpp
            # instead of leaving it to resume, so a test that cuts must not race it.
            if not self.sm:
                self.online.set_result(str(self.boundjid))
        elif self.again is not None:
            emit("reconnected", jid=str(self.boundjid), port=self.again[0][1])

    def on_sm_enabled(self, _event):
        if not self.online.done():
            self.online.set_result(str(self.boundjid))

    def on_session_resumed(self, _event):
        emit("resumed", jid=str(self.boundjid))

    def on_stream_error(self, err):
        emit("stream_error", condition=err["condition"], text=err["text"])
        if err["condition"] == "see-other-host":
            # slixmpp reconnects by itself; the session may still start.
            self.redirected = True
            return
        self.fail(f"stream error {err['condition']}: {err['text']}")

    def on_disconnected(self, reason):
        if self.redirected:
            self.redirected = False
            return
        self.fail(f"disconnected before the session started: {reason}")
        if not self.closing:
            emit("closed", reason=str(reason))
            if self.again is not None and self.online.done():
                address, kwargs = self.again
                self.connect(address, **kwargs)

    def on_message(self, msg):
        xml = msg.xml
        delay = xml.find(f"{{{NS_DELAY}}}delay")
        emit(
            "message",
            **{
                "from": xml.get("from"),
                "to": xml.get("to"),
                "type": xml.get("type", "normal"),
                "body": child_text(xml, "body"),
                "delay_stamp": None if delay is None else delay.get("stamp"),
                "delay_from": None if delay is None else delay.get("from"),
                "error": error_condition(xml),
            },
        )

    def on_presence(self, pres):
        xml = pres.xml
        delay = xml.find(f"{{{NS_DELAY}}}delay")
        emit(
            "presence",
            **{
                "from": xml.get("from"),
                "to": xml.get("to"),
                "type": xml.get("type", "available"),
                "show": child_text(xml, "show"),
                "status": child_text(xml, "status"),
                "priority": child_text(xml, "priority"),
                "delay_stamp": None if delay is None else delay.get("stamp"),
                "error": error_condition(xml),
            },
        )

    def on_roster_update(self, iq):
        if iq["type"] != "set":
            return
        ver, items = roster_items(iq.xml)
        for item in items:
            emit("roster_push", ver=ver, **item)

    async def run_command(self, cmd):
        name = cmd.get("cmd")
        if name == "roster_get":
            # ver="" asks for the whole roster (RFC 6121 §2.6.2); a known version may get an
            # empty result instead when nothing changed since (§2.6.3): "unchanged".
            iq = self.Iq()
            iq["type"] = "get"
            iq.enable("roster")
            iq.xml.find(f"{{{NS_ROSTER}}}query").set("ver", cmd.get("ver", ""))
            resp = await iq.send(timeout=TIMEOUT)
            unchanged = resp.xml.find(f"{{{NS_ROSTER}}}query") is None
            ver, items = roster_items(resp.xml)
            for item in items:
                emit("roster_item", **item)
            return {"count": len(items), "ver": ver, "unchanged": unchanged}
        if name == "roster_add":
            iq = self.Iq()
            iq["type"] = "set"
            item = {"name": cmd.get("name", ""), "subscription": "none", "groups": []}
            iq["roster"]["items"] = {cmd["jid"]: item}
            await iq.send(timeout=TIMEOUT)
            return {}
        if name == "presence":
            self.send_presence(
                pshow=cmd.get("show"),
                pstatus=cmd.get("status"),
                ppriority=cmd.get("priority"),
            )
            return {}
        if name in ("subscribe", "subscribed", "unsubscribe", "unsubscribed"):
            self.send_presence(pto=cmd["jid"], ptype=name)
            return {}
        if name == "message":
            self.send_message(mto=cmd["to"], mbody=cmd["body"], mtype=cmd.get("type", "chat"))
            return {}
        if name == "ping":
            iq = self.Iq()
            iq["type"] = "get"
            iq["to"] = cmd["to"]
            iq.enable("ping")
            await iq.send(timeout=TIMEOUT)
            return {}
        if name == "disconnect":
            self.closing = True
            waiter = self.wait_until("disconnected", TIMEOUT)
            self.disconnect(wait=TIMEOUT)
            await waiter
            return {}
        raise ValueError(f"unknown command {name!r}")


async def commands(agent):
    loop = asyncio.get_event_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        line = await reader.readline()
        if not line:
            return
        line = line.strip()
        if not line:
            continue
        cmd = json.loads(line)
        cid = cmd.get("id")
        try:
            result = await agent.run_command(cmd)
            emit("done", id=cid, ok=True, **result)
        except IqError as e:
            emit("done", id=cid, ok=False, error=f"iq error: {e.iq['error']['condition']}")
        except (IqTimeout, asyncio.TimeoutError):
            emit("done", id=cid, ok=False, error=f"timed out after {TIMEOUT} s")
        except Exception as e:  # reported to the test, which fails on it
            emit("done", id=cid, ok=False, error=f"{type(e).__name__}: {e}")
        if cmd.get("cmd") == "disconnect":
            return


async def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jid", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--resource")
    parser.add_argument("--ca")
    parser.add_argument("--debug", action="store_true")
    parser.add_argument("--reconnect", action="store_true")
    parser.add_argument("--sm", action="store_true", help="XEP-0198 stream management")
    args = parser.parse_args()
    if args.debug:
        logging.basicConfig(
            level=logging.DEBUG, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
        )

    jid = args.jid + (f"/{args.resource}" if args.resource else "")
    agent = Agent(jid, args.password)
    if args.sm:
        agent.register_plugin("xep_0198")
        agent.sm = True
        agent.add_event_handler("sm_enabled", agent.on_sm_enabled)
    # The JID's domain is not resolvable to our port: connect to exactly the address given.
    agent.default_port = args.port
    agent.use_ipv6 = False
    if args.ca:
        agent.ca_certs = args.ca
        how = {"force_starttls": True}
    else:
        agent["feature_mechanisms"].unencrypted_plain = True
        how = {"force_starttls": False, "disable_starttls": True}
    if args.reconnect:
        agent.again = ((args.host, args.port), how)
    agent.connect((args.host, args.port), **how)
    try:
        bound = await asyncio.wait_for(agent.online, TIMEOUT)
    except Exception as e:
        emit("fatal", message=f"{args.jid} could not come online at {args.host}:{args.port}: {e}")
        sys.exit(1)
    encrypted = agent.transport is not None and agent.transport.get_extra_info("peercert") is not None
    emit("online", jid=bound, port=args.port, encrypted=encrypted)
    await commands(agent)
    if not agent.closing:
        # stdin closed: the test is done with us; leave without a goodbye.
        agent.abort()


if __name__ == "__main__":
    asyncio.run(main())
