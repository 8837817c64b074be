//! Network faults with real network namespaces (issue 11): each node of a farm runs in a
//! namespace of its own, the three joined by a bridge in a fourth; the test cuts one slave's
//! cable and plugs it back. It creates every namespace and interface it uses and deletes them
//! at the end; no address outside its own namespaces is ever touched. Needs root and `ip`
//! (iproute2; the test script installs it).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Raw};

/// `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces of one test: `hub` holds the bridge, each node has its own.
struct Net {
    hub: String,
    nodes: Vec<(String, String)>, // (namespace, address)
}

impl Net {
    /// Namespaces `<tag>h` (bridge) and `<tag>0..n` (10.99.0.(i+1)/24 each, on a veth whose
    /// other end is on the bridge).
    fn new(tag: &str, n: usize) -> Net {
        let hub = format!("{tag}h");
        ip(&["netns", "add", &hub]);
        let mut net = Net {
            hub: hub.clone(),
            nodes: Vec::new(),
        };
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        for i in 0..n {
            let ns = format!("{tag}{i}");
            let addr = format!("10.99.0.{}", i + 1);
            ip(&["netns", "add", &ns]);
            net.nodes.push((ns.clone(), addr.clone()));
            let (inner, outer) = (format!("v{i}"), format!("p{i}"));
            ip(&[
                "link", "add", &inner, "netns", &ns, "type", "veth", "peer", "name", &outer,
                "netns", &hub,
            ]);
            ip(&["-n", &hub, "link", "set", &outer, "master", "br0"]);
            ip(&["-n", &hub, "link", "set", &outer, "up"]);
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                &inner,
            ]);
            ip(&["-n", &ns, "link", "set", &inner, "up"]);
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        net
    }

    /// Pull (or plug back) node `i`'s cable at the bridge.
    fn cable(&self, i: usize, plugged: bool) {
        let port = format!("p{i}");
        ip(&[
            "-n",
            &self.hub,
            "link",
            "set",
            &port,
            if plugged { "up" } else { "down" },
        ]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for (ns, _) in &self.nodes {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.hub])
            .status();
    }
}

/// A TCP connection made from inside namespace `ns` (on a thread that enters it; the socket
/// stays in that namespace).
fn connect_in(ns: &str, addr: SocketAddr) -> TcpStream {
    let path = PathBuf::from(format!("/var/run/netns/{ns}"));
    let ns = ns.to_owned();
    std::thread::spawn(move || {
        let f = std::fs::File::open(&path).unwrap();
        // This thread only: the test's other threads stay where they are.
        nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => return s,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "connect to {addr} in {ns:?}: {e}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    })
    .join()
    .unwrap()
}

/// The farm: `master`, `slave1`, `slave2` in namespaces 0, 1, 2.
struct Farm {
    dir: tempfile::TempDir,
    config: PathBuf,
    procs: Vec<(String, Child)>,
}

impl Farm {
    fn write(net: &Net) -> Farm {
        let dir = tempfile::tempdir().unwrap();
        let mut cfg = String::from(
            "domain = \"localhost\"\nsecret = \"netns-secret\"\n\n[tls]\ngenerate = true\n\
             required = false\n\n[limits]\nstream_open_timeout = 3\nlogin_timeout = 10\n\
             shutdown_grace = 2\n\n[farm]\nheartbeat = 1\ndead_after = 3\n\n[routing]\n\
             mode = \"hash\"\nhash_key = \"000102030405060708090a0b0c0d0e0f\"\n\n",
        );
        for (i, name) in ["master", "slave1", "slave2"].iter().enumerate() {
            let addr = &net.nodes[i].1;
            let role = if i == 0 { "master" } else { "slave" };
            cfg.push_str(&format!(
                "[[node]]\nname = \"{name}\"\nrole = \"{role}\"\nc2s = \"{addr}:5222\"\n\
                 farm = \"{addr}:7000\"\n\n"
            ));
        }
        let config = dir.path().join("farm.toml");
        std::fs::write(&config, cfg).unwrap();
        Farm {
            dir,
            config,
            procs: Vec::new(),
        }
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .args(["--data-dir", self.data().to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).unwrap()
    }

    fn owner(&self, user: &str) -> String {
        let out = Command::new(BIN)
            .args(["route", "--config"])
            .arg(&self.config)
            .arg(user)
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .rsplit('\t')
            .next()
            .unwrap()
            .trim()
            .to_owned()
    }

    fn start(&mut self, net: &Net) {
        for (i, name) in ["master", "slave1", "slave2"].iter().enumerate() {
            let log = std::fs::File::create(self.dir.path().join(format!("{name}.log"))).unwrap();
            let child = Command::new("ip")
                .args(["netns", "exec", &net.nodes[i].0, BIN, "run", "--node", name])
                .arg("--config")
                .arg(&self.config)
                .args(["--data-dir", self.data().to_str().unwrap()])
                .env("JABBERFARM_LOG", "debug")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            self.procs.push((name.to_string(), child));
        }
    }

    fn log(&self, node: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{node}.log"))).unwrap_or_default()
    }

    /// Wait until `node`'s log holds `needle` at least `times` times.
    fn wait_log(&self, node: &str, needle: &str, times: usize, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.log(node).matches(needle).count() < times {
            assert!(
                Instant::now() < deadline,
                "{node} never logged {needle:?} ×{times}:\n{}",
                tail(&self.log(node))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every node process still runs.
    fn all_running(&mut self) {
        for (name, c) in &mut self.procs {
            assert!(
                c.try_wait().unwrap().is_none(),
                "{name} exited: {:?}",
                c.try_wait()
            );
        }
    }
}

impl Drop for Farm {
    fn drop(&mut self) {
        for (_, c) in &mut self.procs {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Bodies that arrived at a client, each with how often.
fn bodies(c: &Raw) -> std::collections::HashMap<String, usize> {
    let mut out = std::collections::HashMap::new();
    for part in c.got.split("<body>").skip(1) {
        if let Some(end) = part.find("</body>") {
            *out.entry(part[..end].to_owned()).or_default() += 1;
        }
    }
    out
}

/// Partition slave2 from the master and from slave1, then heal: nothing crashes, the links
/// come back by themselves, users on the healthy side chat all along, messages across the
/// cut (in flight when it came, and sent while it lasts, both ways) are kept by the links and
/// delivered when it heals — each once, in order, without an error to their senders — and
/// nobody is told the other side went offline (its sessions never ended).
#[test]
fn a_slave_cut_off_and_plugged_back() {
    assert!(
        is_root(),
        "tests/netns.rs needs root (network namespaces); CI runs as root"
    );
    assert!(
        Command::new("ip").arg("-V").output().is_ok(),
        "ip (iproute2) is missing: the test script installs it"
    );
    let tag = format!("jf{}", std::process::id() % 100_000);
    let net = Net::new(&tag, 3);
    let mut farm = Farm::write(&net);
    // Users: two on slave1 (the healthy side), one on slave2.
    let pick = |prefix: &str, owner: &str, skip: usize| {
        (0..300)
            .map(|i| format!("{prefix}{i}"))
            .filter(|u| farm.owner(u) == owner)
            .nth(skip)
            .unwrap()
    };
    let (a, b, c) = (
        pick("ann", "slave1", 0),
        pick("ann", "slave1", 1),
        pick("cut", "slave2", 0),
    );
    for u in [&a, &b, &c] {
        farm.cli(&["user", "add", &format!("{u}@localhost"), "--password", "pw"]);
    }
    farm.start(&net);
    for (node, pair) in [
        ("master", "farm link master <-> slave1 up"),
        ("master", "farm link master <-> slave2 up"),
        ("slave1", "farm link slave1 <-> slave2 up"),
    ] {
        farm.wait_log(node, pair, 1, 30);
    }
    let slave = |i: usize| -> SocketAddr { format!("{}:5222", net.nodes[i].1).parse().unwrap() };
    let login = |ns: usize, addr: SocketAddr, user: &str| {
        let mut r = Raw::login_over(
            Raw::from_stream(connect_in(&net.nodes[ns].0, addr)),
            "localhost",
            user,
            "pw",
            "r",
        );
        r.send("<presence/>");
        r.wait_for("<presence", 5);
        r
    };
    let mut ca = login(1, slave(1), &a);
    let mut cb = login(1, slave(1), &b);
    let mut cc = login(2, slave(2), &c);
    let msg = |to: &str, id: &str, body: &str| {
        format!(
            "<message to='{to}@localhost/r' type='chat' id='{id}'><body>{body}</body></message>"
        )
    };
    // Before: across the farm both ways.
    ca.send(&msg(&c, "x1", "before-a-to-c"));
    cc.wait_for("before-a-to-c", 10);
    cc.send(&msg(&a, "x2", "before-c-to-a"));
    ca.wait_for("before-c-to-a", 10);
    // c shows itself to a: a would hear if c's sessions were taken for gone.
    cc.send(&format!("<presence to='{a}@localhost/r'/>"));
    ca.wait_for(&format!("from='{c}@localhost/r'"), 10);

    // Cut slave2 off, with messages on their way: the others see its links die (heartbeats
    // stop).
    for i in 0..10 {
        ca.send(&msg(&c, &format!("f{i}"), &format!("across-{i:02}")));
    }
    net.cable(2, false);
    for node in ["master", "slave1"] {
        farm.wait_log(node, "farm link to slave2 down", 1, 20);
    }
    // The healthy side chats on.
    for i in 0..20 {
        ca.send(&msg(&b, &format!("h{i}"), &format!("healthy-a-to-b-{i}")));
        cb.send(&msg(&a, &format!("k{i}"), &format!("healthy-b-to-a-{i}")));
    }
    cb.wait_for("healthy-a-to-b-19", 10);
    ca.wait_for("healthy-b-to-a-19", 10);
    // Across the cut, both ways: kept, not refused.
    for i in 10..30 {
        ca.send(&msg(&c, &format!("f{i}"), &format!("across-{i:02}")));
    }
    cc.send(&msg(&a, "x3", "during-c-to-a"));
    std::thread::sleep(Duration::from_secs(1));
    ca.sync("localhost");
    cc.sync("localhost");
    assert!(!ca.got.contains("type='error'"), "{}", ca.got);
    assert!(
        !cc.got.contains("across-29"),
        "delivered through a cut cable?"
    );

    // Plug it back: the links come back by themselves, and write what they kept.
    net.cable(2, true);
    farm.wait_log("master", "farm link master <-> slave2 up", 2, 30);
    farm.wait_log("slave1", "farm link slave1 <-> slave2 up", 2, 30);
    cc.wait_for("across-29", 10);
    ca.wait_for("during-c-to-a", 10);
    common::each_once_in_order(&cc.got, (0..30).map(|i| format!("across-{i:02}")));
    assert!(!ca.got.contains("type='error'"), "{}", ca.got);
    assert!(
        !ca.got.contains("type='unavailable'"),
        "a was told c went offline: {}",
        ca.got
    );
    assert!(
        farm.log("slave1").contains("kept for it"),
        "{}",
        tail(&farm.log("slave1"))
    );
    ca.send(&msg(&c, "x4", "after-a-to-c"));
    cc.wait_for("after-a-to-c", 10);
    cc.send(&msg(&a, "x5", "after-c-to-a"));
    ca.wait_for("after-c-to-a", 10);
    // Fence every sender to every recipient: a link keeps its order, so once a fence has
    // arrived everything sent before it on that path has too. Then count: nothing twice,
    // nothing from the cut delivered. (The fences carry no body, so they are not counted.)
    let users = [a.clone(), b.clone(), c.clone()];
    let mut clients = [ca, cb, cc];
    for from in 0..3 {
        for to in (0..3).filter(|&to| to != from) {
            let id = format!("fence-{from}-{to}");
            clients[from].send(&format!(
                "<message to='{}@localhost/r' type='chat' id='{id}'><thread>fence</thread></message>",
                users[to]
            ));
            clients[to].wait_for(&format!("id='{id}'"), 10);
        }
    }
    let [ca, cb, cc] = clients;
    for (who, client) in [("a", &ca), ("b", &cb), ("c", &cc)] {
        for (body, n) in bodies(client) {
            assert_eq!(n, 1, "{who} got {body:?} {n} times");
        }
    }
    assert_eq!(bodies(&cc).len(), 32, "c: {:?}", bodies(&cc));
    assert_eq!(
        bodies(&cb).len(),
        20,
        "b got every message from a: {:?}",
        bodies(&cb)
    );
    // And a new login through the master still works, in every namespace.
    farm.all_running();
    let mut again = Raw::from_stream(connect_in(&net.nodes[2].0, slave(0)));
    again.send(common::HEADER);
    again.wait_for("</stream:features>", 5);
    again.send(&common::plain_auth(&c, "pw"));
    let got = again.wait_closed(10);
    assert!(got.contains("see-other-host"), "{got}");
    drop(farm);
}
