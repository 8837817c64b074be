//! IM across the farm with real clients (issue 3): slixmpp (Debian `python3-slixmpp`, run with
//! `/usr/bin/python3`) and xmpp.js (`tests/js`, installed by `npm ci --prefix tests/js`).
//!
//! Each client is an "agent" process — `tests/py/agent.py` or `tests/js/chat.mjs`, the same line
//! protocol — that logs one user in, then takes JSON commands on stdin (roster get/add, presence,
//! subscription presences, messages, ping, clean disconnect) and prints every message, presence
//! and roster push it receives as one JSON line on stdout. The tests below drive two agents
//! through a conversation and assert on what each one saw. Every wait is bounded (10 s per
//! expected event) and nothing sleeps to let something happen.
//!
//! Users: A is owned by slave1 and B by slave2, so everything between them crosses a farm link.
//! slixmpp does not follow redirects and connects straight to the owner's c2s port (STARTTLS,
//! the demo CA); xmpp.js logs in at the master and follows `<see-other-host/>`.
//!
//! On a failure the message shows what every agent saw, the end of every agent's debug log
//! (each stanza in and out) and the end of the farm log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestFarm;
use common::agents::*;

// ---------------------------------------------------------------------------------------------
// Scenario pieces.

/// (A on slave1, B on slave2), both created with passwords `<name>-pw`.
fn two_users(farm: &TestFarm, prefix: &str) -> (String, String) {
    let users = farm.users_on_every_slave(prefix, 1);
    let a = users.iter().find(|(_, o)| o == "slave1").unwrap().0.clone();
    let b = users.iter().find(|(_, o)| o == "slave2").unwrap().0.clone();
    for u in [&a, &b] {
        farm.add_user(u, &format!("{u}-pw"));
    }
    (a, b)
}

fn bare(jid: &str) -> &str {
    jid.split('/').next().unwrap()
}

fn item(jid: &str, subscription: &str) -> (String, String, Option<String>) {
    (jid.to_owned(), subscription.to_owned(), None)
}

/// Both log in with empty rosters, send initial presence, and subscribe to each other (RFC 6121
/// §3): A adds B and subscribes, B approves and subscribes back, A approves. Each sees the
/// other's available presence and ends with subscription `both`.
fn befriend(a: &mut Agent, b: &mut Agent) {
    let (a_full, b_full) = (a.jid.clone(), b.jid.clone());
    let (a_bare, b_bare) = (bare(&a_full).to_owned(), bare(&b_full).to_owned());
    assert_eq!(a.roster(), vec![], "{a_bare} starts with an empty roster");
    assert_eq!(b.roster(), vec![], "{b_bare} starts with an empty roster");
    a.cmd("presence", &[]);
    b.cmd("presence", &[]);

    // A adds B: a roster push with subscription none.
    a.cmd("roster_add", &[("jid", &b_bare), ("name", "B")]);
    a.roster_push(&b_bare, "none", None);

    // A → B subscribe: pending out at A, the request at B.
    a.cmd("subscribe", &[("jid", &b_bare)]);
    a.roster_push(&b_bare, "none", Some("subscribe"));
    b.presence(&a_bare, "subscribe");

    // B approves: B has `from`, A has `to` and then B's presence.
    b.cmd("subscribed", &[("jid", &a_bare)]);
    b.roster_push(&a_bare, "from", None);
    a.presence(&b_bare, "subscribed");
    a.roster_push(&b_bare, "to", None);
    a.presence(&b_full, "available");

    // B → A subscribe, A approves: both ways.
    b.cmd("subscribe", &[("jid", &a_bare)]);
    b.roster_push(&a_bare, "from", Some("subscribe"));
    a.presence(&b_bare, "subscribe");
    a.cmd("subscribed", &[("jid", &b_bare)]);
    a.roster_push(&b_bare, "both", None);
    b.presence(&a_bare, "subscribed");
    b.roster_push(&a_bare, "both", None);
    b.presence(&a_full, "available");

    assert_eq!(a.roster(), vec![item(&b_bare, "both")], "{a_bare}'s roster");
    assert_eq!(b.roster(), vec![item(&a_bare, "both")], "{b_bare}'s roster");
    a.assert_roster_unchanged_since_last_push();
    b.assert_roster_unchanged_since_last_push();
}

/// Both ways across the farm: A → B's bare JID, B → A's full JID.
fn chat(a: &mut Agent, b: &mut Agent) {
    let (a_full, b_full) = (a.jid.clone(), b.jid.clone());
    let hello = "hello from A ✓ <&> 🐄";
    a.message(bare(&b_full), hello);
    let m = b.expect("A's chat message", |e| {
        e.kind() == "message" && e.is("body", hello)
    });
    assert!(m.is("from", &a_full) && m.is("type", "chat"), "{}", m.line);
    assert!(
        m.null("delay_stamp"),
        "a live message has no delay: {}",
        m.line
    );

    let reply = "hi from B — ünïcödé";
    b.message(&a_full, reply);
    let m = a.expect("B's chat message", |e| {
        e.kind() == "message" && e.is("body", reply)
    });
    assert!(m.is("from", &b_full) && m.is("type", "chat"), "{}", m.line);
    assert!(
        m.null("delay_stamp"),
        "a live message has no delay: {}",
        m.line
    );
}

/// A sends `bodies` to B's bare JID while B is offline, then pings B's bare JID: B's slave
/// answers that ping for B, after the messages (order between two users is kept), so once the
/// answer is here the messages are in B's offline storage.
fn send_while_offline(a: &mut Agent, b_bare: &str, bodies: &[String]) {
    for body in bodies {
        a.message(b_bare, body);
    }
    a.cmd("ping", &[("to", b_bare)]);
    a.assert_clean();
}

/// The next `bodies.len()` messages to B are A's stored ones, in order, each with a XEP-0203
/// `<delay/>` (stamps not decreasing).
fn expect_offline(b: &mut Agent, a_full: &str, bodies: &[String]) {
    let mut got = Vec::new();
    for i in 0..bodies.len() {
        got.push(b.expect(&format!("offline message #{}", i + 1), |e| {
            e.kind() == "message"
        }));
    }
    let got_bodies: Vec<&str> = got.iter().map(|e| e.get("body").unwrap_or("")).collect();
    let want: Vec<&str> = bodies.iter().map(String::as_str).collect();
    if got_bodies != want {
        b.fail(&format!(
            "offline messages {got_bodies:?}, expected {want:?} in this order"
        ));
    }
    let mut last = String::new();
    for m in &got {
        let stamp = m.get("delay_stamp").unwrap_or_default();
        if !(m.is("from", a_full) && m.is("type", "chat")) {
            b.fail(&format!("offline message not from {a_full}: {}", m.line));
        }
        if !(stamp.len() >= 20 && stamp.as_bytes()[10] == b'T' && stamp.ends_with('Z')) {
            b.fail(&format!(
                "offline message without a XEP-0203 delay stamp: {}",
                m.line
            ));
        }
        if m.get("delay_from") != Some("localhost") {
            b.fail(&format!("delay not from the server: {}", m.line));
        }
        if stamp < last.as_str() {
            b.fail(&format!("delay stamps go backwards: {last} then {stamp}"));
        }
        last = stamp.to_owned();
    }
}

fn offline_bodies(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| format!("while you were away #{i} of {n}"))
        .collect()
}

/// The whole conversation of issue 3: befriend, chat both ways, B logs out, A writes 3 messages,
/// B logs in again and gets them in order with `<delay/>`; A sees B leave and come back.
fn conversation(farm: &TestFarm, a_user: &str, b_user: &str, login: Login) {
    let pw = |u: &str| format!("{u}-pw");
    let mut a = login(farm, "A", a_user, &pw(a_user), "alpha");
    let mut b = login(farm, "B", b_user, &pw(b_user), "beta");
    befriend(&mut a, &mut b);
    chat(&mut a, &mut b);

    let (a_full, b_full) = (a.jid.clone(), b.jid.clone());
    b.assert_clean();
    b.disconnect();
    a.presence(&b_full, "unavailable");

    let bodies = offline_bodies(3);
    send_while_offline(&mut a, bare(&b_full), &bodies);

    let mut b = login(farm, "B-again", b_user, &pw(b_user), "beta");
    assert_eq!(b.roster(), vec![item(bare(&a_full), "both")]);
    b.cmd("presence", &[]);
    expect_offline(&mut b, &a_full, &bodies);
    // Probes on initial presence: B learns A is here; A sees B come back.
    b.presence(&a_full, "available");
    a.presence(&b_full, "available");

    a.assert_clean();
    b.assert_clean();
    b.disconnect();
    a.disconnect();
}

type Login = fn(&TestFarm, &str, &str, &str, &str) -> Agent;

// ---------------------------------------------------------------------------------------------
// The tests.

/// slixmpp on each user's own slave: the full conversation.
#[test]
fn slixmpp_conversation_across_slaves() {
    require_slixmpp();
    let farm = TestFarm::start(2);
    let (a, b) = two_users(&farm, "sli");
    conversation(&farm, &a, &b, Agent::slixmpp);
}

/// xmpp.js logging in at the master for both users (redirected to their slaves).
#[test]
fn xmppjs_conversation_through_the_master() {
    require_xmppjs();
    let farm = TestFarm::start(2);
    let (a, b) = two_users(&farm, "js");
    // Both sessions end up on the owner, reached through the master.
    let login: Login = |farm, label, user, pw, res| {
        let agent = Agent::xmppjs(farm, label, user, pw, res);
        let owner = farm.owner(user);
        let trail = format!("xmpp://{} xmpp://{}", farm.master.c2s, owner.c2s);
        if !(agent.online.num("port") == Some(f64::from(owner.c2s.port()))
            && agent.online.is("services", &trail)
            && agent.online.flag("encrypted"))
        {
            agent.fail(&format!(
                "expected an encrypted session on {} ({}) via the master (trail {trail}): {}",
                owner.name, owner.c2s, agent.online.line
            ));
        }
        agent
    };
    conversation(&farm, &a, &b, login);
}

/// B's client dies (SIGKILL: the socket closes without `</stream:stream>` and without
/// unavailable presence); A, subscribed to B, gets unavailable from B's full JID promptly.
#[test]
fn contact_goes_unavailable_when_its_connection_drops() {
    require_slixmpp();
    let farm = TestFarm::start(2);
    let (a_user, b_user) = two_users(&farm, "drop");
    let mut a = Agent::slixmpp(&farm, "A", &a_user, &format!("{a_user}-pw"), "alpha");
    let mut b = Agent::slixmpp(&farm, "B", &b_user, &format!("{b_user}-pw"), "beta");
    befriend(&mut a, &mut b);
    let b_full = b.jid.clone();

    let killed = Instant::now();
    b.kill();
    a.expect_within(
        &format!("unavailable presence from {b_full} after its client was killed"),
        DROP_NOTICE,
        |e| e.kind() == "presence" && e.is("from", &b_full) && e.is("type", "unavailable"),
    );
    eprintln!(
        "unavailable presence {:.0} ms after the kill",
        killed.elapsed().as_secs_f64() * 1000.0
    );
    a.assert_clean();
    a.disconnect();
}

/// Lines in `node-<node>.log` saying the link between slave1 and slave2 came up.
fn link_ups(farm: &TestFarm, node: &str) -> usize {
    std::fs::read_to_string(farm.dir.path().join(format!("node-{node}.log")))
        .unwrap_or_default()
        .matches("farm link slave1 <-> slave2 up")
        .count()
}

/// SIGKILL B's slave with B's offline messages stored, restart it: B's roster and the messages
/// are still there, and A (on slave1 throughout) sees B come back.
#[test]
fn slave_killed_and_restarted_keeps_roster_and_offline_messages() {
    require_slixmpp();
    let mut farm = TestFarm::start_processes(2);
    let (a_user, b_user) = two_users(&farm, "crash");
    let (a_pw, b_pw) = (format!("{a_user}-pw"), format!("{b_user}-pw"));
    let mut a = Agent::slixmpp(&farm, "A", &a_user, &a_pw, "alpha");
    let mut b = Agent::slixmpp(&farm, "B", &b_user, &b_pw, "beta");
    befriend(&mut a, &mut b);
    let (a_full, b_full) = (a.jid.clone(), b.jid.clone());
    b.disconnect();
    a.presence(&b_full, "unavailable");

    let bodies = offline_bodies(2);
    send_while_offline(&mut a, bare(&b_full), &bodies);

    let ups = link_ups(&farm, "slave1");
    farm.kill_node("slave2");
    farm.start_node("slave2");
    // B logs in once slave1 has its link to the new slave2 (as at any farm start).
    let deadline = Instant::now() + Duration::from_secs(20);
    while link_ups(&farm, "slave1") <= ups {
        assert!(
            Instant::now() < deadline,
            "the slave1 <-> slave2 link did not come back:\n{}",
            context(farm.dir.path())
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let mut b = Agent::slixmpp(&farm, "B-after-restart", &b_user, &b_pw, "beta");
    assert_eq!(
        b.roster(),
        vec![item(bare(&a_full), "both")],
        "{b_user}'s roster after the restart"
    );
    b.cmd("presence", &[]);
    expect_offline(&mut b, &a_full, &bodies);
    b.presence(&a_full, "available");
    a.presence(&b_full, "available");

    // A's session on slave1 lived through it all.
    a.cmd("ping", &[("to", bare(&b_full))]);
    a.assert_clean();
    b.assert_clean();
    b.disconnect();
    a.disconnect();
}
