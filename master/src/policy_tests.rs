//! The master's login policy ([`Redirector`]) against a real farm link to a slave's link
//! endpoint, in process: redirect, relay by mode, and a slave that is down.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use jabberfarm_config::{FarmConfig, RedirectMode, SharedTopology};
use jabberfarm_net::c2s::{LoginPolicy, LoginRoute};
use jabberfarm_net::farm::{FarmLinks, LinkEvent};
use jabberfarm_net::relay::RelayReason;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Redirector, relay};

/// A master and one slave whose farm ports are `master` and `slave`.
fn farm(master: SocketAddr, slave: SocketAddr) -> FarmConfig {
    let text = format!(
        r#"
domain = "localhost"
secret = "s3cret"
[tls]
generate = true
[routing]
mode = "hash"
hash_key = "000102030405060708090a0b0c0d0e0f"
[[node]]
name = "master"
role = "master"
c2s = "127.0.0.1:15222"
farm = "{master}"
[[node]]
name = "slave1"
role = "slave"
c2s = "127.0.0.1:15322"
c2s_tls = "127.0.0.1:15323"
advertise = "slave1.example.net:5222"
farm = "{slave}"
"#
    );
    FarmConfig::from_str(
        &text,
        Path::new("policy-test.toml"),
        Some(Path::new("/nonexistent")),
    )
    .unwrap_or_else(|e| panic!("the test config: {e}"))
}

fn redirector(cfg: &FarmConfig, links: Arc<FarmLinks>, mode: RedirectMode) -> Redirector {
    let mut relay = cfg.relay.clone();
    relay.redirect = mode;
    Redirector {
        topology: SharedTopology::new(cfg.topology()),
        relay,
        me: "master".into(),
        links,
        memory: relay::RelayMemory::new(Duration::from_secs(600), Duration::from_secs(3600), 100),
        failovers: Default::default(),
    }
}

fn describe(r: &LoginRoute) -> String {
    match r {
        LoginRoute::Here => "here".into(),
        LoginRoute::Redirect(a) => format!("redirect {a}"),
        LoginRoute::Unavailable(t) => format!("unavailable: {t}"),
        LoginRoute::Relay { node, reason } => format!("relay to {node} ({reason:?})"),
    }
}

#[tokio::test]
async fn redirect_relay_and_a_slave_that_is_down() {
    let (ml, sl) = (
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let addrs = |l: &TcpListener| l.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let cfg = farm(addrs(&ml), addrs(&sl));
    let topology = SharedTopology::new(cfg.topology());
    let (master_links, mut events) = FarmLinks::new(&cfg, &topology, "master", None);
    let (slave_links, _slave_events) = FarmLinks::new(&cfg, &topology, "slave1", None);
    let (tracker, stop_master, stop_slave) = (
        TaskTracker::new(),
        CancellationToken::new(),
        CancellationToken::new(),
    );
    master_links.start(ml, stop_master.clone(), &tracker);

    // Before the slave's link is up, its users are told it is unreachable, by name.
    let policy = redirector(&cfg, master_links.clone(), RedirectMode::Always);
    let route = policy.route("juliet", false);
    assert!(
        matches!(&route, LoginRoute::Unavailable(t) if t.contains("slave1")),
        "{}",
        describe(&route)
    );

    slave_links.start(sl, stop_slave.clone(), &tracker);
    let up = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(ev) = events.recv().await {
            if matches!(ev, LinkEvent::Up(ref n) if n == "slave1") {
                return;
            }
        }
    });
    up.await
        .unwrap_or_else(|_| panic!("the link to slave1 did not come up"));

    // always: the advertised address, or the direct-TLS port for a direct-TLS client.
    let route = policy.route("juliet", false);
    assert_eq!(describe(&route), "redirect slave1.example.net:5222");
    let route = policy.route("juliet", true);
    assert_eq!(describe(&route), "redirect slave1.example.net:15323");

    // never: every login relayed to its owner.
    let never = redirector(&cfg, master_links.clone(), RedirectMode::Never);
    assert_eq!(
        describe(&never.route("juliet", false)),
        "relay to slave1 (Never)"
    );

    // auto: redirected first; back without having logged in at the slave: relayed.
    let auto = redirector(&cfg, master_links.clone(), RedirectMode::Auto);
    assert_eq!(
        describe(&auto.route("juliet", false)),
        "redirect slave1.example.net:5222"
    );
    assert_eq!(
        describe(&auto.route("juliet", false)),
        format!("relay to slave1 ({:?})", RelayReason::CameBack)
    );

    // The slave goes away: its users are told so again.
    stop_slave.cancel();
    let down = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(ev) = events.recv().await {
            if matches!(ev, LinkEvent::Down(ref n) if n == "slave1") {
                return;
            }
        }
    });
    down.await
        .unwrap_or_else(|_| panic!("the link to slave1 was not seen going down"));
    assert!(matches!(
        policy.route("juliet", false),
        LoginRoute::Unavailable(_)
    ));
    stop_master.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await;
}
