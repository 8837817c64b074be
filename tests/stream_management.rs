//! XEP-0198 stream management at the slaves (issue 14): acknowledgements both ways, and what
//! a session with stream management never acknowledged is not lost when it ends.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::agents::Agent;
use common::{Raw, TestFarm};

const SM: &str = "urn:xmpp:sm:3";

/// `user` logged in at its slave with stream management enabled; the features offered it.
fn with_sm(farm: &TestFarm, user: &str, resource: &str) -> Raw {
    let mut c = Raw::login(farm.owner(user).c2s, user, "pw", resource);
    assert!(c.got.contains(&format!("<sm xmlns='{SM}'/>")), "{}", c.got);
    c.send(&format!("<enable xmlns='{SM}'/>"));
    let r = c.wait_for("<enabled", 5) + &c.wait_for("/>", 5);
    // Not asked for: no resumption offered.
    assert!(!r.contains("resume=") && !r.contains(" id="), "{r}");
    c
}

/// Stanzas (message, presence, iq) that arrived after `<enabled/>`: what the client's `h` is.
fn stanzas_since_enabled(c: &Raw) -> usize {
    stanzas_after(c, "<enabled")
}

/// Stanzas that arrived after `marker`.
fn stanzas_after(c: &Raw, marker: &str) -> usize {
    let at = c.got.find(marker).unwrap();
    let rest = &c.got[at..];
    ["<message", "<presence", "<iq"]
        .iter()
        .map(|tag| rest.matches(tag).count())
        .sum()
}

fn chat(to: &str, id: &str, body: &str) -> String {
    format!("<message to='{to}' type='chat' id='{id}'><body>{body}</body></message>")
}

/// `c` sends `to` the messages `{prefix}-{i}` for each `i` of `numbers` (ids `{prefix}{i}`).
fn chats(c: &mut Raw, to: &str, prefix: &str, numbers: std::ops::Range<usize>) {
    for i in numbers {
        c.send(&chat(to, &format!("{prefix}{i}"), &format!("{prefix}-{i}")));
    }
}

#[test]
fn acks_count_both_ways_and_what_was_never_acknowledged_is_delivered_again() {
    let farm = TestFarm::start(2);
    let (a, b) = farm.user_pair("sm", "pw");
    let mut ca = Raw::login(farm.owner(&a).c2s, &a, "pw", "r");
    let mut cb = with_sm(&farm, &b, "phone");
    // The server counts what b sends: a presence and an IQ.
    cb.send("<presence/>");
    cb.sync("localhost");
    cb.send(&format!("<r xmlns='{SM}'/>"));
    let r = cb.wait_for(&format!("<a xmlns='{SM}'"), 5);
    let r = r + &cb.wait_for("/>", 5);
    assert!(r.contains("h='2'"), "{r}");

    // a writes to b across the farm; b reads but never acknowledges, and its connection drops.
    chats(&mut ca, &format!("{b}@localhost/phone"), "unacked", 0..3);
    cb.wait_for("unacked-2", 5);
    // The server asks for an acknowledgement (a moment after a write that leaves few
    // unacknowledged).
    cb.wait_for(&format!("<r xmlns='{SM}'/>"), 5);
    drop(cb);

    // What b never acknowledged was kept for it: its next session gets each message once.
    let mut cb = with_sm(&farm, &b, "laptop");
    cb.send("<presence/>");
    cb.wait_for("unacked-2", 10);
    cb.sync("localhost");
    common::each_once_in_order(&cb.got, (0..3).map(|i| format!("unacked-{i}")));
    // This time b acknowledges everything: nothing comes again after its connection drops.
    ca.send(&chat(&format!("{b}@localhost/laptop"), "m3", "acked-3"));
    cb.wait_for("acked-3", 5);
    cb.sync("localhost");
    let h = stanzas_since_enabled(&cb);
    cb.send(&format!("<a xmlns='{SM}' h='{h}'/>"));
    cb.sync("localhost");
    drop(cb);
    let mut cb = Raw::login(farm.owner(&b).c2s, &b, "pw", "desk");
    cb.send("<presence/>");
    cb.sync("localhost");
    ca.sync(&format!("{b}@localhost"));
    cb.sync("localhost");
    assert!(!cb.got.contains("acked-"), "{}", cb.got);

    // An IQ b's session never answered nor acknowledged: its sender gets an error.
    let mut cb = with_sm(&farm, &b, "tablet");
    cb.send("<presence/>");
    cb.sync("localhost");
    ca.send(&format!(
        "<iq to='{b}@localhost/tablet' type='get' id='q1'><query xmlns='jabber:iq:version'/></iq>"
    ));
    cb.wait_for("id='q1'", 5);
    drop(cb);
    let r = ca.wait_for("id='q1'", 10);
    let r = r + &ca.wait_for("</iq>", 5);
    assert!(
        r.contains("type='error'") && r.contains("service-unavailable"),
        "{r}"
    );
}

#[test]
fn stream_management_errors_are_xep_0198s() {
    let farm = TestFarm::start(2);
    let (a, _) = farm.user_pair("sm", "pw");
    // Before binding: enable fails, resume finds nothing to resume; the stream goes on.
    let mut c = Raw::connect(farm.owner(&a).c2s);
    c.open();
    c.send(&common::plain_auth(&a, "pw"));
    c.wait_for("<success", 5);
    c.open();
    c.send(&format!("<enable xmlns='{SM}'/>"));
    let r = c.wait_for("</failed>", 5);
    assert!(r.contains("unexpected-request"), "{r}");
    c.send(&format!("<resume xmlns='{SM}' previd='x' h='0'/>"));
    let r = c.wait_for("</failed>", 5);
    assert!(r.contains("item-not-found"), "{r}");
    c.send(
        "<iq type='set' id='b1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
         <resource>r</resource></bind></iq>",
    );
    c.wait_for("</jid>", 5);
    // Enabled once; a second enable fails.
    c.send(&format!("<enable xmlns='{SM}'/>"));
    c.wait_for("<enabled", 5);
    c.send(&format!("<enable xmlns='{SM}'/>"));
    let r = c.wait_for("</failed>", 5);
    assert!(r.contains("unexpected-request"), "{r}");
    // Acknowledging more than was sent ends the stream.
    c.send(&format!("<a xmlns='{SM}' h='1000'/>"));
    let r = c.wait_closed(5);
    assert!(
        r.contains("undefined-condition") && r.contains("1000 acknowledged"),
        "{r}"
    );
}

/// `(id, max)` of an `<enabled/>` that offers resumption.
fn resumption_of(enabled: &str) -> (String, String) {
    let attr = |name: &str| {
        let at = enabled
            .find(&format!(" {name}='"))
            .unwrap_or_else(|| panic!("{enabled}"));
        let rest = &enabled[at + name.len() + 3..];
        rest[..rest.find('\'').unwrap()].to_owned()
    };
    assert!(enabled.contains("resume='true'"), "{enabled}");
    (attr("id"), attr("max"))
}

/// A new connection for `user` at `addr` that asks to resume `previd` having handled `h`.
fn resume_at(addr: std::net::SocketAddr, user: &str, previd: &str, h: usize) -> Raw {
    let mut c = Raw::connect(addr);
    c.open();
    c.send(&common::plain_auth(user, "pw"));
    c.wait_for("<success", 5);
    c.open();
    c.send(&format!("<resume xmlns='{SM}' previd='{previd}' h='{h}'/>"));
    c
}

/// Issue 14: a client whose connection drops resumes its session through the master (relayed
/// here): what it had not received is written again, what was sent to it meanwhile follows,
/// each once and in order, and its contacts never saw it go offline.
#[test]
fn a_dropped_connection_resumes_through_the_master_losing_and_repeating_nothing() {
    let farm = TestFarm::start_edited(2, |t| format!("{t}\n[relay]\nredirect = \"never\"\n"));
    let (a, b) = farm.user_pair("sm", "pw");
    let mut ca = Raw::login(farm.owner(&a).c2s, &a, "pw", "r");
    ca.send("<presence/>");
    ca.sync("localhost");
    let mut cb = Raw::login(farm.master.c2s, &b, "pw", "phone");
    cb.send(&format!("<enable xmlns='{SM}' resume='true'/>"));
    let enabled = cb.wait_for("/>", 5);
    let (id, max) = resumption_of(&enabled);
    assert_eq!(max, "300");
    cb.send("<presence/>");
    cb.send(&format!("<presence to='{a}@localhost/r'/>"));
    cb.sync("localhost");
    ca.wait_for(&format!("from='{b}@localhost/phone'"), 5);
    chats(&mut ca, &format!("{b}@localhost/phone"), "msg", 0..5);
    cb.wait_for("msg-4", 5);
    // The client says it handled all but the last three (they were lost with the connection).
    let h = stanzas_since_enabled(&cb) - 3;
    drop(cb);
    // Sent while the connection is down: kept for the session.
    chats(&mut ca, &format!("{b}@localhost/phone"), "msg", 5..7);
    ca.sync(&format!("{b}@localhost"));

    // Another user cannot take the session; a wrong id finds nothing.
    let mut other = resume_at(farm.master.c2s, &a, &id, 0);
    let r = other.wait_for("</failed>", 5);
    assert!(r.contains("item-not-found"), "{r}");
    let mut cb = resume_at(farm.master.c2s, &b, &id, h);
    let r = cb.wait_for("<resumed", 5) + &cb.wait_for("/>", 5);
    // The server handled b's two presences and its ping.
    assert!(
        r.contains(&format!("previd='{id}'")) && r.contains("h='3'"),
        "{r}"
    );
    cb.wait_for("msg-6", 5);
    cb.sync("localhost");
    let after = &cb.got[cb.got.find("<resumed").unwrap()..];
    assert!(
        !after.contains(">msg-1<"),
        "handled before the drop, written again: {after}"
    );
    common::each_once_in_order(after, (2..7).map(|i| format!("msg-{i}")));
    // The session goes on: a message now arrives as before.
    ca.send(&chat(&format!("{b}@localhost/phone"), "m7", "msg-7"));
    cb.wait_for("msg-7", 5);
    ca.sync("localhost");
    assert!(
        !ca.got.contains("type='unavailable'"),
        "a saw b go: {}",
        ca.got
    );
    // The session can be resumed again after the next drop; the client's count goes on
    // from the first connection's. Everything was handled: nothing is written again.
    let h = h + stanzas_after(&cb, "<resumed");
    drop(cb);
    let mut cb = resume_at(farm.master.c2s, &b, &id, h);
    let r = cb.wait_for("<resumed", 5) + &cb.wait_for("/>", 5);
    assert!(r.contains("h='4'"), "{r}");
    cb.sync("localhost");
    assert!(!cb.got.contains("msg-"), "{}", cb.got);
}

/// A session whose client does not resume within `limits.resume_timeout` ends: its contacts
/// see it go, and what it never acknowledged is stored for the user's next login.
#[test]
fn a_session_not_resumed_in_time_ends_and_keeps_what_was_unacknowledged() {
    let farm = TestFarm::start_edited(2, |t| {
        t.replace("[limits]\n", "[limits]\nresume_timeout = 1\n")
    });
    let (a, b) = farm.user_pair("sm", "pw");
    let mut ca = Raw::login(farm.owner(&a).c2s, &a, "pw", "r");
    ca.send("<presence/>");
    ca.sync("localhost");
    let mut cb = Raw::login(farm.owner(&b).c2s, &b, "pw", "phone");
    cb.send(&format!("<enable xmlns='{SM}' resume='1'/>"));
    let r = cb.wait_for("<enabled", 5) + &cb.wait_for("/>", 5);
    assert_eq!(resumption_of(&r).1, "1");
    cb.send("<presence/>");
    cb.send(&format!("<presence to='{a}@localhost/r'/>"));
    cb.sync("localhost");
    ca.wait_for(&format!("from='{b}@localhost/phone'"), 5);
    ca.send(&chat(&format!("{b}@localhost/phone"), "u1", "unacked"));
    cb.wait_for(">unacked<", 5);
    drop(cb);
    let r = ca.wait_for("type='unavailable'", 10);
    assert!(r.contains(&format!("{b}@localhost/phone")), "{r}");
    let mut cb = Raw::login(farm.owner(&b).c2s, &b, "pw", "laptop");
    cb.send("<presence/>");
    cb.wait_for(">unacked<", 5);
}

/// A TCP proxy to `to` whose connections the test can cut (what a phone switching networks
/// sees: the connection is gone, the server is still there); new ones are still taken.
struct Cable {
    addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Cable {
    fn to(target: std::net::SocketAddr) -> Cable {
        use std::net::{TcpListener, TcpStream};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = open.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (Ok(client), Ok(server)) = (client, TcpStream::connect(target)) else {
                    continue;
                };
                let mut conns = held.lock().unwrap();
                conns.push(client.try_clone().unwrap());
                conns.push(server.try_clone().unwrap());
                drop(conns);
                pipe(client.try_clone().unwrap(), server.try_clone().unwrap());
                pipe(server, client);
            }
        });
        Cable { addr, open }
    }

    /// Every connection through the cable is gone, both ways.
    fn cut(&self) {
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }
}

fn pipe(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut from, &mut to);
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

/// Issue 14 with real clients: slixmpp (its xep_0198 plugin) and xmpp.js (@xmpp/client's
/// stream management) lose their connection to the master, which relays them; they reconnect
/// by themselves and resume: the messages sent while they were away arrive once, in order,
/// and nothing they had is written again.
fn a_real_client_resumes_through_the_master(which: &str) {
    let farm = TestFarm::start_edited(2, |t| format!("{t}\n[relay]\nredirect = \"never\"\n"));
    let (a, b) = farm.user_pair("sm", "pw");
    let cable = Cable::to(farm.master.c2s);
    let mut ca = Raw::login(farm.owner(&a).c2s, &a, "pw", "r");
    let mut agent = match which {
        "slixmpp" => Agent::slixmpp_at(
            &farm,
            which,
            &b,
            "pw",
            "res",
            cable.addr,
            &["--sm", "--reconnect"],
        ),
        _ => Agent::xmppjs_at(&farm, which, &b, "pw", "res", cable.addr, &["--reconnect"]),
    };
    agent.cmd("presence", &[]);
    let to = format!("{b}@localhost/res");
    let body_is = |body: &'static str| {
        move |e: &common::agents::Ev| e.kind() == "message" && e.is("body", body)
    };
    ca.send(&chat(&to, "s1", "before the cut"));
    agent.expect("the first message", body_is("before the cut"));

    cable.cut();
    agent.expect("the connection to drop", |e| e.kind() == "closed");
    for (id, body) in [("s2", "while away 1"), ("s3", "while away 2")] {
        ca.send(&chat(&to, id, body));
    }
    ca.sync(&format!("{b}@localhost"));
    agent.expect_within("a resumption", std::time::Duration::from_secs(20), |e| {
        e.kind() == "resumed"
    });
    agent.expect("what came meanwhile", body_is("while away 1"));
    agent.expect("what came meanwhile", body_is("while away 2"));
    // The session goes on, and nothing came twice.
    ca.send(&chat(&to, "s4", "after"));
    agent.expect("a message after", body_is("after"));
    agent.cmd("ping", &[("to", "localhost")]);
    let messages = agent
        .events
        .iter()
        .filter(|(e, _)| e.kind() == "message")
        .count();
    if messages != 4 {
        agent.fail(&format!("{messages} messages, not each of the 4 once"));
    }
    assert!(!ca.got.contains("type='error'"), "{}", ca.got);
}

/// The same for a client the master redirects (xmpp.js follows `<see-other-host/>`): its
/// connection to the slave is aborted (`ss -K`, as a network change does); it reconnects to
/// the master, is redirected again, and resumes at the slave.
#[test]
fn xmppjs_resumes_after_a_redirect() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test aborts a TCP connection with ss -K: it needs root (CI runs as root)"
    );
    let farm = TestFarm::start(2);
    let (a, b) = farm.user_pair("redir", "pw");
    let mut ca = Raw::login(farm.owner(&a).c2s, &a, "pw", "r");
    let mut agent = Agent::xmppjs_at(
        &farm,
        "xmppjs",
        &b,
        "pw",
        "res",
        farm.master.c2s,
        &["--reconnect"],
    );
    let slave = farm.owner(&b).c2s;
    assert_eq!(
        agent.online.num("port"),
        Some(f64::from(slave.port())),
        "redirected to its slave"
    );
    agent.cmd("presence", &[]);
    let to = format!("{b}@localhost/res");
    ca.send(&chat(&to, "r1", "before the drop"));
    agent.expect("the first message", |e| {
        e.kind() == "message" && e.is("body", "before the drop")
    });

    let killed = std::process::Command::new("ss")
        .args([
            "-K",
            "dst",
            "127.0.0.1",
            "dport",
            "=",
            &format!(":{}", slave.port()),
        ])
        .output()
        .expect("ss (iproute2)");
    assert!(killed.status.success(), "{killed:?}");
    agent.expect("the connection to drop", |e| e.kind() == "closed");
    ca.send(&chat(&to, "r2", "while away"));
    ca.sync(&format!("{b}@localhost"));
    let resumed = agent.expect_within("a resumption", std::time::Duration::from_secs(20), |e| {
        e.kind() == "resumed"
    });
    // Through the master, which redirected it again.
    let services = resumed.get("services").unwrap_or_default().to_owned();
    assert!(
        services.matches(&farm.master.c2s.to_string()).count() >= 2,
        "{services}"
    );
    agent.expect("what came meanwhile", |e| {
        e.kind() == "message" && e.is("body", "while away")
    });
    agent.cmd("ping", &[("to", "localhost")]);
    let messages = agent
        .events
        .iter()
        .filter(|(e, _)| e.kind() == "message")
        .count();
    if messages != 2 {
        agent.fail(&format!("{messages} messages, not each of the 2 once"));
    }
}

#[test]
fn slixmpp_resumes_through_the_master() {
    a_real_client_resumes_through_the_master("slixmpp");
}

#[test]
fn xmppjs_resumes_through_the_master() {
    a_real_client_resumes_through_the_master("xmppjs");
}

/// Issue 14: with stream management, offline messages are deleted only once the client
/// acknowledged them. A session that drops before that leaves them stored for the next login
/// (each still once, with its first stamp); another resource logging in meanwhile does not get
/// them twice; an acknowledgement deletes them.
#[test]
fn offline_messages_stay_stored_until_the_client_acknowledges_them() {
    let farm = TestFarm::start(2);
    let (a, b) = farm.user_pair("off", "pw");
    let mut ca = Raw::login(farm.owner(&a).c2s, &a, "pw", "r");
    chats(&mut ca, &format!("{b}@localhost"), "stored", 0..2);
    ca.sync(&format!("{b}@localhost"));
    // The first session gets them and drops without acknowledging.
    let mut phone = with_sm(&farm, &b, "phone");
    phone.send("<presence/>");
    phone.wait_for("stored-1", 5);
    drop(phone);
    // Still stored: the next login gets them, once each, with one stamp.
    let mut phone = with_sm(&farm, &b, "phone");
    phone.send("<presence/>");
    phone.wait_for("stored-1", 10);
    phone.sync("localhost");
    common::each_once_in_order(&phone.got, (0..2).map(|i| format!("stored-{i}")));
    assert_eq!(
        phone.got.matches("Offline storage").count(),
        2,
        "{}",
        phone.got
    );
    // Handed out and not yet acknowledged: another resource does not get them too.
    let mut laptop = Raw::login(farm.owner(&b).c2s, &b, "pw", "laptop");
    laptop.send("<presence/>");
    laptop.sync("localhost");
    assert!(!laptop.got.contains("stored-"), "{}", laptop.got);
    drop(laptop);
    // Acknowledged: deleted. A login after the session ends finds nothing.
    let h = stanzas_since_enabled(&phone);
    phone.send(&format!("<a xmlns='{SM}' h='{h}'/>"));
    phone.sync("localhost");
    drop(phone);
    let mut desk = Raw::login(farm.owner(&b).c2s, &b, "pw", "desk");
    desk.send("<presence/>");
    desk.sync("localhost");
    assert!(!desk.got.contains("stored-"), "{}", desk.got);
}
