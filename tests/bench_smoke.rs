//! The load generator works: tiny runs of every `jabberfarm-bench` scenario against a test
//! farm, checking that each completes without errors and writes the JSON fields the
//! benchmark docs rely on. Never how fast: speed belongs to `docs/benchmarks.md`.
//!
//! The bench binary lives in another package of the workspace, so `CARGO_BIN_EXE_` does not
//! name it; the test asks cargo to build it (a no-op when it is fresh) and takes the path from
//! cargo's own build messages.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{TestFarm, path_str};

/// Build `jabberfarm-bench` and return its path.
fn bench_bin() -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "-p",
            "jabberfarm-bench",
            "--bin",
            "jabberfarm-bench",
            "--message-format=json-render-diagnostics",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "building jabberfarm-bench failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let line = stdout
        .lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .find(|l| l.contains("\"executable\":") && l.contains("jabberfarm-bench"))
        .expect("cargo named no jabberfarm-bench executable");
    let start = line.find("\"executable\":\"").unwrap() + "\"executable\":\"".len();
    let end = start + line[start..].find('"').unwrap();
    PathBuf::from(&line[start..end])
}

/// The pid of the farm process: the one whose command line names this farm's config.
fn farm_pid(farm: &TestFarm) -> u32 {
    let config = path_str(&farm.config).to_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        if args.contains(&&b"up"[..]) && args.contains(&config.as_bytes()) {
            return pid;
        }
    }
    panic!("no process runs {config}");
}

/// The first number after `"key":` in pretty-printed JSON.
fn num(json: &str, key: &str) -> f64 {
    let pat = format!("\"{key}\":");
    let at = json
        .find(&pat)
        .unwrap_or_else(|| panic!("no {key} in {json}"));
    let rest = json[at + pat.len()..].trim_start();
    let end = rest.find([',', '\n', '}']).unwrap_or(rest.len());
    rest[..end]
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

struct Bench {
    bin: PathBuf,
    dir: PathBuf,
}

impl Bench {
    /// Run a scenario with `--json`; returns the JSON after checking the exit status.
    fn run(&self, name: &str, args: &[&str]) -> String {
        let json = self.dir.join(format!("{name}.json"));
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--json")
            .arg(&json)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "jabberfarm-bench {args:?}:\n{text}");
        assert!(text.contains("== "), "no table printed:\n{text}");
        std::fs::read_to_string(&json).unwrap()
    }
}

fn port(a: std::net::SocketAddr) -> String {
    a.port().to_string()
}

#[test]
fn every_scenario_runs_against_a_test_farm() {
    let bin = bench_bin();
    // The redirect scenario logs the same users in again and again without following:
    // `auto` would relay them from the second time on.
    let farm = TestFarm::start_edited(2, |t| format!("{t}\n[relay]\nredirect = \"always\"\n"));
    for i in 0..6 {
        farm.add_user(&format!("smoke{i}"), "pw");
    }
    let pid = farm_pid(&farm).to_string();
    let ca = farm.ca();
    let b = Bench {
        bin,
        dir: farm.dir.path().to_owned(),
    };
    let master = port(farm.master.c2s);
    let common = [
        "--port",
        &master,
        "--users",
        "smoke{n}",
        "--user-count",
        "6",
        "--password",
        "pw",
        "--server-pid",
        &pid,
    ];
    // Runs end at their count; the time bound is only a backstop for a slow machine.
    let with = |scenario: &str, extra: &[&str]| -> Vec<String> {
        let backstop: &[&str] = if extra.contains(&"--duration") {
            &[]
        } else {
            &["--duration", "300"]
        };
        std::iter::once(scenario)
            .chain(common.iter().copied())
            .chain(backstop.iter().copied())
            .chain(extra.iter().copied())
            .map(str::to_owned)
            .collect()
    };
    let run = |name: &str, args: Vec<String>| {
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        b.run(name, &a)
    };
    let tls = ["--tls", "starttls", "--ca", path_str(&ca)];

    // Redirects, plain and after STARTTLS: every one counted, with latency and server CPU.
    for (name, extra) in [("redirect", &[][..]), ("redirect-tls", &tls[..])] {
        let mut args = vec!["--count", "20", "--concurrency", "4"];
        args.extend_from_slice(extra);
        let j = run(name, with("redirect", &args));
        assert_eq!(num(&j, "completed"), 20.0, "{j}");
        assert_eq!(num(&j, "errors"), 0.0, "{j}");
        assert!(num(&j, "p50_us") > 0.0, "{j}");
        assert!(num(&j, "cpu_us_per_op") >= 0.0, "{j}");
    }

    // Full logins with SCRAM over STARTTLS, following the master's redirects.
    let mut args = vec![
        "--count",
        "12",
        "--concurrency",
        "3",
        "--mechanism",
        "SCRAM-SHA-256",
        "--follow-redirects",
        "--no-pre-route",
    ];
    args.extend_from_slice(&tls);
    let j = run("login", with("login", &args));
    assert_eq!(num(&j, "completed"), 12.0, "{j}");
    assert_eq!(num(&j, "errors"), 0.0, "{j}");
    assert!(num(&j, "cpu_ms_per_1000_logins") >= 0.0, "{j}");

    // Idle sessions: memory figures from the server's /proc entry.
    let j = run(
        "idle",
        with(
            "idle",
            &["--count", "6", "--hold", "1", "--follow-redirects"],
        ),
    );
    assert_eq!(num(&j, "sessions"), 6.0, "{j}");
    assert!(num(&j, "rss_after_kib") > 0.0, "{j}");
    num(&j, "kib_per_session");

    // Chat, closed loop and open loop, on one slave; then across slaves (farm links).
    for (name, extra) in [
        ("chat-closed", &["--count", "200"][..]),
        ("chat-open", &["--rate", "50", "--duration", "2"][..]),
        ("chat-across", &["--count", "50", "--across"][..]),
    ] {
        let mut args = vec!["--pairs", "1", "--follow-redirects"];
        args.extend_from_slice(extra);
        let j = run(name, with("chat", &args));
        assert_eq!(num(&j, "errors"), 0.0, "{j}");
        let (sent, delivered) = (num(&j, "sent"), num(&j, "delivered"));
        assert!(delivered > 0.0 && delivered <= sent, "{j}");
        assert!(num(&j, "cpu_s_per_100k_messages") >= 0.0, "{j}");
    }

    // Off loopback is refused before any connection is made.
    let out = Command::new(&b.bin)
        .args(["redirect", "--host", "192.0.2.1", "--count", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only loads servers on loopback"),
        "{out:?}"
    );
}

/// Kills the floor server when the test ends, however it ends.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_tcp_floor_runs() {
    let bin = bench_bin();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let listen = format!("127.0.0.1:{port}");
    let server = Reap(
        Command::new(&bin)
            .args(["floor-server", "--listen", &listen, "--duration", "120"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(&listen).is_err() {
        assert!(Instant::now() < deadline, "floor-server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dir = tempfile::tempdir().unwrap();
    let b = Bench {
        bin,
        dir: dir.path().to_owned(),
    };
    let pid = server.0.id().to_string();
    let j = b.run(
        "floor",
        &[
            "floor",
            "--port",
            &port,
            "--count",
            "50",
            "--concurrency",
            "5",
            "--server-pid",
            &pid,
        ],
    );
    assert_eq!(num(&j, "completed"), 50.0, "{j}");
    assert_eq!(num(&j, "errors"), 0.0, "{j}");
    assert!(num(&j, "cpu_us_per_op") >= 0.0, "{j}");
    assert!(Path::new(&b.dir).join("floor.json").exists());
}

/// A farm for `domain` whose master accepts s2s on `s2s_port` and that reaches `peer` (the
/// other farm's domain) at `peer_port` through a static route: two farms federate on loopback
/// without DNS.
fn federating_farm(domain: &str, s2s_port: u16, peer: &str, peer_port: u16) -> TestFarm {
    let farm = TestFarm::start_edited(1, |text| {
        text.replace("domain = \"localhost\"", &format!("domain = \"{domain}\""))
            .replace(
                "name = \"master\"\nrole = \"master\"\n",
                &format!("name = \"master\"\nrole = \"master\"\ns2s = \"127.0.0.1:{s2s_port}\"\n"),
            )
            + &format!(
                "\n[s2s]\nconnect_timeout = 5\n\n[s2s.routes]\n\"{peer}\" = \"127.0.0.1:{peer_port}\"\n"
            )
    });
    for i in 0..2 {
        farm.add_user(&format!("fed{i}"), "pw");
    }
    farm
}

#[test]
fn chat_through_federation_and_idle_released_by_signal() {
    let bin = bench_bin();
    let (pa, pb) = (common::free_port(), common::free_port());
    let a = federating_farm("a.test", pa, "b.test", pb);
    let b = federating_farm("b.test", pb, "a.test", pa);
    let bench = Bench {
        bin: bin.clone(),
        dir: a.dir.path().to_owned(),
    };
    let pid = farm_pid(&a).to_string();
    let (ma, mb) = (port(a.master.c2s), port(b.master.c2s));
    let user_args = ["--users", "fed{n}", "--user-count", "2", "--password", "pw"];
    // Each pair: a user of a.test and one of b.test; every message crosses s2s both ways.
    let mut args = vec![
        "chat",
        "--port",
        &ma,
        "--domain",
        "a.test",
        "--follow-redirects",
        "--pairs",
        "2",
        "--count",
        "100",
        "--duration",
        "120",
        "--server-pid",
        &pid,
        "--peer-host",
        "127.0.0.1",
        "--peer-port",
        &mb,
        "--peer-domain",
        "b.test",
        "--peer-users",
        "fed{n}",
    ];
    args.extend_from_slice(&user_args);
    let j = bench.run("chat-federated", &args);
    assert!(j.contains("\"pairing\": \"federated\""), "{j}");
    assert_eq!(num(&j, "errors"), 0.0, "{j}");
    assert_eq!(num(&j, "delivered"), num(&j, "sent"), "{j}");
    assert!(num(&j, "delivered") >= 100.0, "{j}");

    // idle --ready-file: the file says how many sessions are open; SIGUSR1 ends the hold.
    let ready = a.dir.path().join("ready");
    let json = a.dir.path().join("idle.json");
    let mut child = Reap(
        Command::new(&bin)
            .args([
                "idle",
                "--port",
                &ma,
                "--domain",
                "a.test",
                "--follow-redirects",
            ])
            .args(user_args)
            .args([
                "--count",
                "2",
                "--hold",
                "120",
                "--duration",
                "60",
                "--ready-file",
            ])
            .arg(&ready)
            .arg("--json")
            .arg(&json)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read_to_string(&ready).map_or(true, |s| s.trim().is_empty()) {
        assert!(Instant::now() < deadline, "no ready file");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_to_string(&ready).unwrap().trim(), "2");
    let st = Command::new("kill")
        .args(["-USR1", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "SIGUSR1 did not end the hold");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success());
    let j = std::fs::read_to_string(&json).unwrap();
    assert_eq!(num(&j, "released_by_signal"), 1.0, "{j}");
    assert_eq!(num(&j, "still_open_after_hold"), 2.0, "{j}");
}
