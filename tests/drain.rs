//! Issue 15: draining a slave for maintenance. On a MariaDB-backed farm of three slaves,
//! `jabberfarm drain slave2 --over 3s --wait` under load: every session of slave2 is closed with
//! `<see-other-host/>` naming the next slave of its user's ranking — none cut without being
//! moved — spread over the window, the users log in there and get every message sent to them
//! meanwhile, each once; `status` and `/health` say drained, the metrics count the moves; a
//! master restart keeps the drain; `undrain` sends the users home. SIGTERM at a slave drains it
//! before it stops. A farm with data on the slaves refuses to drain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::agents::Agent;
use common::{
    HASH_ROUTING, Raw, TestFarm, free_port, http, plain_auth, with_central_data, with_metrics,
};
use jabberfarm_testkit::servers::{self, MariaDb};

/// Three slaves, each node its own process with its metrics on `ports` (master, slave1..3),
/// the data in database `name` of the shared MariaDB (kept running while the test holds it).
fn central_farm(name: &str, ports: &[u16]) -> (TestFarm, Arc<MariaDb>) {
    central_farm_routed(name, ports, None)
}

/// [`central_farm`] with `routing` as the body of `[routing]` (else hash mode).
fn central_farm_routed(
    name: &str,
    ports: &[u16],
    routing: Option<&str>,
) -> (TestFarm, Arc<MariaDb>) {
    let db = servers::shared_mariadb();
    let url = db.create_database(name);
    let farm = TestFarm::start_processes_edited(3, |t| {
        let mut t = with_central_data(&t, &url);
        if let Some(routing) = routing {
            t = t.replacen(HASH_ROUTING, routing, 1);
        }
        for (node, port) in ["master", "slave1", "slave2", "slave3"].iter().zip(ports) {
            t = with_metrics(&t, node, SocketAddr::from(([127, 0, 0, 1], *port)));
        }
        t
    });
    (farm, db)
}

/// `jabberfarm ARGS --config <farm's>`: exit success, and what it printed.
fn cli(farm: &TestFarm, args: &[&str]) -> (bool, String) {
    farm.admin(args)
}

/// The state column of `node` in `jabberfarm status`, and the whole table.
fn state_of(farm: &TestFarm, node: &str) -> (String, String) {
    let (_, text) = cli(farm, &["status"]);
    let state = text
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_default()
        .to_owned();
    (state, text)
}

/// `GET path` at `addr`: status code and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    http(addr, "GET", path)
}

/// The `HOST:PORT` of the `<see-other-host/>` in `text`.
fn redirect_of(text: &str) -> SocketAddr {
    let start = text
        .find("<see-other-host")
        .unwrap_or_else(|| panic!("no <see-other-host/> in {text:?}"));
    let from = start + text[start..].find('>').unwrap() + 1;
    let to = from + text[from..].find('<').unwrap();
    text[from..to].parse().unwrap()
}

/// The bodies `m-<user>-<n>` in `text` for `user`, in order.
fn bodies(text: &str, user: &str) -> Vec<u32> {
    let tag = format!("<body>m-{user}-");
    text.match_indices(&tag)
        .map(|(i, _)| {
            let rest = &text[i + tag.len()..];
            rest[..rest.find('<').unwrap()].parse().unwrap()
        })
        .collect()
}

/// A login through the master for `user`: where it is redirected.
fn login_goes_to(at: SocketAddr, user: &str) -> SocketAddr {
    let mut m = Raw::connect(at);
    m.open();
    m.send(&plain_auth(user, "pw"));
    redirect_of(&m.wait_closed(5))
}

#[test]
fn a_drained_slave_hands_every_session_on_over_its_window_and_gets_them_back() {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let metrics = |i: usize| SocketAddr::from(([127, 0, 0, 1], ports[i]));
    let (mut farm, _db) = central_farm("drain", &ports);
    let drained = farm.users_on("dr", "slave2", 6);
    let sender = farm.users_on("dr", "slave1", 1).remove(0);
    for u in drained.iter().chain([&sender]) {
        farm.add_user(u, "pw");
    }
    let slave2 = farm.owner(&drained[0]).c2s;
    let mut clients: Vec<Raw> = drained
        .iter()
        .map(|u| {
            let mut c = Raw::login(slave2, u, "pw", "r");
            c.send("<presence/>");
            c.sync("localhost");
            c
        })
        .collect();
    let mut tx = Raw::login(farm.owner(&sender).c2s, &sender, "pw", "r");
    tx.send("<presence/>");
    tx.sync("localhost");
    // One more of slave2's users comes through the master's relay: a client that did not
    // follow its redirect (`redirect = "auto"` relays it when it comes back).
    let relayed = farm
        .users_on_every_slave("rl", 1)
        .into_iter()
        .find(|(_, o)| o == "slave2")
        .map(|(u, _)| u)
        .unwrap();
    farm.add_user(&relayed, "pw");
    assert_eq!(login_goes_to(farm.master.c2s, &relayed), slave2);
    let mut rc = Raw::login(farm.master.c2s, &relayed, "pw", "r");
    rc.send("<presence/>");
    rc.sync("localhost");
    assert_eq!(get(metrics(2), "/health"), (200, "ok\n".to_owned()));

    // Under load: a message to each of them every 20 ms, all through the drain.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, users) = (stop.clone(), drained.clone());
        std::thread::spawn(move || {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) {
                for u in &users {
                    tx.send(&format!(
                        "<message to='{u}@localhost' type='chat'><body>m-{u}-{sent}</body></message>"
                    ));
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            tx.sync("localhost");
            sent
        })
    };
    std::thread::sleep(Duration::from_millis(300));

    // Each session of slave2 is told where to go: when, where, and what it got before.
    let started = Instant::now();
    let watchers: Vec<_> = clients
        .drain(..)
        .map(|mut c| {
            std::thread::spawn(move || {
                let text = c.wait_closed(20);
                (started.elapsed(), text)
            })
        })
        .collect();
    let (ok, out) = cli(&farm, &["drain", "slave2", "--over", "3s", "--wait"]);
    assert!(ok, "{out}");
    assert!(out.contains("draining slave2"), "{out}");
    assert!(out.contains("slave2 is drained"), "{out}");
    let mut moved_at = Vec::new();
    let mut after = Vec::new();
    for (w, u) in watchers.into_iter().zip(&drained) {
        let (at, text) = w.join().unwrap();
        assert!(
            !text.contains("system-shutdown") && text.contains("see-other-host"),
            "{u}'s session was cut, not moved: {text}"
        );
        let to = redirect_of(&text);
        assert_ne!(to, slave2, "{u} sent to the drained slave");
        assert!(
            farm.slaves.iter().any(|s| s.c2s == to),
            "{to} is not a slave"
        );
        moved_at.push(at);
        // The user follows the redirect, as a client does.
        let mut c = Raw::login(to, u, "pw", "r");
        c.send("<presence/>");
        after.push((u.clone(), to, text, c));
    }
    // The relayed one is told to reconnect (`<reset/>`) and the master relays it to its next
    // slave.
    let text = rc.wait_closed(15);
    assert!(
        text.contains("<reset xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{text}"
    );
    let mut rc = Raw::login(farm.master.c2s, &relayed, "pw", "r");
    rc.send("<presence/>");
    rc.sync("localhost");
    // Spread over the window (3 s for 7 users: one every 430 ms), not all at once.
    let first = moved_at.iter().min().unwrap();
    let last = moved_at.iter().max().unwrap();
    assert!(
        *last - *first >= Duration::from_millis(1500),
        "moved between {first:?} and {last:?}"
    );

    // Every message sent meanwhile reached its user once, before or after the move.
    stop.store(true, Ordering::Relaxed);
    let sent = load.join().unwrap();
    for (u, _, before, c) in &mut after {
        let mut got = bodies(before, u);
        let earlier = got.len();
        let text = c.wait_until("every message", 10, |t| {
            bodies(t, u).len() + earlier >= sent as usize
        });
        c.sync("localhost");
        got.extend(bodies(&text, u));
        got.sort_unstable();
        assert_eq!(
            got,
            (0..sent).collect::<Vec<_>>(),
            "{u}: messages lost or repeated"
        );
    }

    // Drained: status, health, metrics; new logins go elsewhere, through the master or not.
    let (state, table) = state_of(&farm, "slave2");
    assert_eq!(state, "drained", "{table}");
    assert_eq!(get(metrics(2), "/health"), (503, "drained\n".to_owned()));
    let (_, text) = get(metrics(2), "/metrics");
    assert!(
        text.contains(&format!(
            "jabberfarm_sessions_moved_total{{reason=\"drain\"}} {}",
            drained.len() + 1
        )),
        "{text}"
    );
    for (u, to, _, _) in &after {
        assert_eq!(login_goes_to(farm.master.c2s, u), *to);
        assert_eq!(login_goes_to(slave2, u), *to);
    }

    // A master restart keeps the drain.
    farm.kill_node("master");
    farm.start_node("master");
    farm.wait_links_up(Instant::now() + Duration::from_secs(20));
    let (state, table) = state_of(&farm, "slave2");
    assert_eq!(state, "drained", "{table}");
    let (u, to, _, _) = &after[0];
    assert_eq!(login_goes_to(farm.master.c2s, u), *to);

    // Draining every slave is refused at the last one in service; a master is never drained.
    let (ok, out) = cli(&farm, &["drain", "slave1"]);
    assert!(ok, "{out}");
    let (ok, out) = cli(&farm, &["drain", "slave3"]);
    assert!(!ok && out.contains("the last slave in service"), "{out}");
    let (ok, out) = cli(&farm, &["drain", "master"]);
    assert!(!ok && out.contains("only a slave can be drained"), "{out}");
    let (ok, out) = cli(&farm, &["undrain", "slave1"]);
    assert!(ok && out.contains("slave1 is back in service"), "{out}");

    // Back in service: every user is sent home.
    let (ok, out) = cli(&farm, &["undrain", "slave2"]);
    assert!(ok && out.contains("slave2 is back in service"), "{out}");
    for (u, _, _, c) in &mut after {
        let home = c.wait_closed(15);
        assert_eq!(redirect_of(&home), slave2, "{u}: {home}");
    }
    let (state, table) = state_of(&farm, "slave2");
    assert_eq!(state, "up", "{table}");
    assert_eq!(get(metrics(2), "/health"), (200, "ok\n".to_owned()));
    // (At the slave it was moved to: through the master, this user would now be relayed, as
    // a client that came back without following its redirect.)
    let (u, to, _, _) = &after[0];
    assert_eq!(login_goes_to(*to, u), slave2);
}

/// SIGTERM at a slave with users connected: it asks the master to drain it, its sessions are
/// moved (not cut with `<system-shutdown/>`), it stops, and once it is started again its
/// users are sent home.
#[test]
fn sigterm_drains_a_slave_before_it_stops() {
    let (mut farm, _db) = central_farm("sigterm", &[]);
    let (_, x) = farm.user_pair("term", "pw");
    let home = farm.owner(&x).c2s;
    let owner = farm.owner(&x).name.clone();
    let mut cx = Raw::login(home, &x, "pw", "r");
    cx.send("<presence/>");
    cx.sync("localhost");

    farm.signal_node(&owner, "TERM");
    let text = cx.wait_closed(15);
    assert!(
        !text.contains("system-shutdown") && text.contains("see-other-host"),
        "cut, not moved: {text}"
    );
    let to = redirect_of(&text);
    assert_ne!(to, home);
    assert!(farm.wait_node_exit(&owner, 15).success());
    farm.wait_log(&format!("{owner} is drained: stopping"), 5);
    farm.wait_log(&format!("{owner} stopped after its drain"), 10);

    let mut away = Raw::login(to, &x, "pw", "r");
    away.send("<presence/>");
    away.sync("localhost");
    farm.start_node(&owner);
    let back = away.wait_closed(20);
    assert_eq!(redirect_of(&back), home, "{back}");
    let mut again = Raw::login(home, &x, "pw", "r");
    again.send("<presence/>");
    again.sync("localhost");
}

/// With the data on the slaves (SQLite) no other slave can serve a slave's users: a drain is
/// refused with the reason, and an unknown node is named.
#[test]
fn a_farm_with_data_on_the_slaves_refuses_to_drain() {
    let farm = TestFarm::start(2);
    let (ok, out) = cli(&farm, &["drain", "slave1", "--over", "1m"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("refused: slave1's users' data is on it"),
        "{out}"
    );
    let (ok, out) = cli(&farm, &["drain", "slave9"]);
    assert!(!ok && out.contains("no node slave9"), "{out}");
    let (ok, out) = cli(&farm, &["drain", "slave1", "--over", "soon"]);
    assert!(!ok && out.contains("a number of seconds"), "{out}");
}

/// Ranges mode: a drained slave's users go to the first slave of their range's `fallback`
/// list; a slave with a range that has no list cannot be drained, and `check` names it.
#[test]
fn ranges_mode_drains_to_each_range_s_fallback_list() {
    let routing = "mode = \"ranges\"\nother = \"slave1\"\n\
                   [[routing.ranges]]\nletters = \"a-m\"\nnode = \"slave1\"\nfallback = [\"slave2\"]\n\
                   [[routing.ranges]]\nletters = \"n-z\"\nnode = \"slave2\"\n\
                   fallback = [\"slave3\", \"slave1\"]\n";
    let (farm, _db) = central_farm_routed("ranges", &[], Some(routing));
    let (ok, out) = cli(&farm, &["check"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("failover on for ranges with a fallback list; off for other"),
        "{out}"
    );
    farm.add_user("nina", "pw");
    let slave2 = farm.owner("nina").c2s;
    let mut c = Raw::login(slave2, "nina", "pw", "r");
    c.send("<presence/>");
    c.sync("localhost");

    let (ok, out) = cli(&farm, &["drain", "slave1"]);
    assert!(
        !ok && out.contains("slave1's users in other have no fallback slave in service"),
        "{out}"
    );
    let (ok, out) = cli(&farm, &["drain", "slave2", "--wait"]);
    assert!(ok, "{out}");
    let to = redirect_of(&c.wait_closed(10));
    let slave3 = farm.slaves.iter().find(|s| s.name == "slave3").unwrap().c2s;
    assert_eq!(to, slave3, "not the first of n-z's fallback list");
    let mut c = Raw::login(to, "nina", "pw", "r");
    c.send("<presence/>");
    c.sync("localhost");
    assert_eq!(login_goes_to(farm.master.c2s, "nina"), slave3);
}

/// Real clients through the master, both users of the drained slave: xmpp.js (which follows
/// `<see-other-host/>`) is sent to the next slave and reconnects there; Debian's slixmpp (which
/// does not, so the master relays it) gets `<reset/>`, reconnects to the master and is relayed
/// to the next slave. Both are back online and chat.
#[test]
fn real_clients_follow_a_drain_through_the_master() {
    let (farm, _db) = central_farm("realdrain", &[]);
    let users = farm.users_on("real", "slave2", 2);
    let (x, y) = (users[0].clone(), users[1].clone());
    farm.add_user(&x, "pw");
    farm.add_user(&y, "pw");
    let (master, slave2) = (farm.master.c2s, farm.owner(&x).c2s);
    let mut js = Agent::xmppjs(&farm, "xmppjs", &x, "pw", "js");
    let mut sx = Agent::slixmpp_at(&farm, "slixmpp", &y, "pw", "sx", master, &["--reconnect"]);

    let (ok, out) = cli(&farm, &["drain", "slave2", "--wait"]);
    assert!(ok && out.contains("slave2 is drained"), "{out}");
    let again = js.expect("xmpp.js online again", |e| e.kind() == "reconnected");
    let port = again.num("port").unwrap_or_default();
    assert!(
        port != f64::from(slave2.port())
            && farm.slaves.iter().any(|s| f64::from(s.c2s.port()) == port),
        "xmpp.js not at another slave: {again:?}"
    );
    let again = sx.expect("slixmpp online again", |e| e.kind() == "reconnected");
    assert_eq!(
        again.num("port"),
        Some(f64::from(master.port())),
        "{again:?}"
    );
    for a in [&mut js, &mut sx] {
        a.cmd("presence", &[]);
    }
    sx.chat_both_ways(&mut js);
    let (state, table) = state_of(&farm, "slave2");
    assert_eq!(state, "drained", "{table}");
}
