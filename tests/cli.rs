//! The command line as an operator uses it: check, route, user.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_jabberfarm");

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_accepts_the_demo_config() {
    let (ok, out, err) = run(&["check", "--config", "conf/farm.toml"]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("ok") && out.contains("fingerprint"), "{out}");
}

#[test]
fn check_reports_every_mistake_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(
        &cfg,
        r#"
domain = "example.net"
secret = ""
[tls]
cert = "/nonexistent/cert.pem"
key = "/nonexistent/key.pem"
generate = false
[routing]
mode = "ranges"
other = "slave2"
[[routing.ranges]]
letters = "a-g"
node = "slave1"
[[routing.ranges]]
letters = "k-z"
node = "slave9"
[[node]]
name = "master"
role = "master"
c2s = "127.0.0.1:5222"
farm = "127.0.0.1:7100"
[[node]]
name = "slave1"
role = "slave"
c2s = "127.0.0.1:5222"
farm = "127.0.0.1:7101"
[[node]]
name = "slave2"
role = "slave"
c2s = "127.0.0.1:5422"
farm = "127.0.0.1:7102"
"#,
    )
    .unwrap();
    let (ok, out, err) = run(&["check", "--config", cfg.to_str().unwrap()]);
    assert!(!ok, "a broken config must fail the check");
    let all = format!("{out}{err}");
    for fragment in [
        "secret",         // empty secret
        "h..j",           // the gap between the ranges
        "slave9",         // a range naming an unknown node
        "127.0.0.1:5222", // two nodes on one address
        "cert",           // missing certificate
    ] {
        assert!(all.contains(fragment), "missing {fragment:?} in:\n{all}");
    }
}

#[test]
fn route_prints_the_owner_of_each_user() {
    let (ok, out, err) = run(&[
        "route",
        "--config",
        "conf/farm.toml",
        "alice",
        "Bob@localhost",
    ]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    for l in lines {
        let node = l.split('\t').nth(1).unwrap();
        assert!(node == "slave1" || node == "slave2", "{l}");
    }
    // Case does not matter: the localpart is normalised first.
    let (_, a, _) = run(&["route", "--config", "conf/farm.toml", "bob"]);
    let (_, b, _) = run(&["route", "--config", "conf/farm.toml", "BOB"]);
    assert_eq!(a.split('\t').nth(1), b.split('\t').nth(1));
    let (ok, _, err) = run(&["route", "--config", "conf/farm.toml", "x@example.org"]);
    assert!(!ok && err.contains("not in this farm's domain"), "{err}");
}

#[test]
fn user_add_list_passwd_del() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let base = ["--config", "conf/farm.toml", "--data-dir", data];
    let with = |extra: &[&str]| {
        let mut v: Vec<&str> = extra.to_vec();
        v.extend_from_slice(&base);
        run(&v)
    };
    let (ok, out, err) = with(&["user", "add", "alice@localhost", "--password", "pw1"]);
    assert!(ok && out.contains("added"), "{out}{err}");
    let (ok, _, err) = with(&["user", "add", "alice", "--password", "pw1"]);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, out, _) = with(&["user", "list"]);
    assert!(ok && out.contains("alice@localhost"), "{out}");
    let (ok, out, err) = with(&["user", "passwd", "alice", "--password", "pw2"]);
    assert!(ok && out.contains("password changed"), "{out}{err}");
    let (ok, out, err) = with(&["user", "del", "alice"]);
    assert!(ok && out.contains("deleted"), "{out}{err}");
    let (ok, out, _) = with(&["user", "list"]);
    assert!(ok && !out.contains("alice"), "{out}");
    // No password stored in clear anywhere in the data dir.
    with(&["user", "add", "bob", "--password", "very-secret-password"]);
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            assert!(
                !bytes
                    .windows(b"very-secret-password".len())
                    .any(|w| w == b"very-secret-password"),
                "{} holds the password",
                p.display()
            );
        }
    }
}

#[test]
fn a_node_warns_when_max_connections_exceeds_the_open_files_limit() {
    // A node needs a file per connection. A master that relays needs no more: the clients
    // it relays to a slave share one connection to it.
    for node in ["slave1", "master"] {
        let line = open_files_warning(node);
        assert!(
            line.contains("18000")
                && line.contains("only 300 files")
                && line.contains("LimitNOFILE=18256"),
            "{node}: {line}"
        );
        assert!(!line.contains("relay.max_sessions"), "{node}: {line}");
    }
}

/// The warning `jabberfarm run --node NODE` of the demo config logs with `ulimit -n 300`.
fn open_files_warning(node: &str) -> String {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    // The demo config allows 18,000 connections per node; this process may open 300 files.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 300 && exec {BIN} run --config conf/farm.toml --node {node} --data-dir {}",
            dir.path().display()
        ))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut seen = Vec::new();
    let found = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("max_connections") => break Some(line),
            Ok(line) => seen.push(line),
            Err(_) => break None,
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    found.unwrap_or_else(|| panic!("no warning; stderr was:\n{}", seen.join("\n")))
}
