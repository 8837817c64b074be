//! IM across the farm with real clients (issue 3): slixmpp (Debian `python3-slixmpp`, run with
//! `/usr/bin/python3`) and xmpp.js (`tests/js`, installed by `npm ci --prefix tests/js`).
//!
//! Each client is an "agent" process — `tests/py/agent.py` or `tests/js/chat.mjs`, the same line
//! protocol — that logs one user in, then takes JSON commands on stdin (roster get/add, presence,
//! subscription presences, messages, ping, clean disconnect) and prints every message, presence
//! and roster push it receives as one JSON line on stdout. The tests below drive two agents
//! through a conversation and assert on what each one saw. Every wait is bounded (10 s per
//! expected event) and nothing sleeps to let something happen.
//!
//! Users: A is owned by slave1 and B by slave2, so everything between them crosses a farm link.
//! slixmpp does not follow redirects and connects straight to the owner's c2s port (STARTTLS,
//! the demo CA); xmpp.js logs in at the master and follows `<see-other-host/>`.
//!
//! On a failure the message shows what every agent saw, the end of every agent's debug log
//! (each stanza in and out) and the end of the farm log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::TestFarm;

/// How long one expected event may take.
const STEP: Duration = Duration::from_secs(10);
/// A command's answer: the agents give up on their own after 10 s.
const COMMAND: Duration = Duration::from_secs(15);
/// Lost connection → unavailable presence at the contact.
const DROP_NOTICE: Duration = Duration::from_secs(5);
const PYTHON: &str = "/usr/bin/python3";

// ---------------------------------------------------------------------------------------------
// Flat JSON objects (the agents print nothing nested).

#[derive(Clone, Debug, PartialEq)]
enum Val {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

#[derive(Clone, Debug)]
struct Ev {
    fields: BTreeMap<String, Val>,
    line: String,
}

impl Ev {
    fn get(&self, key: &str) -> Option<&str> {
        match self.fields.get(key) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }

    fn num(&self, key: &str) -> Option<f64> {
        match self.fields.get(key) {
            Some(Val::Num(n)) => Some(*n),
            _ => None,
        }
    }

    fn flag(&self, key: &str) -> bool {
        self.fields.get(key) == Some(&Val::Bool(true))
    }

    fn kind(&self) -> &str {
        self.get("event").unwrap_or("")
    }

    fn is(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }

    fn null(&self, key: &str) -> bool {
        matches!(self.fields.get(key), None | Some(Val::Null))
    }
}

fn parse_event(line: &str) -> Result<Ev, String> {
    let mut p = Json {
        s: line.trim().as_bytes(),
        i: 0,
    };
    let fields = p.object()?;
    p.ws();
    if p.i != p.s.len() {
        return Err(format!("trailing text at {}", p.i));
    }
    Ok(Ev {
        fields,
        line: line.trim().to_owned(),
    })
}

struct Json<'a> {
    s: &'a [u8],
    i: usize,
}

impl Json<'_> {
    fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.i))
        }
    }

    fn object(&mut self) -> Result<BTreeMap<String, Val>, String> {
        let mut out = BTreeMap::new();
        self.eat(b'{')?;
        self.ws();
        if self.s.get(self.i) == Some(&b'}') {
            self.i += 1;
            return Ok(out);
        }
        loop {
            self.ws();
            let k = self.string()?;
            self.eat(b':')?;
            let v = self.value()?;
            out.insert(k, v);
            self.ws();
            match self.s.get(self.i) {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(out);
                }
                _ => return Err(format!("expected ',' or '}}' at {}", self.i)),
            }
        }
    }

    fn value(&mut self) -> Result<Val, String> {
        self.ws();
        let rest = &self.s[self.i..];
        for (word, v) in [
            ("null", Val::Null),
            ("true", Val::Bool(true)),
            ("false", Val::Bool(false)),
        ] {
            if rest.starts_with(word.as_bytes()) {
                self.i += word.len();
                return Ok(v);
            }
        }
        if rest.first() == Some(&b'"') {
            return self.string().map(Val::Str);
        }
        let end = rest
            .iter()
            .position(|c| !(c.is_ascii_digit() || b"+-.eE".contains(c)))
            .unwrap_or(rest.len());
        let n = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|t| t.parse::<f64>().ok())
            .ok_or_else(|| format!("bad value at {}", self.i))?;
        self.i += end;
        Ok(Val::Num(n))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad \\u escape at {}", self.i))?;
        self.i += 4;
        Ok(h)
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i).ok_or("unterminated string")?;
            self.i += 1;
            match c {
                b'"' => return String::from_utf8(out).map_err(|e| e.to_string()),
                b'\\' => {
                    let e = *self.s.get(self.i).ok_or("unterminated escape")?;
                    self.i += 1;
                    let ch = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hi = self.hex4()?;
                            let code = if (0xD800..0xDC00).contains(&hi) {
                                if self.s.get(self.i..self.i + 2) != Some(b"\\u") {
                                    return Err("lone surrogate".into());
                                }
                                self.i += 2;
                                let lo = self.hex4()?;
                                0x10000 + ((hi - 0xD800) << 10) + (lo.wrapping_sub(0xDC00) & 0x3FF)
                            } else {
                                hi
                            };
                            char::from_u32(code).ok_or("bad code point")?
                        }
                        _ => return Err(format!("bad escape at {}", self.i)),
                    };
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                }
                _ => out.push(c),
            }
        }
    }
}

/// `{"k":"v",…}` with JSON string escaping.
fn obj(pairs: &[(&str, &str)]) -> String {
    let esc = |s: &str| {
        let mut o = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => o.push_str("\\\""),
                '\\' => o.push_str("\\\\"),
                c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
                c => o.push(c),
            }
        }
        o.push('"');
        o
    };
    let body: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}:{}", esc(k), esc(v)))
        .collect();
    format!("{{{}}}", body.join(","))
}

// ---------------------------------------------------------------------------------------------
// Agents.

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fails (never skips) when slixmpp is not importable by Debian's Python.
fn require_slixmpp() {
    match Command::new(PYTHON)
        .args(["-c", "import slixmpp; print(slixmpp.__version__)"])
        .output()
    {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "slixmpp is missing: `{PYTHON} -c 'import slixmpp'` failed ({}).\n\
             Install the Debian package as root: apt-get install -y python3-slixmpp \
             (scripts/test.sh does this). Note: it is for {PYTHON}, not a pyenv python3.",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!(
            "{PYTHON} is needed for the slixmpp tests and could not be run ({e}): \
             apt-get install -y python3-slixmpp"
        ),
    }
}

/// Fails (never skips) when node or the npm packages are missing.
fn require_xmppjs() {
    let marker = repo().join("tests/js/node_modules/@xmpp/client/package.json");
    assert!(
        marker.is_file(),
        "xmpp.js is not installed ({} is missing): run `npm ci --prefix tests/js` first",
        marker.display()
    );
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!("`node --version` failed: {out:?}"),
        Err(e) => panic!("node (v20+) is needed for this test and was not found in PATH: {e}"),
    }
}

/// One client process speaking the agent protocol.
struct Agent {
    label: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    /// Everything it printed, in order, and whether a test step has claimed it.
    events: Vec<(Ev, bool)>,
    exited: bool,
    next_id: u32,
    farm_dir: PathBuf,
    /// The full JID it bound.
    jid: String,
    online: Ev,
}

impl Agent {
    /// slixmpp, straight to the owner's c2s port, STARTTLS with the farm's CA.
    fn slixmpp(farm: &TestFarm, label: &str, user: &str, password: &str, resource: &str) -> Agent {
        require_slixmpp();
        let owner = farm.owner(user);
        let mut cmd = Command::new(PYTHON);
        cmd.arg(repo().join("tests/py/agent.py"))
            .args(["--host", &owner.c2s.ip().to_string()])
            .args(["--port", &owner.c2s.port().to_string()])
            .args(["--jid", &format!("{user}@localhost")])
            .args(["--password", password, "--resource", resource])
            .arg("--ca")
            .arg(farm.ca())
            .arg("--debug");
        Agent::spawn(farm, label, cmd)
    }

    /// xmpp.js, at the master's c2s port (it follows the redirect itself).
    fn xmppjs(farm: &TestFarm, label: &str, user: &str, password: &str, resource: &str) -> Agent {
        require_xmppjs();
        let mut cmd = Command::new("node");
        cmd.arg(repo().join("tests/js/chat.mjs"))
            .args(["--service", &format!("xmpp://{}", farm.master.c2s)])
            .args(["--domain", "localhost", "--user", user])
            .args(["--password", password, "--resource", resource, "--verbose"])
            .env("NODE_EXTRA_CA_CERTS", farm.ca());
        Agent::spawn(farm, label, cmd)
    }

    fn spawn(farm: &TestFarm, label: &str, mut cmd: Command) -> Agent {
        let farm_dir = farm.dir.path().to_owned();
        let debug_log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(farm_dir.join(format!("agent-{label}.txt")))
            .unwrap();
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(debug_log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {label} agent: {e}"));
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut agent = Agent {
            label: label.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            events: Vec::new(),
            exited: false,
            next_id: 0,
            farm_dir,
            jid: String::new(),
            online: parse_event("{}").unwrap(),
        };
        let first = agent.expect("online", |e| e.kind() == "online" || e.kind() == "fatal");
        if first.kind() == "fatal" {
            agent.fail(&format!(
                "did not come online: {}",
                first.get("message").unwrap_or("?")
            ));
        }
        agent.jid = first.get("jid").unwrap_or_default().to_owned();
        agent.online = first;
        agent
    }

    /// Read one more line (up to `deadline`); false on timeout or when the agent has exited.
    fn pump(&mut self, deadline: Instant) -> bool {
        if self.exited {
            return false;
        }
        let wait = deadline.saturating_duration_since(Instant::now());
        match self.lines.recv_timeout(wait) {
            Ok(line) => {
                let ev = parse_event(&line).unwrap_or_else(|e| {
                    parse_event(&obj(&[("event", "unparsed"), ("line", &line), ("why", &e)]))
                        .unwrap()
                });
                self.events.push((ev, false));
                true
            }
            Err(mpsc::RecvTimeoutError::Timeout) => false,
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                self.exited = true;
                false
            }
        }
    }

    /// The first unclaimed event matching `pred`, waiting up to `within` for it.
    fn expect_within(&mut self, what: &str, within: Duration, pred: impl Fn(&Ev) -> bool) -> Ev {
        let deadline = Instant::now() + within;
        loop {
            if let Some(i) =
                (0..self.events.len()).find(|&i| !self.events[i].1 && pred(&self.events[i].0))
            {
                self.events[i].1 = true;
                return self.events[i].0.clone();
            }
            if !self.pump(deadline) {
                let why = if self.exited {
                    "the agent exited"
                } else {
                    "timed out"
                };
                self.fail(&format!(
                    "expected {what} within {} s: {why}",
                    within.as_secs_f64()
                ));
            }
        }
    }

    fn expect(&mut self, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
        self.expect_within(what, STEP, pred)
    }

    fn presence(&mut self, from: &str, kind: &str) -> Ev {
        self.expect(&format!("presence type={kind} from {from}"), |e| {
            e.kind() == "presence" && e.is("from", from) && e.is("type", kind)
        })
    }

    fn roster_push(&mut self, jid: &str, subscription: &str, ask: Option<&str>) -> Ev {
        self.expect(
            &format!("roster push {jid} subscription={subscription} ask={ask:?}"),
            |e| {
                e.kind() == "roster_push"
                    && e.is("jid", jid)
                    && e.is("subscription", subscription)
                    && e.get("ask") == ask
            },
        )
    }

    /// Send a command and wait for its answer; panics unless it succeeded. Returns the answer
    /// and the events printed while it ran.
    fn cmd(&mut self, name: &str, args: &[(&str, &str)]) -> (Ev, Vec<Ev>) {
        self.next_id += 1;
        let id = self.next_id.to_string();
        let mut pairs = vec![("id", id.as_str()), ("cmd", name)];
        pairs.extend_from_slice(args);
        let line = obj(&pairs);
        let start = self.events.len();
        let sent = self
            .stdin
            .as_mut()
            .map(|s| writeln!(s, "{line}").and_then(|()| s.flush()));
        if !matches!(sent, Some(Ok(()))) {
            self.fail(&format!("cannot send {line}: {sent:?}"));
        }
        let done = self.expect_within(&format!("the answer to {line}"), COMMAND, |e| {
            e.kind() == "done" && e.is("id", &id)
        });
        if !done.flag("ok") {
            self.fail(&format!(
                "{line} failed: {}",
                done.get("error").unwrap_or("?")
            ));
        }
        let during = self.events[start..]
            .iter()
            .map(|(e, _)| e.clone())
            .collect();
        (done, during)
    }

    /// The whole roster (`ver=''`) as (jid, subscription, ask) triples.
    fn roster(&mut self) -> Vec<(String, String, Option<String>)> {
        let (done, items) = self.roster_get("");
        if done.flag("unchanged") || done.null("ver") {
            self.fail(&format!(
                "roster get with ver='' must return the roster with a version: {}",
                done.line
            ));
        }
        items
    }

    /// The roster versus the last version this client saw in a push: nothing changed since, so
    /// an empty result (RFC 6121 §2.6.3) or else the whole roster with that same version.
    fn assert_roster_unchanged_since_last_push(&mut self) {
        let Some(ver) = self
            .events
            .iter()
            .rev()
            .find(|(e, _)| e.kind() == "roster_push")
            .and_then(|(e, _)| e.get("ver"))
            .map(str::to_owned)
        else {
            self.fail("roster pushes carry no version (RFC 6121 §2.6)");
        };
        let (done, items) = self.roster_get(&ver);
        if !(done.flag("unchanged") && items.is_empty() || done.is("ver", &ver)) {
            self.fail(&format!(
                "roster get with the current version {ver:?}: {} with {items:?}",
                done.line
            ));
        }
    }

    fn roster_get(&mut self, ver: &str) -> (Ev, Vec<(String, String, Option<String>)>) {
        let (done, during) = self.cmd("roster_get", &[("ver", ver)]);
        let items: Vec<_> = during
            .iter()
            .filter(|e| e.kind() == "roster_item")
            .map(|e| {
                (
                    e.get("jid").unwrap_or_default().to_owned(),
                    e.get("subscription").unwrap_or_default().to_owned(),
                    e.get("ask").map(str::to_owned),
                )
            })
            .collect();
        assert_eq!(
            done.num("count"),
            Some(items.len() as f64),
            "{}: roster item lines and count disagree",
            self.label
        );
        for (e, claimed) in &mut self.events {
            if e.kind() == "roster_item" {
                *claimed = true;
            }
        }
        (done, items)
    }

    fn message(&mut self, to: &str, body: &str) {
        self.cmd("message", &[("to", to), ("body", body), ("type", "chat")]);
    }

    /// Clean logout; the agent exits afterwards.
    fn disconnect(mut self) {
        self.cmd("disconnect", &[]);
        let deadline = Instant::now() + COMMAND;
        loop {
            match self.child.try_wait() {
                Ok(Some(st)) if st.success() => return,
                Ok(Some(st)) => self.fail(&format!("exited with {st} after disconnect")),
                _ if Instant::now() > deadline => self.fail("did not exit after disconnect"),
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    /// SIGKILL: the TCP connection goes away without `</stream:stream>` or unavailable presence.
    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// No stanza error, stream error or unexpected close reached this agent.
    fn assert_clean(&mut self) {
        let deadline = Instant::now();
        while self.pump(deadline) {}
        let bad: Vec<&str> = self
            .events
            .iter()
            .map(|(e, _)| e)
            .filter(|e| {
                !e.null("error")
                    || matches!(e.kind(), "closed" | "stream_error" | "fatal" | "unparsed")
            })
            .map(|e| e.line.as_str())
            .collect();
        if !bad.is_empty() {
            self.fail(&format!("unexpected errors:\n  {}", bad.join("\n  ")));
        }
    }

    fn fail(&self, what: &str) -> ! {
        let events: Vec<String> = self
            .events
            .iter()
            .map(|(e, claimed)| format!("  {} {}", if *claimed { " " } else { "*" }, e.line))
            .collect();
        panic!(
            "agent {}: {what}\n\nwhat {} printed (* = not claimed by a test step):\n{}\n\n{}",
            self.label,
            self.label,
            events.join("\n"),
            context(&self.farm_dir)
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every agent's debug log and the farm's log (ends of them).
fn context(dir: &Path) -> String {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = String::new();
    for f in files.iter().filter(|f| {
        f.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("agent-"))
    }) {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        out.push_str(&format!(
            "== {} (end)\n{}\n\n",
            f.file_name().unwrap().to_string_lossy(),
            tail(&text, 80)
        ));
    }
    for f in files
        .iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
    {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| !l.contains("sqlx::") && !l.contains("rustls::"))
            .collect();
        out.push_str(&format!(
            "== {} (end)\n{}\n\n",
            f.file_name().unwrap().to_string_lossy(),
            tail(&lines.join("\n"), 150)
        ));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Scenario pieces.

/// (A on slave1, B on slave2), both created with passwords `<name>-pw`.
fn two_users(farm: &TestFarm, prefix: &str) -> (String, String) {
    let users = farm.users_on_every_slave(prefix, 1);
    let a = users.iter().find(|(_, o)| o == "slave1").unwrap().0.clone();
    let b = users.iter().find(|(_, o)| o == "slave2").unwrap().0.clone();
    for u in [&a, &b] {
        farm.add_user(u, &format!("{u}-pw"));
    }
    (a, b)
}

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap()
}

fn item(jid: &str, subscription: &str) -> (String, String, Option<String>) {
    (jid.to_owned(), subscription.to_owned(), None)
}

/// Both log in with empty rosters, send initial presence, and subscribe to each other (RFC 6121
/// §3): A adds B and subscribes, B approves and subscribes back, A approves. Each sees the
/// other's available presence and ends with subscription `both`.
fn befriend(a: &mut Agent, b: &mut Agent) {
    let (a_full, b_full) = (a.jid.clone(), b.jid.clone());
    let (a_bare, b_bare) = (bare(&a_full).to_owned(), bare(&b_full).to_owned());
    assert_eq!(a.roster(), vec![], "{a_bare} starts with an empty roster");
    assert_eq!(b.roster(), vec![], "{b_bare} starts with an empty roster");
    a.cmd("presence", &[]);
    b.cmd("presence", &[]);

    // A adds B: a roster push with subscription none.
    a.cmd("roster_add", &[("jid", &b_bare), ("name", "B")]);
    a.roster_push(&b_bare, "none", None);

    // A → B subscribe: pending out at A, the request at B.
    a.cmd("subscribe", &[("jid", &b_bare)]);
    a.roster_push(&b_bare, "none", Some("subscribe"));
    b.presence(&a_bare, "subscribe");

    // B approves: B has `from`, A has `to` and then B's presence.
    b.cmd("subscribed", &[("jid", &a_bare)]);
    b.roster_push(&a_bare, "from", None);
    a.presence(&b_bare, "subscribed");
    a.roster_push(&b_bare, "to", None);
    a.presence(&b_full, "available");

    // B → A subscribe, A approves: both ways.
    b.cmd("subscribe", &[("jid", &a_bare)]);
    b.roster_push(&a_bare, "from", Some("subscribe"));
    a.presence(&b_bare, "subscribe");
    a.cmd("subscribed", &[("jid", &b_bare)]);
    a.roster_push(&b_bare, "both", None);
    b.presence(&a_bare, "subscribed");
    b.roster_push(&a_bare, "both", None);
    b.presence(&a_full, "available");

    assert_eq!(a.roster(), vec![item(&b_bare, "both")], "{a_bare}'s roster");
    assert_eq!(b.roster(), vec![item(&a_bare, "both")], "{b_bare}'s roster");
    a.assert_roster_unchanged_since_last_push();
    b.assert_roster_unchanged_since_last_push();
}

/// Both ways across the farm: A → B's bare JID, B → A's full JID.
fn chat(a: &mut Agent, b: &mut Agent) {
    let (a_full, b_full) = (a.jid.clone(), b.jid.clone());
    let hello = "hello from A ✓ <&> 🐄";
    a.message(bare(&b_full), hello);
    let m = b.expect("A's chat message", |e| {
        e.kind() == "message" && e.is("body", hello)
    });
    assert!(m.is("from", &a_full) && m.is("type", "chat"), "{}", m.line);
    assert!(
        m.null("delay_stamp"),
        "a live message has no delay: {}",
        m.line
    );

    let reply = "hi from B — ünïcödé";
    b.message(&a_full, reply);
    let m = a.expect("B's chat message", |e| {
        e.kind() == "message" && e.is("body", reply)
    });
    assert!(m.is("from", &b_full) && m.is("type", "chat"), "{}", m.line);
    assert!(
        m.null("delay_stamp"),
        "a live message has no delay: {}",
        m.line
    );
}

/// A sends `bodies` to B's bare JID while B is offline, then pings B's bare JID: B's slave
/// answers that ping for B, after the messages (order between two users is kept), so once the
/// answer is here the messages are in B's offline storage.
fn send_while_offline(a: &mut Agent, b_bare: &str, bodies: &[String]) {
    for body in bodies {
        a.message(b_bare, body);
    }
    a.cmd("ping", &[("to", b_bare)]);
    a.assert_clean();
}

/// The next `bodies.len()` messages to B are A's stored ones, in order, each with a XEP-0203
/// `<delay/>` (stamps not decreasing).
fn expect_offline(b: &mut Agent, a_full: &str, bodies: &[String]) {
    let mut got = Vec::new();
    for i in 0..bodies.len() {
        got.push(b.expect(&format!("offline message #{}", i + 1), |e| {
            e.kind() == "message"
        }));
    }
    let got_bodies: Vec<&str> = got.iter().map(|e| e.get("body").unwrap_or("")).collect();
    let want: Vec<&str> = bodies.iter().map(String::as_str).collect();
    if got_bodies != want {
        b.fail(&format!(
            "offline messages {got_bodies:?}, expected {want:?} in this order"
        ));
    }
    let mut last = String::new();
    for m in &got {
        let stamp = m.get("delay_stamp").unwrap_or_default();
        if !(m.is("from", a_full) && m.is("type", "chat")) {
            b.fail(&format!("offline message not from {a_full}: {}", m.line));
        }
        if !(stamp.len() >= 20 && stamp.as_bytes()[10] == b'T' && stamp.ends_with('Z')) {
            b.fail(&format!(
                "offline message without a XEP-0203 delay stamp: {}",
                m.line
            ));
        }
        if m.get("delay_from") != Some("localhost") {
            b.fail(&format!("delay not from the server: {}", m.line));
        }
        if stamp < last.as_str() {
            b.fail(&format!("delay stamps go backwards: {last} then {stamp}"));
        }
        last = stamp.to_owned();
    }
}

fn offline_bodies(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("while you were away #{i} of {n}"))
        .collect()
}

/// The whole conversation of issue 3: befriend, chat both ways, B logs out, A writes 3 messages,
/// B logs in again and gets them in order with `<delay/>`; A sees B leave and come back.
fn conversation(farm: &TestFarm, a_user: &str, b_user: &str, login: Login) {
    let pw = |u: &str| format!("{u}-pw");
    let mut a = login(farm, "A", a_user, &pw(a_user), "alpha");
    let mut b = login(farm, "B", b_user, &pw(b_user), "beta");
    befriend(&mut a, &mut b);
    chat(&mut a, &mut b);

    let (a_full, b_full) = (a.jid.clone(), b.jid.clone());
    b.assert_clean();
    b.disconnect();
    a.presence(&b_full, "unavailable");

    let bodies = offline_bodies(3);
    send_while_offline(&mut a, bare(&b_full), &bodies);

    let mut b = login(farm, "B-again", b_user, &pw(b_user), "beta");
    assert_eq!(b.roster(), vec![item(bare(&a_full), "both")]);
    b.cmd("presence", &[]);
    expect_offline(&mut b, &a_full, &bodies);
    // Probes on initial presence: B learns A is here; A sees B come back.
    b.presence(&a_full, "available");
    a.presence(&b_full, "available");

    a.assert_clean();
    b.assert_clean();
    b.disconnect();
    a.disconnect();
}

type Login = fn(&TestFarm, &str, &str, &str, &str) -> Agent;

// ---------------------------------------------------------------------------------------------
// The tests.

/// slixmpp on each user's own slave: the full conversation.
#[test]
fn slixmpp_conversation_across_slaves() {
    require_slixmpp();
    let farm = TestFarm::start(2);
    let (a, b) = two_users(&farm, "sli");
    conversation(&farm, &a, &b, Agent::slixmpp);
}

/// xmpp.js logging in at the master for both users (redirected to their slaves).
#[test]
fn xmppjs_conversation_through_the_master() {
    require_xmppjs();
    let farm = TestFarm::start(2);
    let (a, b) = two_users(&farm, "js");
    // Both sessions end up on the owner, reached through the master.
    let login: Login = |farm, label, user, pw, res| {
        let agent = Agent::xmppjs(farm, label, user, pw, res);
        let owner = farm.owner(user);
        let trail = format!("xmpp://{} xmpp://{}", farm.master.c2s, owner.c2s);
        if !(agent.online.num("port") == Some(f64::from(owner.c2s.port()))
            && agent.online.is("services", &trail)
            && agent.online.flag("encrypted"))
        {
            agent.fail(&format!(
                "expected an encrypted session on {} ({}) via the master (trail {trail}): {}",
                owner.name, owner.c2s, agent.online.line
            ));
        }
        agent
    };
    conversation(&farm, &a, &b, login);
}

/// B's client dies (SIGKILL: the socket closes without `</stream:stream>` and without
/// unavailable presence); A, subscribed to B, gets unavailable from B's full JID promptly.
#[test]
fn contact_goes_unavailable_when_its_connection_drops() {
    require_slixmpp();
    let farm = TestFarm::start(2);
    let (a_user, b_user) = two_users(&farm, "drop");
    let mut a = Agent::slixmpp(&farm, "A", &a_user, &format!("{a_user}-pw"), "alpha");
    let mut b = Agent::slixmpp(&farm, "B", &b_user, &format!("{b_user}-pw"), "beta");
    befriend(&mut a, &mut b);
    let b_full = b.jid.clone();

    let killed = Instant::now();
    b.kill();
    a.expect_within(
        &format!("unavailable presence from {b_full} after its client was killed"),
        DROP_NOTICE,
        |e| e.kind() == "presence" && e.is("from", &b_full) && e.is("type", "unavailable"),
    );
    eprintln!(
        "unavailable presence {:.0} ms after the kill",
        killed.elapsed().as_secs_f64() * 1000.0
    );
    a.assert_clean();
    a.disconnect();
}

/// Lines in `node-<node>.log` saying the link between slave1 and slave2 came up.
fn link_ups(farm: &TestFarm, node: &str) -> usize {
    std::fs::read_to_string(farm.dir.path().join(format!("node-{node}.log")))
        .unwrap_or_default()
        .matches("farm link slave1 <-> slave2 up")
        .count()
}

/// SIGKILL B's slave with B's offline messages stored, restart it: B's roster and the messages
/// are still there, and A (on slave1 throughout) sees B come back.
#[test]
fn slave_killed_and_restarted_keeps_roster_and_offline_messages() {
    require_slixmpp();
    let mut farm = TestFarm::start_processes(2);
    let (a_user, b_user) = two_users(&farm, "crash");
    let (a_pw, b_pw) = (format!("{a_user}-pw"), format!("{b_user}-pw"));
    let mut a = Agent::slixmpp(&farm, "A", &a_user, &a_pw, "alpha");
    let mut b = Agent::slixmpp(&farm, "B", &b_user, &b_pw, "beta");
    befriend(&mut a, &mut b);
    let (a_full, b_full) = (a.jid.clone(), b.jid.clone());
    b.disconnect();
    a.presence(&b_full, "unavailable");

    let bodies = offline_bodies(2);
    send_while_offline(&mut a, bare(&b_full), &bodies);

    let ups = link_ups(&farm, "slave1");
    farm.kill_node("slave2");
    farm.start_node("slave2");
    // B logs in once slave1 has its link to the new slave2 (as at any farm start).
    let deadline = Instant::now() + Duration::from_secs(20);
    while link_ups(&farm, "slave1") <= ups {
        assert!(
            Instant::now() < deadline,
            "the slave1 <-> slave2 link did not come back:\n{}",
            context(farm.dir.path())
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut b = Agent::slixmpp(&farm, "B-after-restart", &b_user, &b_pw, "beta");
    assert_eq!(
        b.roster(),
        vec![item(bare(&a_full), "both")],
        "{b_user}'s roster after the restart"
    );
    b.cmd("presence", &[]);
    expect_offline(&mut b, &a_full, &bodies);
    b.presence(&a_full, "available");
    a.presence(&b_full, "available");

    // A's session on slave1 lived through it all.
    a.cmd("ping", &[("to", bare(&b_full))]);
    a.assert_clean();
    b.assert_clean();
    b.disconnect();
    a.disconnect();
}
