//! Issue 15: failover with central data. On a MariaDB-backed farm of three slaves, the owner
//! of a user is killed with -9: once it is marked failed (its port refuses connections) the
//! master sends the user's login to the next slave of its ranking, which serves it — messages
//! both ways reach it there — and when the owner is back, the user is moved back to it
//! (`<see-other-host/>` naming the owner), as a routing change would move it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use common::agents::Agent;
use common::{Raw, TestFarm, plain_auth, wait_metrics, with_central_data, with_metrics};
use jabberfarm_testkit::servers::{self, MariaDb};

/// Three slaves, every node its own process, the data in a database of its own (`name`) in
/// the shared MariaDB (kept running while the test holds it): central data, so failover is on.
fn central_farm(name: &str) -> (TestFarm, Arc<MariaDb>) {
    let (farm, db, _) = central_farm_with_metrics(name);
    (farm, db)
}

/// [`central_farm`], every node serving its metrics: their addresses by node name.
fn central_farm_with_metrics(name: &str) -> (TestFarm, Arc<MariaDb>, HashMap<String, SocketAddr>) {
    let db = servers::shared_mariadb();
    let url = db.create_database(name);
    let metrics: HashMap<String, SocketAddr> = ["master", "slave1", "slave2", "slave3"]
        .iter()
        .map(|n| {
            (
                (*n).to_owned(),
                SocketAddr::from(([127, 0, 0, 1], common::free_port())),
            )
        })
        .collect();
    let farm = TestFarm::start_processes_edited(3, |t| {
        metrics
            .iter()
            .fold(with_central_data(&t, &url), |t, (node, addr)| {
                with_metrics(&t, node, *addr)
            })
    });
    (farm, db, metrics)
}

/// `jabberfarm status` of `farm`: the line of `node`, and every line.
fn status_of(farm: &TestFarm, node: &str) -> (String, String) {
    let (_, text) = farm.admin(&["status"]);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or_default()
        .to_owned();
    (line, text)
}

/// The `HOST:PORT` of a `<see-other-host/>` in `text`.
fn redirect_of(text: &str) -> String {
    let start = text.find("<see-other-host").unwrap();
    let from = start + text[start..].find('>').unwrap() + 1;
    let to = from + text[from..].find('<').unwrap();
    text[from..to].to_owned()
}

#[test]
fn a_failed_slave_s_users_are_served_by_the_next_and_move_back_when_it_returns() {
    let (mut farm, _db, metrics) = central_farm_with_metrics("failover");
    let (x, c) = farm.user_pair("fail", "pw");
    let owner = farm.owner(&x).name.clone();
    let owner_c2s = farm.owner(&x).c2s;
    let mut cc = Raw::login(farm.owner(&c).c2s, &c, "pw", "r");
    cc.send("<presence/>");

    farm.kill_node(&owner);
    farm.wait_log(&format!("{owner} is lost (its farm port refuses"), 10);
    // The master marks it failed from its own link (it probes the port every second).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let to = loop {
        let mut m = Raw::connect(farm.master.c2s);
        m.open();
        m.send(&plain_auth(&x, "pw"));
        let got = m.wait_closed(5);
        if got.contains("see-other-host") {
            break redirect_of(&got);
        }
        assert!(
            got.contains("remote-connection-failed") && std::time::Instant::now() < deadline,
            "{got}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let to: SocketAddr = to.parse().unwrap();
    assert_ne!(to, owner_c2s, "sent to the failed owner");
    wait_metrics(metrics["master"], &["jabberfarm_failovers_total 1"]);
    assert!(
        farm.slaves.iter().any(|s| s.c2s == to),
        "{to} is not a slave"
    );

    let (line, all) = status_of(&farm, &owner);
    assert_eq!(line.split_whitespace().nth(2), Some("failed"), "{all}");
    assert!(
        all.contains("master sees: ") && all.contains(&format!("{owner} failed")),
        "{all}"
    );

    // The next slave takes the login and serves the user: messages both ways.
    let mut cx = Raw::login(to, &x, "pw", "r");
    cx.send("<presence/>");
    cx.sync("localhost");
    cc.send(&format!(
        "<message to='{x}@localhost' type='chat'><body>to-the-fallback</body></message>"
    ));
    cx.wait_for("to-the-fallback", 10);
    cx.send(&format!(
        "<message to='{c}@localhost' type='chat'><body>from-the-fallback</body></message>"
    ));
    cc.wait_for("from-the-fallback", 10);

    // The owner is back: the user is sent home.
    farm.start_node(&owner);
    let moved = cx.wait_for("see-other-host", 20);
    let moved = moved + &cx.wait_for("</see-other-host>", 5);
    assert_eq!(redirect_of(&moved), owner_c2s.to_string(), "{moved}");
    let mut home = Raw::login(owner_c2s, &x, "pw", "r");
    home.send("<presence/>");
    home.sync("localhost");
    cc.send(&format!(
        "<message to='{x}@localhost' type='chat'><body>home-again</body></message>"
    ));
    home.wait_for("home-again", 10);
    let fallback = farm
        .slaves
        .iter()
        .find(|s| s.c2s == to)
        .unwrap()
        .name
        .clone();
    wait_metrics(
        metrics[&fallback],
        &["jabberfarm_sessions_moved_total{reason=\"home\"} 1"],
    );
}

/// `inservice = false` on a slave, with `jabberfarm reload`: its connected users are moved to
/// the next slave of their ranking (at `[rebalance] users_per_second`), new logins go there,
/// and it keeps running; back in service, they are moved home.
#[test]
fn a_slave_taken_out_of_service_sends_its_users_to_the_next_and_gets_them_back() {
    let (farm, _db) = central_farm("inservice");
    let (x, _) = farm.user_pair("maint", "pw");
    let owner = farm.owner(&x).name.clone();
    let owner_c2s = farm.owner(&x).c2s;
    let mut cx = Raw::login(owner_c2s, &x, "pw", "r");
    cx.send("<presence/>");
    cx.sync("localhost");

    let service = |on: bool| {
        let text = std::fs::read_to_string(&farm.config).unwrap();
        let named = format!("name = \"{owner}\"\n");
        let text = if on {
            text.replacen(&format!("{named}inservice = false\n"), &named, 1)
        } else {
            text.replacen(&named, &format!("{named}inservice = false\n"), 1)
        };
        std::fs::write(&farm.config, text).unwrap();
        let (ok, said) = farm.admin(&["reload"]);
        assert!(ok, "{said}");
    };
    service(false);
    let moved = cx.wait_for("see-other-host", 10);
    let moved = moved + &cx.wait_for("</see-other-host>", 5);
    let to: SocketAddr = redirect_of(&moved).parse().unwrap();
    assert_ne!(to, owner_c2s);
    // A new login goes there too, through the master or at the slave out of service.
    for at in [farm.master.c2s, owner_c2s] {
        let mut m = Raw::connect(at);
        m.open();
        m.send(&plain_auth(&x, "pw"));
        let got = m.wait_closed(5);
        assert_eq!(redirect_of(&got), to.to_string(), "{got}");
    }
    let (line, all) = status_of(&farm, &owner);
    assert_eq!(
        line.split_whitespace().nth(2),
        Some("out-of-service"),
        "{all}"
    );
    let mut away = Raw::login(to, &x, "pw", "r");
    away.send("<presence/>");
    away.sync("localhost");

    service(true);
    let home = away.wait_for("see-other-host", 10);
    let home = home + &away.wait_for("</see-other-host>", 5);
    assert_eq!(redirect_of(&home), owner_c2s.to_string(), "{home}");
}

/// Real clients through the master after a failover: Debian's slixmpp (which does not follow
/// `<see-other-host/>`; the master relays it once it comes back) and xmpp.js (which follows
/// it), both users of the killed slave, get in at the next slave of their ranking and chat.
#[test]
fn real_clients_get_in_through_the_master_after_a_failover() {
    let (mut farm, _db) = central_farm("clients");
    let users = farm.users_on("real", "slave2", 2);
    let (x, y) = (users[0].clone(), users[1].clone());
    farm.add_user(&x, "pw");
    farm.add_user(&y, "pw");
    farm.kill_node("slave2");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while status_of(&farm, "slave2").0.split_whitespace().nth(2) != Some("failed") {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            status_of(&farm, "slave2").1
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let master = farm.master.c2s;
    let mut sx = Agent::slixmpp_at(&farm, "slixmpp", &x, "pw", "sx", master, &[]);
    let mut js = Agent::xmppjs(&farm, "xmppjs", &y, "pw", "js");
    farm.wait_log(&format!("failover: the owner is failed user=\"{x}\""), 5);
    farm.wait_log(&format!("failover: the owner is failed user=\"{y}\""), 5);
    sx.chat_both_ways(&mut js);
}

/// Two masters: the first is killed with -9, and real clients log in through the second —
/// Debian's slixmpp (which does not follow `<see-other-host/>`: the second master relays it
/// when it comes back) and xmpp.js (which follows it) — and chat across slaves.
#[test]
fn real_clients_get_in_through_the_second_master_when_the_first_dies() {
    let mut farm = TestFarm::start_processes_masters(2, &[None], |t| t);
    let (x, y) = farm.user_pair("twin", "pw");
    farm.kill_node("master");
    let master2 = farm.more_masters[0].c2s;
    let mut sx = Agent::slixmpp_at(&farm, "slixmpp", &x, "pw", "sx", master2, &[]);
    let mut js = Agent::xmppjs_at(&farm, "xmppjs", &y, "pw", "js", master2, &[]);
    sx.chat_both_ways(&mut js);
    // The second master relayed the one and redirected the other.
    let log = std::fs::read_to_string(farm.dir.path().join("node-master2.log")).unwrap();
    let said = |what: &str, user: &str| {
        log.lines()
            .any(|l| l.contains(what) && l.contains(&format!("user=\"{user}\"")))
    };
    assert!(said("relaying login", &x), "slixmpp not relayed:\n{log}");
    assert!(
        said("redirecting login", &y),
        "xmpp.js not redirected:\n{log}"
    );
}
