//! Real clients as "agents" driven over stdin/stdout (tests/im_clients.rs explains the line
//! protocol): `tests/py/agent.py` (slixmpp) and `tests/js/chat.mjs` (xmpp.js), their events
//! parsed from flat JSON, and the context printed when a test fails.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::TestFarm;

/// How long one expected event may take.
pub const STEP: Duration = Duration::from_secs(10);
/// A command's answer: the agents give up on their own after 10 s.
pub const COMMAND: Duration = Duration::from_secs(15);
/// Lost connection → unavailable presence at the contact.
pub const DROP_NOTICE: Duration = Duration::from_secs(5);
pub const PYTHON: &str = "/usr/bin/python3";

// ---------------------------------------------------------------------------------------------
// Flat JSON objects (the agents print nothing nested).

#[derive(Clone, Debug, PartialEq)]
pub enum Val {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
}

#[derive(Clone, Debug)]
pub struct Ev {
    pub fields: BTreeMap<String, Val>,
    pub line: String,
}

impl Ev {
    pub fn get(&self, key: &str) -> Option<&str> {
        match self.fields.get(key) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }

    pub fn num(&self, key: &str) -> Option<f64> {
        match self.fields.get(key) {
            Some(Val::Num(n)) => Some(*n),
            _ => None,
        }
    }

    pub fn flag(&self, key: &str) -> bool {
        self.fields.get(key) == Some(&Val::Bool(true))
    }

    pub fn kind(&self) -> &str {
        self.get("event").unwrap_or("")
    }

    pub fn is(&self, key: &str, value: &str) -> bool {
        self.get(key) == Some(value)
    }

    pub fn null(&self, key: &str) -> bool {
        matches!(self.fields.get(key), None | Some(Val::Null))
    }
}

pub fn parse_event(line: &str) -> Result<Ev, String> {
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

pub struct Json<'a> {
    s: &'a [u8],
    i: usize,
}

impl Json<'_> {
    pub fn ws(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    pub fn eat(&mut self, c: u8) -> Result<(), String> {
        self.ws();
        if self.s.get(self.i) == Some(&c) {
            self.i += 1;
            Ok(())
        } else {
            Err(format!("expected {:?} at {}", c as char, self.i))
        }
    }

    pub fn object(&mut self) -> Result<BTreeMap<String, Val>, String> {
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

    pub fn value(&mut self) -> Result<Val, String> {
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

    pub fn hex4(&mut self) -> Result<u32, String> {
        let h = self
            .s
            .get(self.i..self.i + 4)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or_else(|| format!("bad \\u escape at {}", self.i))?;
        self.i += 4;
        Ok(h)
    }

    pub fn string(&mut self) -> Result<String, String> {
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
pub fn obj(pairs: &[(&str, &str)]) -> String {
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

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Fails (never skips) when slixmpp is not importable by Debian's Python.
pub fn require_slixmpp() {
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
pub fn require_xmppjs() {
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
pub struct Agent {
    pub label: String,
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub lines: mpsc::Receiver<String>,
    /// Everything it printed, in order, and whether a test step has claimed it.
    pub events: Vec<(Ev, bool)>,
    pub exited: bool,
    pub next_id: u32,
    pub farm_dir: PathBuf,
    /// The full JID it bound.
    pub jid: String,
    pub online: Ev,
}

impl Agent {
    /// slixmpp, straight to the owner's c2s port, STARTTLS with the farm's CA.
    pub fn slixmpp(
        farm: &TestFarm,
        label: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Agent {
        let at = farm.owner(user).c2s;
        Agent::slixmpp_at(farm, label, user, password, resource, at, &[])
    }

    /// slixmpp connecting to `at` (a master, or a slave), with more agent.py options.
    pub fn slixmpp_at(
        farm: &TestFarm,
        label: &str,
        user: &str,
        password: &str,
        resource: &str,
        at: std::net::SocketAddr,
        more: &[&str],
    ) -> Agent {
        require_slixmpp();
        let mut cmd = Command::new(PYTHON);
        cmd.arg(repo().join("tests/py/agent.py"))
            .args(more)
            .args(["--host", &at.ip().to_string()])
            .args(["--port", &at.port().to_string()])
            .args(["--jid", &format!("{user}@localhost")])
            .args(["--password", password, "--resource", resource])
            .arg("--ca")
            .arg(farm.ca())
            .arg("--debug");
        Agent::spawn(farm, label, cmd)
    }

    /// xmpp.js, at the master's c2s port (it follows the redirect itself).
    pub fn xmppjs(
        farm: &TestFarm,
        label: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Agent {
        Agent::xmppjs_at(farm, label, user, password, resource, farm.master.c2s, &[])
    }

    /// xmpp.js connecting to `at`, with more chat.mjs options.
    pub fn xmppjs_at(
        farm: &TestFarm,
        label: &str,
        user: &str,
        password: &str,
        resource: &str,
        at: std::net::SocketAddr,
        more: &[&str],
    ) -> Agent {
        require_xmppjs();
        let mut cmd = Command::new("node");
        cmd.arg(repo().join("tests/js/chat.mjs"))
            .args(["--service", &format!("xmpp://{at}")])
            .args(["--domain", "localhost", "--user", user])
            .args(["--password", password, "--resource", resource, "--verbose"])
            .args(more)
            .env("NODE_EXTRA_CA_CERTS", farm.ca());
        Agent::spawn(farm, label, cmd)
    }

    pub fn spawn(farm: &TestFarm, label: &str, mut cmd: Command) -> Agent {
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
    pub fn pump(&mut self, deadline: Instant) -> bool {
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
    pub fn expect_within(
        &mut self,
        what: &str,
        within: Duration,
        pred: impl Fn(&Ev) -> bool,
    ) -> Ev {
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

    pub fn expect(&mut self, what: &str, pred: impl Fn(&Ev) -> bool) -> Ev {
        self.expect_within(what, STEP, pred)
    }

    pub fn presence(&mut self, from: &str, kind: &str) -> Ev {
        self.expect(&format!("presence type={kind} from {from}"), |e| {
            e.kind() == "presence" && e.is("from", from) && e.is("type", kind)
        })
    }

    pub fn roster_push(&mut self, jid: &str, subscription: &str, ask: Option<&str>) -> Ev {
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
    pub fn cmd(&mut self, name: &str, args: &[(&str, &str)]) -> (Ev, Vec<Ev>) {
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
    pub fn roster(&mut self) -> Vec<(String, String, Option<String>)> {
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
    pub fn assert_roster_unchanged_since_last_push(&mut self) {
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

    pub fn roster_get(&mut self, ver: &str) -> (Ev, Vec<(String, String, Option<String>)>) {
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

    pub fn message(&mut self, to: &str, body: &str) {
        self.cmd("message", &[("to", to), ("body", body), ("type", "chat")]);
    }

    /// This agent and `other` each send the other a chat message ("from LABEL"), and each
    /// gets the other's.
    pub fn chat_both_ways(&mut self, other: &mut Agent) {
        fn one_way(from: &mut Agent, to: &mut Agent) {
            let body = format!("from {}", from.label);
            from.message(&to.jid.clone(), &body);
            to.expect(&format!("{}'s message", from.label), |e| {
                e.kind() == "message" && e.is("body", &body)
            });
        }
        one_way(self, other);
        one_way(other, self);
    }

    /// Clean logout; the agent exits afterwards.
    pub fn disconnect(mut self) {
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
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// No stanza error, stream error or unexpected close reached this agent.
    pub fn assert_clean(&mut self) {
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

    pub fn fail(&self, what: &str) -> ! {
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

pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Every agent's debug log and the farm's log (ends of them).
pub fn context(dir: &Path) -> String {
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
