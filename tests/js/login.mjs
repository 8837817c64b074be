#!/usr/bin/env node
// Log in with xmpp.js (@xmpp/client 0.14) and report where the session ended up.
//
//   node login.mjs --service xmpp://127.0.0.1:PORT --domain localhost \
//                  --user NAME --password PW [--mechanism SCRAM-SHA-1|PLAIN] [--verbose]
//
// The client connects to --service, upgrades with STARTTLS, authenticates and binds a resource.
// When the server answers with the stream error <see-other-host/>, xmpp.js itself
// (@xmpp/connection `_onSeeOtherHost`) closes the connection, connects to the given HOST:PORT
// and starts over (STARTTLS, SASL, bind); this script does not follow redirects itself.
//
// Certificates are verified by Node's TLS against the name in --domain. A private CA is trusted
// through the environment: NODE_EXTRA_CA_CERTS=/path/to/ca.pem (xmpp.js 0.14 passes no TLS
// options of its own to tls.connect for STARTTLS).
//
// On success prints one JSON line to stdout and exits 0:
//   {"jid":"user@domain/res","remotePort":5223,"encrypted":true,"mechanism":"SCRAM-SHA-1",
//    "services":["xmpp://127.0.0.1:5222","xmpp://127.0.0.1:5301"]}
// `services` lists every service xmpp.js connected to, in order (the redirect trail).
// On any error prints it to stderr and exits 1.

import tls from "node:tls";
import { parseArgs } from "node:util";

import { client } from "@xmpp/client";
import { getMechanism } from "@xmpp/client/lib/createOnAuthenticate.js";

const TIMEOUT_MS = 20_000;

function fail(message) {
  process.stderr.write(`login.mjs: ${message}\n`);
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
      mechanism: { type: "string" },
      resource: { type: "string" },
      verbose: { type: "boolean", default: false },
    },
    strict: true,
  }));
} catch (err) {
  fail(err.message);
}
for (const required of ["service", "user", "password"]) {
  if (!args[required]) fail(`--${required} is required`);
}

const verbose = (...parts) => {
  if (args.verbose) process.stderr.write(`[xmpp] ${parts.join(" ")}\n`);
};

const timer = setTimeout(() => {
  fail(`timed out after ${TIMEOUT_MS / 1000} s`);
}, TIMEOUT_MS);

const services = [];
let usedMechanism = null;

const xmpp = client({
  // xmpp.js gives each step (stream open, STARTTLS, SASL) 2 s by default; the suite starts
  // up to 21 node processes at once on a 2-core machine, where a TLS handshake plus a stream
  // header can take longer. A login that really hangs still fails, after 15 s.
  timeout: 15000,
  service: args.service,
  domain: args.domain,
  resource: args.resource,
  // Given as well as `credentials` so that xmpp.js knows the JID as with plain
  // username/password use (it then sends from='user@domain' in stream headers once secure).
  username: args.user,
  // A function here receives xmpp.js's list of mechanisms that both sides support (in xmpp.js's
  // order of preference) and chooses one; without --mechanism we keep xmpp.js's own choice.
  credentials: async (authenticate, mechanisms, _fast, entity) => {
    const credentials = { username: args.user, password: args.password };
    let mechanism;
    if (args.mechanism) {
      if (!mechanisms.includes(args.mechanism)) {
        throw new Error(
          `SASL mechanism ${args.mechanism} is not available; ` +
            `offered by the server and supported by xmpp.js: ${mechanisms.join(", ") || "none"}`,
        );
      }
      mechanism = args.mechanism;
    } else {
      mechanism = getMechanism({ mechanisms, entity, credentials });
    }
    verbose("sasl", mechanism, "of", mechanisms.join(","));
    usedMechanism = mechanism;
    await authenticate(credentials, mechanism);
  },
});

// Only the redirect logic built into @xmpp/connection may move the session; the automatic
// reconnect (which would go back to --service after a drop) is switched off.
xmpp.reconnect.stop();

xmpp.on("status", (status, arg) => {
  if (status === "connecting") services.push(String(arg));
  verbose(
    "status",
    status,
    status === "connecting" ? String(arg) : "",
    // Pending SASL exchanges listen for "nonza" events; more than one after a redirect means a
    // handler from the previous connection is still attached.
    `(nonza listeners: ${xmpp.listenerCount("nonza")})`,
  );
});
// Errors are reported through start()'s rejection; this listener keeps an "error" event from
// becoming an uncaught exception (and shows every one of them with --verbose).
xmpp.on("error", (err) => verbose("error", err?.stack || String(err)));
if (args.verbose) {
  xmpp.on("send", (el) => verbose("out", el.toString()));
  xmpp.on("element", (el) => verbose("in", el.toString()));
  // Log every raw write (stream headers and footers are not "send" events).
  const write = xmpp.write.bind(xmpp);
  xmpp.write = (string) => {
    verbose("write", string);
    return write(string);
  };
}

function describe(err) {
  if (err?.condition) {
    return `${err.name}: ${err.condition}${err.text ? ` (${err.text})` : ""}`;
  }
  return err?.stack || String(err);
}

try {
  const jid = await xmpp.start();

  // The wrapper from @xmpp/tls holds the real node:tls socket once STARTTLS has run.
  const wrapper = xmpp.socket;
  const raw = wrapper?.socket;
  if (!(raw instanceof tls.TLSSocket) || raw.encrypted !== true || wrapper.secure !== true) {
    throw new Error("the connection holding the session is not TLS-encrypted");
  }
  if (raw.authorized !== true) {
    throw new Error(`TLS peer not verified: ${raw.authorizationError}`);
  }
  const result = {
    jid: jid.toString(),
    remotePort: raw.remotePort,
    encrypted: true,
    mechanism: usedMechanism,
    services,
  };

  await xmpp.stop();
  clearTimeout(timer);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exitCode = 0;
} catch (err) {
  process.stderr.write(`login.mjs: ${describe(err)}\n`);
  try {
    xmpp.socket?.socket?.destroy?.();
  } catch {}
  process.exit(1);
}
