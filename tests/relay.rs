//! The master relays clients that do not follow redirects (DESIGN.md D1b, issue 10), seen
//! from a raw socket: exact bytes at the master, real slaves behind it.
//!
//! - `redirect = "never"`: every login at the master gets a session on its slave through the
//!   master, and chats with a user on another slave.
//! - `redirect = "auto"` (the default): redirected first; the client that comes back without
//!   having logged in at its slave is relayed, then and on later logins; a client that follows
//!   the redirect stays redirected.
//! - `redirect = "always"`: redirected, however often it comes back.
//! - Ends: the master stopping closes relayed streams with `<system-shutdown/>`; a slave
//!   killed closes them.
//! - One relay connection per slave carries all its relayed clients: a relayed client costs
//!   the master one socket; a killed slave ends only its own clients, and the next relayed
//!   login after its restart opens a new connection.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{HEADER, Raw, TestFarm, plain_auth};

fn with_relay(mode: &'static str) -> impl Fn(String) -> String {
    move |text| format!("{text}\n[relay]\nredirect = \"{mode}\"\n")
}

/// Log in at `addr` with PLAIN and bind; returns the client, or the text of the stream that
/// ended in a redirect.
fn try_login(addr: std::net::SocketAddr, user: &str, resource: &str) -> Result<Raw, String> {
    let mut c = Raw::connect(addr);
    c.send(HEADER);
    c.wait_for("</stream:features>", 5);
    c.send(&plain_auth(user, "pw"));
    let r = c.wait_for("urn:ietf:params:xml:ns:xmpp-", 10);
    if r.contains("see-other-host") {
        return Err(c.wait_closed(5));
    }
    assert!(r.contains("<success"), "login of {user}: {r}");
    c.send(HEADER);
    let features = c.wait_for("</stream:features>", 5);
    assert!(
        features.contains("urn:ietf:params:xml:ns:xmpp-bind"),
        "{features}"
    );
    c.send(&format!("<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"));
    let r = c.wait_for("</iq>", 5);
    assert!(
        r.contains(&format!("<jid>{user}@localhost/{resource}</jid>")),
        "{r}"
    );
    Ok(c)
}

/// One user per slave: (user on slave1, user on slave2).
fn two_users(farm: &TestFarm) -> (String, String) {
    let users = farm.users_on_every_slave("u", 1);
    let a = users.iter().find(|(_, n)| n == "slave1").unwrap().0.clone();
    let b = users.iter().find(|(_, n)| n == "slave2").unwrap().0.clone();
    for u in [&a, &b] {
        farm.add_user(&format!("{u}@localhost"), "pw");
    }
    (a, b)
}

#[test]
fn never_mode_serves_every_login_through_the_master() {
    let farm = TestFarm::start_edited(2, with_relay("never"));
    let (a, b) = two_users(&farm);
    // Both log in at the master, and neither is redirected.
    let mut ca = try_login(farm.master.c2s, &a, "r").expect("relayed, not redirected");
    let mut cb = try_login(farm.master.c2s, &b, "r").expect("relayed, not redirected");
    for c in [&mut ca, &mut cb] {
        c.send("<presence/>");
    }
    ca.send(&format!(
        "<message to='{b}@localhost' type='chat' id='m1'><body>over the relay</body></message>"
    ));
    let got = cb.wait_for("over the relay", 10);
    assert!(got.contains(&format!("from='{a}@localhost/r'")), "{got}");
    cb.send(&format!(
        "<message to='{a}@localhost/r' type='chat' id='m2'><body>and back</body></message>"
    ));
    ca.wait_for("and back", 10);
    // The slave knows where the client really is (the master told it).
    let log = farm.log();
    assert!(log.contains("relaying login"), "{log}");
    assert!(log.contains("relayed=true"), "{log}");
    assert!(log.contains("peer=Some(127.0.0.1:"), "{log}");
    // A clean close goes through as well.
    ca.send("</stream:stream>");
    let end = ca.wait_closed(5);
    assert!(end.ends_with("</stream:stream>"), "{end}");
}

#[test]
fn never_mode_relays_an_iq_auth_login() {
    let farm = TestFarm::start_edited(2, with_relay("never"));
    let (a, _) = two_users(&farm);
    let mut c = Raw::connect(farm.master.c2s);
    // No version: a pre-XMPP-1.0 client, iq:auth without stream features.
    c.send(&HEADER.replace("version='1.0' xmlns=", "xmlns="));
    c.wait_for("<stream:stream", 5);
    c.send(&format!("<iq type='set' id='auth1'><query xmlns='jabber:iq:auth'><username>{a}</username><password>pw</password><resource>legacy</resource></query></iq>"));
    let r = c.wait_for("id='auth1'", 10);
    assert!(r.contains("<iq type='result'"), "{r}");
    c.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
    let r = c.wait_for("id='p1'", 5);
    assert!(!r.contains("type='error'"), "{r}");
}

#[test]
fn auto_mode_relays_the_client_that_came_back_and_keeps_redirecting_followers() {
    let farm = TestFarm::start(2);
    let (a, b) = two_users(&farm);
    // First login at the master: redirected, as always.
    let first = try_login(farm.master.c2s, &a, "r")
        .err()
        .expect("redirected");
    assert!(first.contains("see-other-host"), "{first}");
    // The client does not follow and comes back: relayed this time ...
    let c = try_login(farm.master.c2s, &a, "r").expect("relayed on coming back");
    drop(c);
    farm.wait_log(&format!("user=\"{a}\" relayed=true"), 10);
    // ... and from now on.
    let c = try_login(farm.master.c2s, &a, "r2").expect("relayed again");
    drop(c);
    assert!(
        farm.log().contains("reason=\"remembered\""),
        "{}",
        farm.log()
    );

    // A client that follows the redirect logs in at its slave, and is redirected next time.
    let r = try_login(farm.master.c2s, &b, "r")
        .err()
        .expect("redirected");
    assert!(r.contains(&farm.owner(&b).c2s.to_string()), "{r}");
    let c = try_login(farm.owner(&b).c2s, &b, "r").expect("login at the slave");
    farm.wait_log(&format!("user=\"{b}\" relayed=false"), 10);
    drop(c);
    let again = try_login(farm.master.c2s, &b, "r")
        .err()
        .expect("still redirected");
    assert!(again.contains("see-other-host"), "{again}");
}

#[test]
fn always_mode_never_relays() {
    let farm = TestFarm::start_edited(2, with_relay("always"));
    let (a, _) = two_users(&farm);
    for _ in 0..3 {
        let r = try_login(farm.master.c2s, &a, "r")
            .err()
            .expect("redirected");
        assert!(r.contains("see-other-host"), "{r}");
    }
}

#[test]
fn a_bad_password_through_the_relay_is_the_slaves_answer() {
    let farm = TestFarm::start_edited(2, with_relay("never"));
    let (a, _) = two_users(&farm);
    let mut c = Raw::connect(farm.master.c2s);
    c.send(HEADER);
    c.wait_for("</stream:features>", 5);
    c.send(&plain_auth(&a, "wrong"));
    let r = c.wait_for("</failure>", 10);
    assert!(r.contains("<not-authorized/>"), "{r}");
    // The stream goes on at the slave: a second try works.
    c.send(&plain_auth(&a, "pw"));
    let r = c.wait_for("urn:ietf:params:xml:ns:xmpp-sasl", 10);
    assert!(r.contains("<success"), "{r}");
}

#[test]
fn master_stop_says_system_shutdown_and_a_dead_slave_closes_the_stream() {
    let mut farm = TestFarm::start_processes_edited(2, with_relay("never"));
    let (a, b) = two_users(&farm);
    let mut ca = try_login(farm.master.c2s, &a, "r").unwrap();
    let mut cb = try_login(farm.master.c2s, &b, "r").unwrap();
    // A slave dies: its relayed client's connection closes, as a direct one would.
    farm.kill_node("slave2");
    cb.wait_closed(10);
    // The master stops: the client hears it from the slave, through the master.
    farm.term_node("master");
    let end = ca.wait_closed(10);
    assert!(end.contains("<system-shutdown"), "{end}");
    assert!(end.ends_with("</stream:stream>"), "{end}");
}

#[test]
fn a_restarted_master_still_relays_the_users_it_relayed() {
    let mut farm = TestFarm::start_processes(2);
    let (a, _) = two_users(&farm);
    assert!(
        try_login(farm.master.c2s, &a, "r").is_err(),
        "first login redirected"
    );
    drop(try_login(farm.master.c2s, &a, "r").expect("relayed on coming back"));
    farm.wait_log(&format!("user=\"{a}\" relayed=true"), 10);
    // A clean stop writes what the master remembers into the data dir; the new process
    // reads it, so the client is not redirected (and made to retry) once more.
    farm.term_node("master");
    let file = farm.data_dir().join("master.relayed");
    let saved = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(saved.contains(&format!("{a}\t")), "{saved}");
    farm.start_node("master");
    farm.wait_log("users relayed before the restart are relayed again", 10);
    // The new master sees both slaves (each "is up" now logged twice, once per process).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ["slave1", "slave2"]
        .iter()
        .any(|s| farm.log().matches(&format!("slave {s} is up")).count() < 2)
    {
        assert!(std::time::Instant::now() < deadline, "{}", farm.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let c = try_login(farm.master.c2s, &a, "r").expect("relayed at once after the restart");
    drop(c);
}

/// Sockets a process holds open.
fn sockets(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|l| l.to_string_lossy().starts_with("socket:"))
        .count()
}

#[test]
fn relayed_clients_share_one_connection_per_slave_and_outlive_another_slave() {
    let mut farm = TestFarm::start_processes_edited(2, with_relay("never"));
    let users = farm.users_on_every_slave("m", 8);
    for (u, _) in &users {
        farm.add_user(&format!("{u}@localhost"), "pw");
    }
    let master = farm.pid("master");
    let before = sockets(master);
    let mut clients: Vec<(Raw, String, String)> = users
        .iter()
        .map(|(u, n)| {
            let c = try_login(farm.master.c2s, u, "r").expect("relayed, not redirected");
            (c, u.clone(), n.clone())
        })
        .collect();
    // Each relayed client is one socket at the master (its own); the relay connections are
    // one per slave, whatever the number of clients.
    let grown = sockets(master) - before;
    assert!(
        (users.len()..=users.len() + 2).contains(&grown),
        "{} relayed clients took {grown} sockets at the master",
        users.len()
    );
    for (c, _, _) in clients.iter_mut() {
        c.send("<presence/>");
    }
    // slave1 dies: its relayed clients are closed, slave2's go on chatting.
    farm.kill_node("slave1");
    let (on1, on2): (Vec<_>, Vec<_>) = clients.into_iter().partition(|(_, _, n)| n == "slave1");
    for (mut c, _, _) in on1 {
        c.wait_closed(10);
    }
    let mut on2 = on2.into_iter();
    let (mut a, _, _) = on2.next().unwrap();
    let (mut b, bu, _) = on2.next().unwrap();
    a.send(&format!(
        "<message to='{bu}@localhost' type='chat' id='x1'><body>still relayed</body></message>"
    ));
    b.wait_for("still relayed", 10);
    // Back: the next relayed login to it opens a new relay connection.
    farm.start_node("slave1");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while farm.log().matches("slave slave1 is up").count() < 2 {
        assert!(std::time::Instant::now() < deadline, "{}", farm.log());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (u1, _) = users.iter().find(|(_, n)| n == "slave1").unwrap();
    let mut c = try_login(farm.master.c2s, u1, "again").expect("relayed after the restart");
    c.send("<presence/>");
    c.send(&format!(
        "<message to='{bu}@localhost' type='chat' id='x2'><body>on a new connection</body></message>"
    ));
    b.wait_for("on a new connection", 10);
    // A new relay connection: killed, the old one ended (cleanly or not, as the kernel
    // closed it), and the login after the restart opened another.
    let log = farm.log();
    assert_eq!(
        log.matches("relay connection to slave1 open").count(),
        2,
        "{log}"
    );
}
