//! Test farm: a real `jabberfarm up` process on free loopback ports with a temporary data
//! directory; the raw-socket XMPP client for exact wire assertions comes from the testkit.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod agents;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_jabberfarm");

pub struct Node {
    pub name: String,
    pub c2s: SocketAddr,
    pub c2s_tls: SocketAddr,
}

pub struct TestFarm {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub master: Node,
    pub slaves: Vec<Node>,
    /// Masters after the first (`start_processes_masters`): `master2`, …
    pub more_masters: Vec<Node>,
    child: Option<Child>,
    /// One process per node (`start_processes`), by node name.
    nodes: std::collections::HashMap<String, Child>,
}

/// A port nobody listens on, never the same twice in this process (the OS may hand out a
/// just-released ephemeral port again before the farm binds it).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

fn node(name: &str) -> Node {
    Node {
        name: name.to_owned(),
        c2s: SocketAddr::from(([127, 0, 0, 1], free_port())),
        c2s_tls: SocketAddr::from(([127, 0, 0, 1], free_port())),
    }
}

impl TestFarm {
    /// A master and `slaves` slaves in hash mode; `extra` is appended to the top-level config
    /// (before any table) and `limits` replaces the [limits] table body.
    pub fn start_with(slaves: usize, tls_required: bool, limits: &str) -> TestFarm {
        TestFarm::start_with_mode(slaves, tls_required, limits, true)
    }

    /// A farm whose generated config text is passed through `edit` before it starts.
    pub fn start_edited(slaves: usize, edit: impl Fn(String) -> String) -> TestFarm {
        let mut farm = TestFarm::start_with_mode(
            slaves,
            false,
            "stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2",
            false,
        );
        let text = std::fs::read_to_string(&farm.config).unwrap();
        std::fs::write(&farm.config, edit(text)).unwrap();
        farm.spawn();
        farm
    }

    fn start_with_mode(
        slaves: usize,
        tls_required: bool,
        limits: &str,
        one_process: bool,
    ) -> TestFarm {
        let dir = tempfile::tempdir().unwrap();
        let master = node("master");
        let slaves: Vec<Node> = (1..=slaves).map(|i| node(&format!("slave{i}"))).collect();
        let mut cfg = format!(
            "domain = \"localhost\"\nsecret = \"test-secret\"\n\n[tls]\ngenerate = true\nrequired = {tls_required}\n\n[limits]\n{limits}\n\n[routing]\nmode = \"hash\"\nhash_key = \"000102030405060708090a0b0c0d0e0f\"\n\n[storage]\nscram_iterations = 4096\n\n"
        );
        let mut farm_port = |n: &Node, role: &str| {
            cfg.push_str(&format!(
                "[[node]]\nname = \"{}\"\nrole = \"{role}\"\nc2s = \"{}\"\nc2s_tls = \"{}\"\nfarm = \"127.0.0.1:{}\"\n\n",
                n.name,
                n.c2s,
                n.c2s_tls,
                free_port()
            ));
        };
        farm_port(&master, "master");
        for s in &slaves {
            farm_port(s, "slave");
        }
        let config = dir.path().join("farm.toml");
        std::fs::write(&config, cfg).unwrap();
        let mut farm = TestFarm {
            dir,
            config,
            master,
            slaves,
            more_masters: Vec::new(),
            child: None,
            nodes: Default::default(),
        };
        if one_process {
            farm.spawn();
        }
        farm
    }

    /// Like [`TestFarm::start`], but every node in its own `jabberfarm run --node` process,
    /// so single nodes can be killed and restarted.
    pub fn start_processes(slaves: usize) -> TestFarm {
        TestFarm::start_processes_edited(slaves, |t| t)
    }

    /// A farm whose clients listen on `ip` (farm links stay on 127.0.0.1), the master's c2s on
    /// `master_port` — for clients that reconnect to the standard port 5222 of whatever host
    /// a redirect names, as slixmpp does.
    pub fn start_at(slaves: usize, ip: std::net::Ipv4Addr, master_port: u16) -> TestFarm {
        let mut farm = TestFarm::start_with_mode(
            slaves,
            false,
            "stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2",
            false,
        );
        let mut text = std::fs::read_to_string(&farm.config).unwrap();
        let master_name = farm.master.name.clone();
        for n in std::iter::once(&mut farm.master).chain(farm.slaves.iter_mut()) {
            let c2s_port = if n.name == master_name {
                master_port
            } else {
                n.c2s.port()
            };
            let c2s = SocketAddr::from((ip, c2s_port));
            let c2s_tls = SocketAddr::from((ip, n.c2s_tls.port()));
            text = text
                .replace(&format!("c2s = \"{}\"", n.c2s), &format!("c2s = \"{c2s}\""))
                .replace(
                    &format!("c2s_tls = \"{}\"", n.c2s_tls),
                    &format!("c2s_tls = \"{c2s_tls}\""),
                );
            n.c2s = c2s;
            n.c2s_tls = c2s_tls;
        }
        std::fs::write(&farm.config, text).unwrap();
        farm.spawn();
        farm
    }

    /// [`TestFarm::start_processes`] with the config text passed through `edit` first.
    pub fn start_processes_edited(slaves: usize, edit: impl Fn(String) -> String) -> TestFarm {
        TestFarm::start_processes_masters(slaves, &[], edit)
    }

    /// [`TestFarm::start_processes_edited`] with `s2s.len()` more masters, `master2`, …, each
    /// taking s2s on its address in `s2s` (`None`: no s2s listener).
    pub fn start_processes_masters(
        slaves: usize,
        s2s: &[Option<&str>],
        edit: impl Fn(String) -> String,
    ) -> TestFarm {
        let mut farm = TestFarm::start_with_mode(
            slaves,
            false,
            "stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2",
            false,
        );
        let mut text = std::fs::read_to_string(&farm.config).unwrap();
        for (i, s2s) in s2s.iter().enumerate() {
            let n = node(&format!("master{}", i + 2));
            text.push_str(&format!(
                "[[node]]\nname = \"{}\"\nrole = \"master\"\nc2s = \"{}\"\nc2s_tls = \"{}\"\nfarm = \"127.0.0.1:{}\"\n{}\n",
                n.name,
                n.c2s,
                n.c2s_tls,
                free_port(),
                s2s.map(|a| format!("s2s = \"{a}\"\n")).unwrap_or_default()
            ));
            farm.more_masters.push(n);
        }
        std::fs::write(&farm.config, edit(text)).unwrap();
        let names: Vec<String> = farm.all_nodes().map(|n| n.name.clone()).collect();
        for n in names {
            farm.start_node(&n);
        }
        farm.wait_links_up(Instant::now() + Duration::from_secs(20));
        farm
    }

    /// Every node: the master, the other masters, the slaves.
    pub fn all_nodes(&self) -> impl Iterator<Item = &Node> {
        std::iter::once(&self.master)
            .chain(&self.more_masters)
            .chain(&self.slaves)
    }

    fn node_by_name(&self, name: &str) -> &Node {
        std::iter::once(&self.master)
            .chain(&self.more_masters)
            .chain(&self.slaves)
            .find(|n| n.name == name)
            .unwrap()
    }

    /// Start (or restart) one node's process and wait for its listeners.
    pub fn start_node(&mut self, name: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join(format!("node-{name}.log")))
            .unwrap();
        let child = self.jabberfarm(&["run", "--node", name], log);
        self.nodes.insert(name.to_owned(), child);
        let node = self.node_by_name(name);
        let deadline = Instant::now() + Duration::from_secs(20);
        self.wait_listening(&[node.c2s, node.c2s_tls], deadline, name);
    }

    /// `jabberfarm ARGS --config <ours> --data-dir <ours>`, debug log to `log`.
    fn jabberfarm(&self, args: &[&str], log: std::fs::File) -> Child {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("JABBERFARM_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Wait until every address accepts connections; `what` names it in the failure.
    fn wait_listening(&self, addrs: &[SocketAddr], deadline: Instant, what: &str) {
        for a in addrs {
            while TcpStream::connect_timeout(a, Duration::from_millis(200)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "{what} did not start:\n{}",
                    self.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// A new slave in the config file (`slaveN`, next number, fresh ports), for a farm that
    /// grows; its process is not started.
    pub fn add_slave(&mut self) -> String {
        let n = node(&format!("slave{}", self.slaves.len() + 1));
        let name = n.name.clone();
        let entry = format!(
            "\n[[node]]\nname = \"{name}\"\nrole = \"slave\"\nc2s = \"{}\"\nc2s_tls = \"{}\"\nfarm = \"127.0.0.1:{}\"\n",
            n.c2s,
            n.c2s_tls,
            free_port()
        );
        self.slaves.push(n);
        self.edit_config(|text| {
            // Before any table that follows the nodes, if there is one.
            match text.find("\n[relay]") {
                Some(at) => format!("{}{entry}{}", &text[..at], &text[at..]),
                None => format!("{text}{entry}"),
            }
        });
        name
    }

    /// Wait (at most `secs`) for one node's process to exit on its own; its exit status.
    pub fn wait_node_exit(&mut self, name: &str, secs: u64) -> std::process::ExitStatus {
        let mut child = self.nodes.remove(name).expect("a running node");
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{name} is still running");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of a node started as its own process.
    pub fn pid(&self, name: &str) -> u32 {
        self.nodes[name].id()
    }

    /// Send `signal` (`"HUP"`, …) to one node's process. `"STOP"` returns once every thread
    /// of it is stopped: the signal is queued at once, but a thread running on another core
    /// goes on until it next enters the kernel, and can still take a frame meanwhile.
    pub fn signal_node(&self, name: &str, signal: &str) {
        let child = &self.nodes[name];
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {name}");
        if signal == "STOP" {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !all_threads_stopped(child.id()) {
                assert!(Instant::now() < deadline, "{name} did not stop");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    /// Start (or restart) one node's process with another config file than the farm's.
    pub fn start_node_with_config(&mut self, name: &str, config: &Path) {
        let saved = std::mem::replace(&mut self.config, config.to_owned());
        self.start_node(name);
        self.config = saved;
    }

    /// SIGTERM one node's process and wait (at most 10 s) for it to exit.
    pub fn term_node(&mut self, name: &str) {
        if let Some(mut c) = self.nodes.remove(name) {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait until the farm's log contains `needle` (at most `secs`).
    pub fn wait_log(&self, needle: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "the farm never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL one node's process.
    pub fn kill_node(&mut self, name: &str) {
        if let Some(mut c) = self.nodes.remove(name) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Like [`TestFarm::start`] (one process, TLS offered), with `storage` as the body of the
    /// `[storage]` table instead of the default SQLite; sub-tables (`[storage.mysql]`,
    /// `[storage.ldap]`) may follow in it.
    pub fn start_with_storage(slaves: usize, storage: &str) -> TestFarm {
        let mut farm = TestFarm::start_with_mode(
            slaves,
            false,
            "stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2",
            false,
        );
        farm.edit_config(|text| {
            let default = "[storage]\nscram_iterations = 4096\n\n";
            assert!(text.contains(default), "{text}");
            text.replacen(default, &format!("[storage]\n{storage}\n\n"), 1)
        });
        farm.spawn();
        farm
    }

    /// Rewrites the config file (the farm reads it at its next start).
    pub fn edit_config(&mut self, edit: impl FnOnce(&str) -> String) {
        let text = std::fs::read_to_string(&self.config).unwrap();
        std::fs::write(&self.config, edit(&text)).unwrap();
    }

    /// Stops the farm (SIGTERM), applies `edit` to its config and starts it again on the same
    /// ports and data dir. The earlier log is kept as `farm.log.before-restart` (not a `.log`,
    /// so that waiting for the new farm's links never matches the old lines).
    pub fn restart_with_config(&mut self, edit: impl FnOnce(&str) -> String) {
        self.stop();
        let log = self.dir.path().join("farm.log");
        let _ = std::fs::rename(&log, self.dir.path().join("farm.log.before-restart"));
        self.edit_config(edit);
        self.spawn();
    }

    pub fn start(slaves: usize) -> TestFarm {
        TestFarm::start_with(
            slaves,
            false,
            "stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2",
        )
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn ca(&self) -> PathBuf {
        self.data_dir().join("tls").join("ca.pem")
    }

    fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("farm.log")).unwrap();
        let child = self.jabberfarm(&["up"], log);
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        let addrs: Vec<SocketAddr> = std::iter::once(&self.master)
            .chain(&self.slaves)
            .flat_map(|n| [n.c2s, n.c2s_tls])
            .collect();
        self.wait_listening(&addrs, deadline, "farm");
        self.wait_links_up(deadline);
    }

    /// Every node's farm links are up (the log names each pair).
    pub fn wait_links_up(&self, deadline: Instant) {
        let mut names: Vec<&str> = self.all_nodes().map(|n| n.name.as_str()).collect();
        names.sort();
        let mut pairs = Vec::new();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                pairs.push(format!("farm link {a} <-> {b} up"));
            }
        }
        loop {
            let log = self.log();
            if pairs.iter().all(|p| log.contains(p.as_str())) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "farm links did not come up:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the farm logged (one file per process).
    pub fn log(&self) -> String {
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        names.retain(|p: &PathBuf| p.extension().is_some_and(|e| e == "log"));
        names.sort();
        names
            .iter()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// `jabberfarm <args> --config <ours>`, and `--data-dir <ours>` with `data_dir`.
    fn jabberfarm_cli(&self, args: &[&str], data_dir: bool) -> std::process::Output {
        let mut cmd = Command::new(BIN);
        cmd.args(args).arg("--config").arg(&self.config);
        if data_dir {
            cmd.arg("--data-dir").arg(self.data_dir());
        }
        cmd.output().unwrap()
    }

    /// `jabberfarm <args> --config <ours>` (the admin commands: status, reload, drain, …):
    /// whether it succeeded, and what it printed (stdout, then stderr).
    pub fn admin(&self, args: &[&str]) -> (bool, String) {
        both(self.jabberfarm_cli(args, false))
    }

    /// `jabberfarm <args> --config <ours> --data-dir <ours>` (user and store commands):
    /// whether it succeeded, and what it printed (stdout, then stderr).
    pub fn try_cli(&self, args: &[&str]) -> (bool, String) {
        both(self.jabberfarm_cli(args, true))
    }

    /// `jabberfarm <args> --config <ours> --data-dir <ours>`; returns stdout, panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = self.jabberfarm_cli(args, true);
        assert!(
            out.status.success(),
            "jabberfarm {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn add_user(&self, name: &str, password: &str) {
        self.cli(&["user", "add", name, "--password", password]);
    }

    /// The slave that owns `user`, per `jabberfarm route`.
    pub fn owner(&self, user: &str) -> &Node {
        let out = Command::new(BIN)
            .args(["route", "--config"])
            .arg(&self.config)
            .arg(user)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let name = text.split('\t').nth(1).unwrap().trim().to_owned();
        self.slaves.iter().find(|s| s.name == name).unwrap()
    }

    /// A slave that does not own `user`.
    pub fn other_slave(&self, user: &str) -> &Node {
        let owner = self.owner(user).name.clone();
        self.slaves.iter().find(|s| s.name != owner).unwrap()
    }

    /// Usernames `prefix0..` until each slave owns at least `per_slave` of them.
    pub fn users_on_every_slave(&self, prefix: &str, per_slave: usize) -> Vec<(String, String)> {
        let mut out = Vec::new();
        let mut count = std::collections::HashMap::<String, usize>::new();
        let mut i = 0;
        while self
            .slaves
            .iter()
            .any(|s| count.get(&s.name).copied().unwrap_or(0) < per_slave)
        {
            let u = format!("{prefix}{i}");
            let o = self.owner(&u).name.clone();
            if count.get(&o).copied().unwrap_or(0) < per_slave {
                *count.entry(o.clone()).or_default() += 1;
                out.push((u, o));
            }
            i += 1;
        }
        out
    }

    /// The first `n` usernames `prefix0..` that `slave` owns (no accounts made).
    pub fn users_on(&self, prefix: &str, slave: &str, n: usize) -> Vec<String> {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .filter(|u| self.owner(u).name == slave)
            .take(n)
            .collect()
    }

    /// Two users named `{prefix}N`, the first on slave1 and the second on slave2, with
    /// accounts (password `password`).
    pub fn user_pair(&self, prefix: &str, password: &str) -> (String, String) {
        let users = self.users_on_every_slave(prefix, 1);
        let on = |slave: &str| {
            users
                .iter()
                .find(|(_, o)| o == slave)
                .map(|(u, _)| u.clone())
                .unwrap_or_else(|| panic!("no user of {slave}"))
        };
        let (a, b) = (on("slave1"), on("slave2"));
        self.add_user(&a, password);
        self.add_user(&b, password);
        (a, b)
    }

    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return child.wait().ok();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TestFarm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (_, mut c) in self.nodes.drain() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The raw test client and its helpers live in the testkit, shared with the store tests and
/// the benchmark.
#[allow(unused_imports)] // each test binary uses some of them
pub use jabberfarm_testkit::{HEADER, Raw, plain_auth};

/// The test farms' routing table (hash mode), to replace with another.
pub const HASH_ROUTING: &str = "mode = \"hash\"\nhash_key = \"000102030405060708090a0b0c0d0e0f\"\n";

/// The `[storage]` body of a farm whose data is in MySQL at `url` (a database of the shared
/// A command's success and its output, stdout then stderr.
fn both(out: std::process::Output) -> (bool, String) {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// MariaDB).
pub fn mysql_storage(url: &str) -> String {
    format!("backend = \"mysql\"\n[storage.mysql]\nurl = \"{url}\"\nmax_connections = 4\n")
}

/// A test farm's config text with its data in MySQL at `url`: central data, so users can be
/// served by any slave (failover, drain, moves without data).
pub fn with_central_data(text: &str, url: &str) -> String {
    let default = "[storage]\nscram_iterations = 4096\n";
    assert!(text.contains(default), "{text}");
    text.replacen(default, &format!("[storage]\n{}", mysql_storage(url)), 1)
}

/// A test farm's config text with `node` serving its metrics and health at `addr`.
pub fn with_metrics(text: &str, node: &str, addr: SocketAddr) -> String {
    let named = format!("name = \"{node}\"\n");
    assert!(text.contains(&named), "no node {node}: {text}");
    text.replacen(&named, &format!("{named}metrics = \"{addr}\"\n"), 1)
}

/// Whether every thread of process `pid` is stopped (state `T` in /proc; Linux).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.filter_map(|t| t.ok()).all(|t| {
        std::fs::read_to_string(t.path().join("stat")).is_ok_and(|stat| {
            // The state follows the command name, which is in parentheses.
            stat.rsplit_once(") ")
                .and_then(|(_, rest)| rest.chars().next())
                .is_some_and(|state| state == 'T' || state == 't')
        })
    })
}

/// `METHOD path` at `addr` over plain HTTP (a node's metrics and health): the status code
/// and the body.
pub fn http(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Waits (at most 10 s) until every line of `want` is a line of `addr`'s `/metrics`.
pub fn wait_metrics(addr: SocketAddr, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, text) = http(addr, "GET", "/metrics");
        if want.iter().all(|w| text.lines().any(|l| l == *w)) {
            return;
        }
        assert!(Instant::now() < deadline, "{want:?} not all in {text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Every one of `bodies` is in `got` as a message body exactly once, in this order.
pub fn each_once_in_order(got: &str, bodies: impl IntoIterator<Item = String>) {
    let mut after = 0;
    for body in bodies {
        let tag = format!(">{body}<");
        assert_eq!(got.matches(&tag).count(), 1, "{body}: {got}");
        let at = got.find(&tag).unwrap_or_default();
        assert!(at >= after, "{body} out of order: {got}");
        after = at;
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
