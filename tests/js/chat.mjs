#!/usr/bin/env node
// One xmpp.js (@xmpp/client 0.14) client, driven over stdin/stdout by tests/im_clients.rs. It
// speaks the same line protocol as tests/py/agent.py (see there for the full list):
//
//   node chat.mjs --service xmpp://127.0.0.1:MASTER --domain localhost --user NAME --password PW
//                 [--resource RES] [--verbose] [--reconnect]
//
// The client connects to --service (the master), follows <see-other-host/> by itself to the
// slave that owns the user, upgrades with STARTTLS (the demo CA comes from NODE_EXTRA_CA_CERTS),
// authenticates and binds. Then it prints
//
//   {"event":"online","jid":"user@localhost/res","port":SLAVE_PORT,"encrypted":true,
//    "services":"xmpp://master xmpp://slave"}
//
// (`port` is the remote port of the TCP connection holding the session, `services` every service
// connected to, in order) and then one JSON object per line for every message, presence and
// roster push it receives; {"event":"reconnected","jid":...,"port":...,"services":...} when the
// server moved the session (<see-other-host/> after login) and xmpp.js logged in again. With
// --reconnect xmpp.js reconnects by itself after a dropped connection and resumes its session
// (XEP-0198, which @xmpp/client enables whenever the server offers it): {"event":"resumed"}.
// Commands arrive as JSON lines on stdin, each with an "id", and are
// answered in order by {"event":"done","id":ID,"ok":true|false,...}:
//   roster_get {ver}, roster_add {jid,name}, presence {show,status,priority},
//   subscribe|subscribed|unsubscribe|unsubscribed {jid}, message {to,body,type}, ping {to},
//   disconnect (closes the stream cleanly, waits for the server's close, exits 0).
// A failure to come online prints {"event":"fatal","message":...} and exits 1. With --verbose
// every stanza in and out goes to stderr.

import readline from "node:readline";
import tls from "node:tls";
import { parseArgs } from "node:util";

import { client, xml } from "@xmpp/client";

const TIMEOUT_MS = 10_000;
const NS_ROSTER = "jabber:iq:roster";
const NS_DELAY = "urn:xmpp:delay";
const NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas";
const NS_PING = "urn:xmpp:ping";

function emit(event, fields = {}) {
  process.stdout.write(`${JSON.stringify({ event, ...fields })}\n`);
}

function fatal(message) {
  emit("fatal", { message });
  process.exit(1);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      service: { type: "string" },
      domain: { type: "string", default: "localhost" },
      user: { type: "string" },
      password: { type: "string" },
      resource: { type: "string" },
      verbose: { type: "boolean", default: false },
      reconnect: { type: "boolean", default: false },
    },
    strict: true,
  }));
} catch (err) {
  fatal(err.message);
}
for (const required of ["service", "user", "password"]) {
  if (!args[required]) fatal(`--${required} is required`);
}

const verbose = (...parts) => {
  if (args.verbose) process.stderr.write(`${new Date().toISOString()} [xmpp] ${parts.join(" ")}\n`);
};

const xmpp = client({
  // xmpp.js gives each step (stream open, STARTTLS, SASL) 2 s by default; the suite starts
  // up to 21 node processes at once on a 2-core machine, where a TLS handshake plus a stream
  // header can take longer. A login that really hangs still fails, after 15 s.
  timeout: 15000,
  service: args.service,
  domain: args.domain,
  resource: args.resource,
  username: args.user,
  password: args.password,
});
// Redirects are followed by @xmpp/connection itself; an automatic reconnect after a drop would
// hide what the test looks for, unless the test is about that.
if (!args.reconnect) xmpp.reconnect.stop();
xmpp.streamManagement.on("resumed", () => emit("resumed", { services: services.join(" ") }));

const services = [];
let closing = false;
let online = false;

xmpp.on("status", (status, arg) => {
  if (status === "connecting") services.push(String(arg));
  verbose("status", status, status === "connecting" ? String(arg) : "");
  if (status === "disconnect" && online && !closing) emit("closed", { reason: "disconnect" });
});
xmpp.on("error", (err) => verbose("error", err?.stack || String(err)));
// A session moved by the server (a <see-other-host/> after login, which xmpp.js follows by
// itself): online again, maybe elsewhere.
xmpp.on("online", (address) => {
  if (!online) return;
  const raw = xmpp.socket?.socket;
  emit("reconnected", {
    jid: address?.toString() ?? null,
    port: raw?.remotePort ?? null,
    services: services.join(" "),
  });
});
if (args.verbose) {
  xmpp.on("send", (el) => verbose("out", el.toString()));
  xmpp.on("element", (el) => verbose("in", el.toString()));
}

function errorCondition(el) {
  const err = el.getChild("error");
  if (!err) return null;
  const cond = err.children.find(
    (c) => typeof c !== "string" && c.attrs.xmlns === NS_STANZAS && c.name !== "text",
  );
  return cond ? cond.name : "unknown";
}

function delayOf(el) {
  return el.getChild("delay", NS_DELAY) ?? null;
}

function rosterItems(query) {
  return (query?.getChildren("item") ?? []).map((item) => ({
    jid: item.attrs.jid ?? null,
    subscription: item.attrs.subscription ?? "none",
    ask: item.attrs.ask ?? null,
    name: item.attrs.name ?? null,
  }));
}

xmpp.on("stanza", (el) => {
  if (el.is("message")) {
    const delay = delayOf(el);
    emit("message", {
      from: el.attrs.from ?? null,
      to: el.attrs.to ?? null,
      type: el.attrs.type ?? "normal",
      body: el.getChildText("body"),
      delay_stamp: delay?.attrs.stamp ?? null,
      delay_from: delay?.attrs.from ?? null,
      error: errorCondition(el),
    });
  } else if (el.is("presence")) {
    const delay = delayOf(el);
    emit("presence", {
      from: el.attrs.from ?? null,
      to: el.attrs.to ?? null,
      type: el.attrs.type ?? "available",
      show: el.getChildText("show"),
      status: el.getChildText("status"),
      priority: el.getChildText("priority"),
      delay_stamp: delay?.attrs.stamp ?? null,
      error: errorCondition(el),
    });
  }
});

// Roster pushes (RFC 6121 §2.1.6): only from our own account (or the server, no `from`).
xmpp.iqCallee.set(NS_ROSTER, "query", (ctx) => {
  const from = ctx.stanza.attrs.from;
  if (from && from !== xmpp.jid.bare().toString()) {
    return xml("error", { type: "cancel" }, xml("service-unavailable", NS_STANZAS));
  }
  for (const item of rosterItems(ctx.element)) {
    emit("roster_push", { ver: ctx.element.attrs.ver ?? null, ...item });
  }
  return true;
});

function request(stanza) {
  return xmpp.iqCaller.request(stanza, TIMEOUT_MS);
}

async function run(cmd) {
  switch (cmd.cmd) {
    case "roster_get": {
      const res = await request(
        xml("iq", { type: "get" }, xml("query", { xmlns: NS_ROSTER, ver: cmd.ver ?? "" })),
      );
      // A known version may get an empty result when nothing changed (RFC 6121 §2.6.3).
      const query = res.getChild("query", NS_ROSTER);
      const items = rosterItems(query);
      for (const item of items) emit("roster_item", item);
      return { count: items.length, ver: query?.attrs.ver ?? null, unchanged: !query };
    }
    case "roster_add":
      await request(
        xml(
          "iq",
          { type: "set" },
          xml("query", { xmlns: NS_ROSTER }, xml("item", { jid: cmd.jid, name: cmd.name ?? "" })),
        ),
      );
      return {};
    case "presence": {
      const p = xml("presence");
      if (cmd.show) p.append(xml("show", {}, cmd.show));
      if (cmd.status) p.append(xml("status", {}, cmd.status));
      if (cmd.priority != null) p.append(xml("priority", {}, String(cmd.priority)));
      await xmpp.send(p);
      return {};
    }
    case "subscribe":
    case "subscribed":
    case "unsubscribe":
    case "unsubscribed":
      await xmpp.send(xml("presence", { to: cmd.jid, type: cmd.cmd }));
      return {};
    case "message":
      await xmpp.send(
        xml("message", { to: cmd.to, type: cmd.type ?? "chat" }, xml("body", {}, cmd.body)),
      );
      return {};
    case "ping":
      await request(xml("iq", { type: "get", to: cmd.to }, xml("ping", NS_PING)));
      return {};
    case "disconnect":
      closing = true;
      // Sends </stream:stream>, waits for the server's (bounded by xmpp.js's own timeout).
      await xmpp.stop();
      return {};
    default:
      throw new Error(`unknown command ${JSON.stringify(cmd.cmd)}`);
  }
}

function describe(err) {
  if (err?.condition) return `${err.name}: ${err.condition}${err.text ? ` (${err.text})` : ""}`;
  return err?.message || String(err);
}

let jid;
const startTimer = setTimeout(() => fatal(`could not come online within ${TIMEOUT_MS / 1000} s`), TIMEOUT_MS);
try {
  jid = await xmpp.start();
} catch (err) {
  fatal(`${args.user} could not come online via ${args.service}: ${describe(err)}`);
}
clearTimeout(startTimer);
if (args.reconnect) {
  // xmpp.js is online at bind and enables stream management just after; it starts counting
  // the server's stanzas when its <enabled/> callback runs, so a stanza that arrives in the
  // same read as <enabled/> is not counted (its h then lags by one, and a resumption writes
  // that stanza again). A test that resumes waits until stream management is on.
  const until = Date.now() + TIMEOUT_MS;
  while (!xmpp.streamManagement.enabled && Date.now() < until) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}
online = true;
const raw = xmpp.socket?.socket;
emit("online", {
  jid: jid.toString(),
  port: raw?.remotePort ?? null,
  encrypted: raw instanceof tls.TLSSocket && raw.encrypted === true && raw.authorized === true,
  services: services.join(" "),
});

const lines = readline.createInterface({ input: process.stdin, terminal: false });
for await (const line of lines) {
  if (!line.trim()) continue;
  const cmd = JSON.parse(line);
  try {
    const result = await run(cmd);
    emit("done", { id: cmd.id ?? null, ok: true, ...result });
  } catch (err) {
    emit("done", { id: cmd.id ?? null, ok: false, error: describe(err) });
  }
  if (cmd.cmd === "disconnect") process.exit(0);
}
// stdin closed: the test is done with us; leave without a goodbye.
xmpp.socket?.socket?.destroy?.();
process.exit(0);
