//! A real client follows the master's redirect: xmpp.js (`@xmpp/client`, pinned in
//! `tests/js/package.json`) logs in at the master, gets `<see-other-host/>` (D1), reconnects
//! to the owning slave by itself, upgrades with STARTTLS (certificate checked against
//! `localhost` with the farm's demo CA), authenticates and binds a resource. The session must
//! end up on the slave that owns the user: `tests/js/login.mjs` reports the remote port of the
//! TCP connection that holds the bound session.
//!
//! Needs node (v20+) and the npm packages: `npm ci --prefix tests/js` (the test script runs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::TestFarm;
use common::agents::require_xmppjs;

const PASSWORD_SUFFIX: &str = "-pw!";
/// Node processes at once (2-core machine).
const PARALLEL: usize = 4;
/// login.mjs gives up after 20 s by itself; this only guards against a hung node.
const KILL_AFTER: Duration = Duration::from_secs(30);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

struct Login {
    output: Output,
}

impl Login {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }
}

/// `node tests/js/login.mjs --service xmpp://<service> --domain localhost --user .. --password ..`
fn login(ca: &Path, service: &str, user: &str, password: &str, mechanism: Option<&str>) -> Login {
    let mut cmd = Command::new("node");
    cmd.arg(js_dir().join("login.mjs"))
        .args(["--service", service, "--domain", "localhost"])
        .args(["--user", user, "--password", password])
        .env("NODE_EXTRA_CA_CERTS", ca)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(m) = mechanism {
        cmd.args(["--mechanism", m]);
    }
    let mut child = cmd.spawn().expect("spawn node");
    let deadline = Instant::now() + KILL_AFTER;
    while child.try_wait().expect("wait for node").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Login {
        output: child.wait_with_output().expect("collect node output"),
    }
}

/// The raw value of `"key":` in a flat JSON object line (string without its quotes).
fn json_field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let rest = &line[line.find(&pat)? + pat.len()..];
    if let Some(s) = rest.strip_prefix('"') {
        return Some(&s[..s.find('"')?]);
    }
    if rest.starts_with('[') {
        return Some(&rest[..=rest.find(']')?]);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// The end of the farm log without the SQL and TLS-library noise.
fn log_tail(farm: &TestFarm) -> String {
    let log = farm.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("sqlx::") && !l.contains("rustls::"))
        .collect();
    lines[lines.len().saturating_sub(300)..].join("\n")
}

#[test]
fn xmppjs_follows_redirect_to_owning_slave() {
    require_xmppjs();
    let started = Instant::now();
    let farm = TestFarm::start(2);
    let ca = farm.ca();
    assert!(ca.is_file(), "no CA at {}", ca.display());
    let master = format!("xmpp://{}", farm.master.c2s);

    let users = farm.users_on_every_slave("jsuser", 10);
    assert!(users.len() >= 20, "{users:?}");
    for (user, _) in &users {
        farm.add_user(user, &format!("{user}{PASSWORD_SUFFIX}"));
    }

    // Every other user forces PLAIN; the rest keep xmpp.js's own choice (SCRAM-SHA-1: 0.14 has
    // no SCRAM-SHA-256), so the master reads the username from both kinds of first message.
    let jobs: Vec<(usize, &String)> = users.iter().map(|(u, _)| u).enumerate().collect();
    let queue = Mutex::new(jobs.into_iter());
    let failures = Mutex::new(Vec::<String>::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                loop {
                    let Some((i, user)) = queue.lock().unwrap().next() else {
                        break;
                    };
                    let mechanism = (i % 2 == 1).then_some("PLAIN");
                    let password = format!("{user}{PASSWORD_SUFFIX}");
                    let run = login(&ca, &master, user, &password, mechanism);
                    if let Err(why) = check(&farm, &master, user, mechanism, &run) {
                        failures.lock().unwrap().push(format!(
                            "{user} (mechanism {}): {why}\n  exit: {}\n  stdout: {}\n  stderr: {}",
                            mechanism.unwrap_or("xmpp.js default"),
                            run.output.status,
                            run.stdout().trim(),
                            run.stderr().trim()
                        ));
                    }
                }
            });
        }
    });
    let mut failures = failures.into_inner().unwrap();

    // A wrong password: redirected all the same, then refused by the slave.
    let (user, _) = &users[0];
    let run = login(&ca, &master, user, "not-the-password", None);
    if run.output.status.success() || !run.stderr().contains("not-authorized") {
        failures.push(format!(
            "{user} with a wrong password: expected a failure with not-authorized\n  exit: {}\n  stdout: {}\n  stderr: {}",
            run.output.status,
            run.stdout().trim(),
            run.stderr().trim()
        ));
    }

    assert!(
        failures.is_empty(),
        "{} of {} xmpp.js logins via the master went wrong:\n{}\n\nfarm log (tail):\n{}",
        failures.len(),
        users.len() + 1,
        failures.join("\n"),
        log_tail(&farm)
    );

    eprintln!(
        "{} xmpp.js logins through the master in {:.1} s",
        users.len() + 1,
        started.elapsed().as_secs_f64()
    );
}

/// What one successful login must show: exit 0, the user's JID, TLS, the mechanism asked for,
/// the redirect trail master → owner, and the session's TCP peer is the owner's c2s port.
fn check(
    farm: &TestFarm,
    master: &str,
    user: &str,
    mechanism: Option<&str>,
    run: &Login,
) -> Result<(), String> {
    if !run.output.status.success() {
        return Err("login.mjs failed".into());
    }
    let stdout = run.stdout();
    let lines: Vec<&str> = stdout.lines().collect();
    let [line] = lines[..] else {
        return Err(format!("expected one JSON line, got {}", lines.len()));
    };
    let field = |k: &str| json_field(line, k).ok_or_else(|| format!("no {k:?} in the output"));

    let jid = field("jid")?;
    if !jid.starts_with(&format!("{user}@localhost/")) {
        return Err(format!("bound JID {jid:?} is not {user}@localhost/…"));
    }
    if field("encrypted")? != "true" {
        return Err("session not encrypted".into());
    }
    if let Some(m) = mechanism
        && field("mechanism")? != m
    {
        return Err(format!("mechanism {} instead of {m}", field("mechanism")?));
    }
    let owner = farm.owner(user);
    let port: u16 = field("remotePort")?
        .parse()
        .map_err(|e| format!("remotePort: {e}"))?;
    if port != owner.c2s.port() {
        return Err(format!(
            "session held on port {port}, but {user} belongs to {} (c2s {}); master c2s is {}",
            owner.name, owner.c2s, farm.master.c2s
        ));
    }
    let trail = format!("[\"{master}\",\"xmpp://{}\"]", owner.c2s);
    if field("services")? != trail {
        return Err(format!(
            "connections {} instead of {trail} (master, then owner)",
            field("services")?
        ));
    }
    Ok(())
}

/// A client that follows redirects stays redirected: with `redirect = "auto"` (logged in at
/// its slave each time, so the master never relays it, however often it comes back) and
/// with `redirect = "always"`.
#[test]
fn xmppjs_stays_redirected_in_auto_and_always() {
    require_xmppjs();
    for mode in ["auto", "always"] {
        let farm = TestFarm::start_edited(2, |t| format!("{t}\n[relay]\nredirect = \"{mode}\"\n"));
        let ca = farm.ca();
        let master = format!("xmpp://{}", farm.master.c2s);
        let users = farm.users_on_every_slave("again", 1);
        for (user, _) in &users {
            farm.add_user(user, &format!("{user}{PASSWORD_SUFFIX}"));
        }
        for round in 0..3 {
            for (user, _) in &users {
                let run = login(
                    &ca,
                    &master,
                    user,
                    &format!("{user}{PASSWORD_SUFFIX}"),
                    None,
                );
                if let Err(why) = check(&farm, &master, user, None, &run) {
                    panic!(
                        "{mode}, login {round} of {user}: {why}\n  stdout: {}\n  stderr: {}\n{}",
                        run.stdout().trim(),
                        run.stderr().trim(),
                        log_tail(&farm)
                    );
                }
                // The slave's notice reaches the master before the next login.
                if mode == "auto" {
                    farm.wait_log(&format!("user=\"{user}\" relayed=false"), 10);
                }
            }
        }
        let log = farm.log();
        assert!(!log.contains("relaying login"), "{mode}: relayed\n{log}");
    }
}
