//! Federation against a real Prosody (Debian's `prosody`, started here with its own config and
//! data directory on a loopback address, never systemd) serving `remote.test`.
//!
//! How the two servers find each other without DNS: the farm pins `remote.test` with a static
//! route (`[s2s.routes]`); Prosody resolves names through libunbound, which reads `/etc/hosts`
//! (`unbound = { hoststxt = "/etc/hosts" }`), so the test adds `farm.test` and `remote.test`
//! there while it runs and removes them after. No SRV records exist, so Prosody connects to
//! `farm.test` on port 5269: the master's s2s listener binds a loopback address of its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{Raw, TestFarm};

const FARM_DOMAIN: &str = "farm.test";
const FARM_S2S_IP: &str = "127.0.0.2";
const REMOTE_DOMAIN: &str = "remote.test";
const REMOTE_IP: &str = "127.0.0.3";
/// The second master's s2s address (a farm with two masters).
const FARM_S2S_IP2: &str = "127.0.0.4";

/// The tests share port 5269 on fixed loopback addresses and /etc/hosts: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Adds lines to /etc/hosts for the test's lifetime.
struct Hosts {
    lines: Vec<String>,
}

impl Hosts {
    fn add(lines: &[String]) -> Hosts {
        let current = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
        let mut text = current.clone();
        if !text.ends_with('\n') && !text.is_empty() {
            text.push('\n');
        }
        for l in lines {
            if !current.lines().any(|c| c == l) {
                text.push_str(l);
                text.push('\n');
            }
        }
        std::fs::write("/etc/hosts", text).unwrap_or_else(|e| {
            panic!("this test maps {FARM_DOMAIN}/{REMOTE_DOMAIN} in /etc/hosts and needs to write it (run as root): {e}")
        });
        Hosts {
            lines: lines.to_vec(),
        }
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        if let Ok(text) = std::fs::read_to_string("/etc/hosts") {
            let kept: Vec<&str> = text
                .lines()
                .filter(|l| !self.lines.iter().any(|x| x == l))
                .collect();
            let _ = std::fs::write("/etc/hosts", kept.join("\n") + "\n");
        }
    }
}

/// A throwaway Prosody for `remote.test`.
struct Prosody {
    dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
    c2s: SocketAddr,
}

impl Prosody {
    fn start(users: &[(&str, &str)]) -> Prosody {
        let prosody = which("prosody");
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("certs")).unwrap();
        std::fs::create_dir_all(d.join("data")).unwrap();
        let st = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args([
                "-subj",
                "/CN=remote.test",
                "-addext",
                "subjectAltName=DNS:remote.test",
            ])
            .arg("-keyout")
            .arg(d.join("certs/remote.test.key"))
            .arg("-out")
            .arg(d.join("certs/remote.test.crt"))
            .stderr(Stdio::null())
            .status()
            .expect("openssl is needed to make Prosody's certificate");
        assert!(st.success());
        let c2s_port = std::net::TcpListener::bind(format!("{REMOTE_IP}:0"))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = d.join("prosody.cfg.lua");
        let p = |x: &str| d.join(x).display().to_string();
        std::fs::write(
            &config,
            format!(
                r#"pidfile = "{pid}"
data_path = "{data}"
interfaces = {{ "{REMOTE_IP}" }}
c2s_ports = {{ {c2s_port} }}
s2s_ports = {{ 5269 }}
s2s_interfaces = {{ "{REMOTE_IP}" }}
http_ports = {{}}
https_ports = {{}}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping" }}
modules_disabled = {{ "posix" }}
c2s_require_encryption = false
s2s_require_encryption = true
s2s_secure_auth = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
log = {{ debug = "{log}" }}
unbound = {{ hoststxt = "/etc/hosts" }}
certificates = "{certs}"
run_as_root = true
VirtualHost "{REMOTE_DOMAIN}"
"#,
                pid = p("prosody.pid"),
                data = p("data"),
                log = p("prosody.log"),
                certs = p("certs"),
            ),
        )
        .unwrap();
        for (u, pw) in users {
            let st = Command::new("prosodyctl")
                .arg("--config")
                .arg(&config)
                .args(["register", u, REMOTE_DOMAIN, pw])
                .stdout(Stdio::null())
                .status()
                .unwrap();
            assert!(st.success(), "prosodyctl register {u} failed");
        }
        let mut p = Prosody {
            config,
            child: None,
            c2s: format!("{REMOTE_IP}:{c2s_port}").parse().unwrap(),
            dir,
        };
        p.spawn(&prosody);
        p
    }

    fn spawn(&mut self, prosody: &Path) {
        let out = std::fs::File::create(self.dir.path().join("stdout.txt")).unwrap();
        let child = Command::new(prosody)
            .arg("--config")
            .arg(&self.config)
            .arg("-F")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        let s2s: SocketAddr = format!("{REMOTE_IP}:5269").parse().unwrap();
        while TcpStream::connect_timeout(&self.c2s, Duration::from_millis(200)).is_err()
            || TcpStream::connect_timeout(&s2s, Duration::from_millis(200)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "Prosody did not start:\n{}\n{}",
                std::fs::read_to_string(self.dir.path().join("stdout.txt")).unwrap_or_default(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prosody.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(cmd: &str) -> PathBuf {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "{cmd} is not installed: the test script installs it (apt-get install prosody lua-unbound)"
    );
    PathBuf::from(path)
}

/// A farm for `farm.test` whose master takes s2s on 127.0.0.2:5269.
fn federated_farm() -> TestFarm {
    TestFarm::start_edited(2, federated_config)
}

/// The test farm's config for `farm.test`: the master's s2s on 127.0.0.2:5269, `remote.test`
/// pinned to Prosody.
fn federated_config(text: String) -> String {
    text.replace(
        "domain = \"localhost\"",
        &format!("domain = \"{FARM_DOMAIN}\""),
    )
    .replace(
        "name = \"master\"\nrole = \"master\"\n",
        &format!("name = \"master\"\nrole = \"master\"\ns2s = \"{FARM_S2S_IP}:5269\"\n"),
    ) + &format!(
        "\n[s2s]\nconnect_timeout = 3\nidle_timeout = 3\n\n[s2s.routes]\n\"{REMOTE_DOMAIN}\" = \"{REMOTE_IP}:5269\"\n"
    )
}

/// Where a login for `user` at `at` is sent (`<see-other-host/>`).
fn redirected_by(at: SocketAddr, user: &str) -> String {
    let mut c = Raw::connect(at);
    c.open_at(FARM_DOMAIN);
    c.send(&common::plain_auth(user, "pw"));
    let got = c.wait_closed(5);
    let start = got
        .find("<see-other-host")
        .unwrap_or_else(|| panic!("not redirected: {got}"));
    let from = start + got[start..].find('>').unwrap() + 1;
    got[from..from + got[from..].find('<').unwrap()].to_owned()
}

/// Everything a federation test needs, torn down in reverse order when dropped: a farm for
/// `farm.test` with user `juliet`, a Prosody for `remote.test` with user `romeo`, the
/// /etc/hosts lines that let Prosody find the farm, and the lock that keeps tests apart.
struct Fed {
    farm: TestFarm,
    prosody: Prosody,
    _hosts: Hosts,
    _serial: std::sync::MutexGuard<'static, ()>,
}

impl Fed {
    fn start() -> Fed {
        let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let hosts = Hosts::add(&[
            format!("{FARM_S2S_IP} {FARM_DOMAIN}"),
            format!("{REMOTE_IP} {REMOTE_DOMAIN}"),
        ]);
        let prosody = Prosody::start(&[("romeo", "pw")]);
        let farm = federated_farm();
        farm.add_user("juliet", "pw");
        Fed {
            farm,
            prosody,
            _hosts: hosts,
            _serial: serial,
        }
    }
}

fn farm_login(farm: &TestFarm, user: &str, res: &str) -> Raw {
    Raw::login_at(farm.owner(user).c2s, FARM_DOMAIN, user, "pw", res)
}

#[test]
fn chat_and_presence_with_a_prosody_user() {
    let Fed {
        _serial,
        _hosts,
        prosody,
        farm,
    } = Fed::start();
    let mut j = farm_login(&farm, "juliet", "balcony");
    let mut r = Raw::login_at(prosody.c2s, REMOTE_DOMAIN, "romeo", "pw", "garden");
    let rj = format!("romeo@{REMOTE_DOMAIN}");
    let jj = format!("juliet@{FARM_DOMAIN}");
    j.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>");
    j.wait_for("id='r1'", 5);
    r.send("<iq type='get' id='r1'><query xmlns='jabber:iq:roster'/></iq>");
    r.wait_for("id='r1'", 5);
    j.send("<presence/>");
    r.send("<presence/>");

    // Juliet (on a slave) subscribes to Romeo; Prosody gets it in the farm's name.
    j.send(&format!("<presence to='{rj}' type='subscribe'/>"));
    let got = r.wait_for("type='subscribe'", 20);
    assert!(got.contains(&format!("from='{jj}'")), "{got}");
    r.send(&format!("<presence to='{jj}' type='subscribed'/>"));
    j.wait_for("subscription='to'", 20);
    // And back: Romeo subscribes to Juliet through the master.
    r.send(&format!("<presence to='{jj}' type='subscribe'/>"));
    let got = j.wait_for("type='subscribe'", 20);
    assert!(got.contains(&format!("from='{rj}'")), "{got}");
    j.send(&format!("<presence to='{rj}' type='subscribed'/>"));
    j.wait_for("subscription='both'", 20);
    // Each sees the other's presence.
    j.send("<presence><status>on the balcony</status></presence>");
    r.wait_for("on the balcony", 20);
    r.send("<presence><status>in the garden</status></presence>");
    let p = j.wait_for("in the garden", 20);
    assert!(p.contains(&format!("from='{rj}/garden'")), "{p}");

    // Chat both ways.
    j.send(&format!(
        "<message to='{rj}/garden' type='chat' id='m1'><body>Romeo, Romeo</body></message>"
    ));
    let m = r.wait_for("Romeo, Romeo", 20);
    assert!(m.contains(&format!("from='{jj}/balcony'")), "{m}");
    r.send(&format!(
        "<message to='{jj}' type='chat' id='m2'><body>I take thee at thy word</body></message>"
    ));
    let m = j.wait_for("I take thee at thy word", 20);
    assert!(m.contains(&format!("from='{rj}/garden'")), "{m}");

    // Romeo comes back in a new session: Prosody probes Juliet through the master, and the
    // slave that owns her answers with her presence.
    r.send("</stream:stream>");
    r.wait_closed(5);
    let mut r = Raw::login_at(prosody.c2s, REMOTE_DOMAIN, "romeo", "pw", "orchard");
    r.send("<presence/>");
    let p = r.wait_for("on the balcony", 20);
    assert!(p.contains(&format!("from='{jj}/balcony'")), "{p}");

    // The master answers for the bare domain, through its own outbound stream.
    r.send(&format!(
        "<iq type='get' id='d1' to='{FARM_DOMAIN}'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ));
    let d = r.wait_for("</iq>", 20);
    assert!(d.contains("name='jabberfarm'"), "{d}");

    // What Prosody received from the farm: only the public domain, never a node name.
    let log = prosody.log();
    let received: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Received[s2sin]"))
        .collect();
    assert!(
        received.iter().any(|l| l.contains(&format!("from='{jj}"))),
        "Prosody logged no stanza from the farm:\n{log}"
    );
    for l in &received {
        for internal in ["slave1", "slave2", "@master", "'master'"] {
            assert!(!l.contains(internal), "internal name leaked: {l}");
        }
    }
    // Prosody's dialback against the master succeeded for the stream a slave opened: the slave
    // logged the established stream, the master verified the key.
    let flog = farm.log();
    assert!(flog.contains("s2s to remote.test established"), "{flog}");
    // Idle outbound streams close by themselves (s2s.idle_timeout = 3 s here).
    let deadline = Instant::now() + Duration::from_secs(15);
    while !farm.log().contains("s2s to remote.test idle, closing") {
        assert!(Instant::now() < deadline, "no idle close:\n{}", farm.log());
        std::thread::sleep(Duration::from_millis(200));
    }
    // Prosody asked the master about the key the slave gave it, and was told valid.
    assert!(
        log.lines().any(|l| l.contains("Received[s2sout]: <verify")
            && l.contains("type='valid'")
            && l.contains(&format!("from='{FARM_DOMAIN}'"))),
        "{log}"
    );
    assert!(
        log.contains(&format!(
            "connection {FARM_DOMAIN}->{REMOTE_DOMAIN} is now authenticated for {FARM_DOMAIN}"
        )),
        "{log}"
    );
}

#[test]
fn unauthenticated_streams_cannot_deliver_and_wrong_keys_are_refused() {
    let Fed {
        _serial,
        _hosts,
        prosody,
        farm,
    } = Fed::start();
    let mut j = farm_login(&farm, "juliet", "balcony");
    j.send("<presence/>");
    let s2s: SocketAddr = format!("{FARM_S2S_IP}:5269").parse().unwrap();
    let header = format!(
        "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{REMOTE_DOMAIN}' to='{FARM_DOMAIN}' version='1.0'>"
    );

    // 1. Claiming to be remote.test without dialback: the stanza is refused, nothing arrives.
    let mut c = Raw::connect(s2s);
    c.send(&header);
    c.wait_for("</stream:features>", 5);
    c.send(&format!(
        "<message from='romeo@{REMOTE_DOMAIN}/x' to='juliet@{FARM_DOMAIN}' type='chat'><body>forged</body></message>"
    ));
    let got = c.wait_closed(5);
    assert!(
        got.contains("<invalid-from xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{got}"
    );

    // 2. A wrong dialback key: the master asks Prosody, which says invalid.
    let mut c = Raw::connect(s2s);
    c.send(&header);
    c.wait_for("</stream:features>", 5);
    c.send(&format!(
        "<db:result from='{REMOTE_DOMAIN}' to='{FARM_DOMAIN}'>0123456789abcdef</db:result>"
    ));
    let got = c.wait_for("<db:result", 20);
    let got = got + &c.wait_for("/>", 5);
    assert!(got.contains("type='invalid'"), "{got}");
    c.send(&format!(
        "<message from='romeo@{REMOTE_DOMAIN}/x' to='juliet@{FARM_DOMAIN}' type='chat'><body>forged</body></message>"
    ));
    assert!(c.wait_closed(5).contains("<invalid-from"));

    // 3. Verifying a key the farm never issued.
    let mut c = Raw::connect(s2s);
    c.send(&header);
    c.wait_for("</stream:features>", 5);
    c.send(&format!(
        "<db:verify from='{REMOTE_DOMAIN}' to='{FARM_DOMAIN}' id='abc'>deadbeef</db:verify>"
    ));
    let got = c.wait_for("<db:verify", 5);
    let got = got + &c.wait_for("/>", 5);
    assert!(got.contains("type='invalid'"), "{got}");

    // Juliet received none of it.
    j.send("<iq type='get' id='p' to='farm.test'><ping xmlns='urn:xmpp:ping'/></iq>");
    let r = j.wait_for("id='p'", 5);
    assert!(!j.got.contains("forged"), "{r}");
    drop(prosody);
}

#[test]
fn messages_for_a_server_that_went_away_bounce() {
    let Fed {
        _serial,
        _hosts,
        mut prosody,
        farm,
    } = Fed::start();
    farm.add_user("nurse", "pw");
    let mut j = farm_login(&farm, "juliet", "balcony");
    j.send("<presence/>");
    prosody.stop();
    for i in 0..3 {
        j.send(&format!(
            "<message to='romeo@{REMOTE_DOMAIN}' type='chat' id='gone{i}'><body>are you there {i}</body></message>"
        ));
    }
    // Each comes back as an error naming the remote server's failure.
    for i in 0..3 {
        let got = j.wait_for(&format!("id='gone{i}'"), 20);
        let got = got + &j.wait_for("</message>", 5);
        assert!(got.contains("type='error'"), "{got}");
        assert!(
            got.contains("<remote-server-not-found") || got.contains("<remote-server-timeout"),
            "{got}"
        );
    }
    // Nothing else is lost: local delivery goes on.
    let mut n = farm_login(&farm, "nurse", "kitchen");
    n.send(&format!(
        "<message to='juliet@{FARM_DOMAIN}/balcony' type='chat'><body>still here</body></message>"
    ));
    j.wait_for("still here", 5);
}

/// Two masters and three slaves, each its own process, the data in MariaDB, both masters
/// published for `farm.test` (two addresses, as an ISP publishes two SRV targets): both send a
/// login to the same slave; kill -9 the first, and logins go on at the second, Prosody's
/// messages come in through it (it reconnects to the address that answers), the farm's go
/// out, their dialback keys checked by the second, and its metrics show the first one lost.
#[test]
fn a_second_master_takes_logins_and_federation_when_the_first_dies() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let _hosts = Hosts::add(&[
        format!("{FARM_S2S_IP} {FARM_DOMAIN}"),
        format!("{FARM_S2S_IP2} {FARM_DOMAIN}"),
        format!("{REMOTE_IP} {REMOTE_DOMAIN}"),
    ]);
    let prosody = Prosody::start(&[("romeo", "pw")]);
    let db = jabberfarm_testkit::servers::shared_mariadb();
    let url = db.create_database("masters");
    let metrics = SocketAddr::from(([127, 0, 0, 1], common::free_port()));
    let mut farm =
        TestFarm::start_processes_masters(3, &[Some(&format!("{FARM_S2S_IP2}:5269"))], |text| {
            let text = common::with_central_data(&federated_config(text), &url);
            common::with_metrics(&text, "master2", metrics)
        });
    farm.add_user("juliet", "pw");
    let owner = farm.owner("juliet").c2s.to_string();
    let master2 = farm.more_masters[0].c2s;
    assert_eq!(redirected_by(farm.master.c2s, "juliet"), owner);
    assert_eq!(redirected_by(master2, "juliet"), owner);

    let mut j = farm_login(&farm, "juliet", "balcony");
    j.send("<presence/>");
    j.sync(FARM_DOMAIN);
    let mut r = Raw::login_at(prosody.c2s, REMOTE_DOMAIN, "romeo", "pw", "garden");
    r.send("<presence/>");
    let (rj, jj) = (
        format!("romeo@{REMOTE_DOMAIN}"),
        format!("juliet@{FARM_DOMAIN}"),
    );
    r.send(&format!(
        "<message to='{jj}' type='chat'><body>before the fall</body></message>"
    ));
    j.wait_for("before the fall", 30);

    farm.kill_node("master");
    assert_eq!(redirected_by(master2, "juliet"), owner);
    // Changes wait for the primary; the operator is told which node that is.
    let (ok, err) = farm.admin(&["reload"]);
    assert!(
        !ok && err.contains("master (the primary master, which hands out every change"),
        "{err}"
    );
    r.send(&format!(
        "<message to='{jj}' type='chat'><body>after the fall</body></message>"
    ));
    let m = j.wait_for("after the fall", 40);
    assert!(m.contains(&format!("from='{rj}/garden'")), "{m}");
    j.send(&format!(
        "<message to='{rj}/garden' type='chat'><body>still here</body></message>"
    ));
    r.wait_for("still here", 40);
    // Prosody came in at the second master once the first was gone.
    let log = std::fs::read_to_string(farm.dir.path().join("node-master2.log")).unwrap();
    assert!(
        log.contains("s2s from remote.test authenticated (dialback)"),
        "{log}"
    );
    // What the second master's metrics say of the first (it probes the port once a second).
    common::wait_metrics(
        metrics,
        &[
            "jabberfarm_link_up{peer=\"master\"} 0",
            "jabberfarm_node_failed{peer=\"master\"} 1",
            "jabberfarm_link_lost_total{peer=\"master\"} 1",
            "jabberfarm_link_up{peer=\"slave3\"} 1",
        ],
    );
    drop(db);
}
