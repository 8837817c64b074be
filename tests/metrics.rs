//! Issue 15: every node serves Prometheus metrics and a health endpoint on the address its
//! `[[node]]` sets (`metrics`), read here with plain HTTP GETs as a scraper or a load balancer
//! would: logins, sessions, links and a lost slave show in the figures; a master with no slave
//! reachable says so on `/health`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{Raw, TestFarm, free_port, http, plain_auth, with_metrics};

/// The sample `name` (with its labels, as written) in `addr`'s metrics.
fn sample(addr: SocketAddr, name: &str) -> Option<f64> {
    let (status, body) = http(addr, "GET", "/metrics");
    assert_eq!(status, 200, "{body}");
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Waits (at most 10 s) until `name` at `addr` is `want`.
fn wait_sample(addr: SocketAddr, name: &str, want: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = sample(addr, name);
        if got == Some(want) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} at {addr} is {got:?}, not {want}:\n{}",
            http(addr, "GET", "/metrics").1
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_and_health_show_logins_sessions_links_and_a_lost_slave() {
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let addr = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let mut farm = TestFarm::start_processes_edited(2, |t| {
        ["master", "slave1", "slave2"]
            .iter()
            .enumerate()
            .fold(t, |t, (i, name)| with_metrics(&t, name, addr(i)))
    });
    let (master, s1, s2) = (addr(0), addr(1), addr(2));

    // A master with both slaves linked is healthy, and says what it is.
    assert_eq!(http(master, "GET", "/health"), (200, "ok\n".to_owned()));
    let (_, text) = http(master, "GET", "/metrics");
    assert!(
        text.contains("jabberfarm_node_info{node=\"master\",role=\"master\""),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    wait_sample(master, "jabberfarm_link_up{peer=\"slave1\"}", 1.0);
    wait_sample(master, "jabberfarm_link_up{peer=\"slave2\"}", 1.0);
    assert_eq!(sample(master, "jabberfarm_topology_epoch"), Some(0.0));
    assert_eq!(http(master, "GET", "/nothing").0, 404);
    assert_eq!(http(master, "POST", "/metrics").0, 405);

    // A login through the master is a redirect there and a login at the slave.
    let (a, _) = farm.user_pair("seen", "pw");
    let owner = farm.owner(&a).name.clone();
    let at = if owner == "slave1" { s1 } else { s2 };
    let mut m = Raw::connect(farm.master.c2s);
    m.open();
    m.send(&plain_auth(&a, "pw"));
    m.wait_for("see-other-host", 5);
    wait_sample(master, "c2s_logins_total{route=\"redirect\"}", 1.0);
    assert_eq!(sample(at, "sm_node_sessions"), Some(0.0));
    let _ca = Raw::login(farm.owner(&a).c2s, &a, "pw", "r");
    wait_sample(at, "c2s_logins_total{route=\"here\"}", 1.0);
    wait_sample(at, "sm_node_sessions", 1.0);
    wait_sample(at, "sm_unique_sessions", 1.0);
    let mut wrong = Raw::connect(farm.owner(&a).c2s);
    wrong.open();
    wrong.send(&plain_auth(&a, "not-the-password"));
    wrong.wait_for("not-authorized", 5);
    wait_sample(at, "c2s_auth_failed_total", 1.0);

    // A slave killed: its link goes down and it is counted lost; the master still has one.
    farm.kill_node("slave2");
    wait_sample(master, "jabberfarm_link_up{peer=\"slave2\"}", 0.0);
    wait_sample(master, "jabberfarm_link_lost_total{peer=\"slave2\"}", 1.0);
    assert_eq!(http(master, "GET", "/health").0, 200);
    // Both gone: the master can serve nobody, and says so.
    farm.kill_node("slave1");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = http(master, "GET", "/health");
        if status == 503 {
            assert_eq!(body, "no slave is reachable\n");
            break;
        }
        assert!(Instant::now() < deadline, "{status} {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
