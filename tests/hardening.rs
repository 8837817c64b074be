//! Hostile or broken peers (issue 11): each case asserts the protocol's own answer and that the
//! server still serves a normal login afterwards. The suite grows with every bug found.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{HEADER, Raw, TestFarm};

/// `[limits]` lines for tests that flood on purpose (thousands of stanzas, megabytes from one
/// session): no per-session shaper, which would otherwise slow them down by design.
const UNSHAPED: &str = "session_stanzas_per_second = 0\nsession_bytes_per_second = 0";

/// A client that gets `<proceed/>` and then says nothing loses its connection when the login
/// deadline passes, at the master and at a slave (it used to keep it forever, and
/// `max_connections` such sockets locked every user out).
#[test]
fn a_client_silent_after_proceed_is_dropped_at_the_login_deadline() {
    let farm = TestFarm::start_with(1, false, "stream_open_timeout = 2\nlogin_timeout = 3");
    for addr in [farm.master.c2s, farm.slaves[0].c2s] {
        let started = std::time::Instant::now();
        let mut c = Raw::connect(addr);
        c.send(HEADER);
        c.wait_for("</stream:features>", 5);
        c.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        c.wait_for("<proceed", 5);
        // No ClientHello: the server closes at the deadline (3 s), well before 10 s.
        c.wait_closed(10);
        let took = started.elapsed();
        assert!(
            took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(8),
            "closed after {took:?}"
        );
    }
    // And it still serves a normal login.
    farm.add_user("after@localhost", "pw");
    Raw::login(farm.owner("after").c2s, "after", "pw", "r");
}

/// Outbound subscription requests to new contacts create roster items: the roster cap (2,000
/// items) holds for them as for roster sets — the next one gets `resource-constraint`, and
/// nothing is added.
#[test]
fn subscribe_presences_cannot_grow_the_roster_past_its_cap() {
    let farm = TestFarm::start_with(
        1,
        false,
        &format!("stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2\n{UNSHAPED}"),
    );
    farm.add_user("hoarder@localhost", "pw");
    let mut c = Raw::login(farm.slaves[0].c2s, "hoarder", "pw", "r");
    // 2,000 new contacts in one write (they do not exist; the roster items do).
    let mut batch = String::new();
    for i in 0..2000 {
        batch.push_str(&format!("<presence to='c{i}@localhost' type='subscribe'/>"));
    }
    c.send(&batch);
    c.send("<iq type='get' id='count'><query xmlns='jabber:iq:roster'/></iq>");
    c.wait_for("id='count'", 60);
    // From the result's start tag to its end: its items only (pushes come as their own iqs).
    let got = c.wait_for("</query>", 30);
    let got = &got[..got.find("</query>").unwrap()];
    assert_eq!(got.matches("<item ").count(), 2000, "{got}");
    c.send("<presence to='one-more@localhost' type='subscribe' id='over'/>");
    let got = c.wait_for("<resource-constraint", 10);
    let at = got.find("<resource-constraint").unwrap();
    let err = &got[got[..at].rfind("<presence").unwrap()..at];
    assert!(
        err.contains("id='over'") && err.contains("type='error'"),
        "{err}"
    );
    c.send("<iq type='get' id='count2'><query xmlns='jabber:iq:roster'/></iq>");
    c.wait_for("id='count2'", 10);
    let again = c.wait_for("</query>", 10);
    let again = &again[..again.find("</query>").unwrap()];
    assert!(!again.contains("one-more@localhost"), "the item was added");
    assert_eq!(again.matches("<item ").count(), 2000);
    // The account still works.
    Raw::login(farm.slaves[0].c2s, "hoarder", "pw", "r2");
}

/// A one-slave farm with `limits.write_timeout = write_timeout`, and two sessions on it:
/// `stalled@localhost/r` (available; the test stops reading it) and `talker@localhost/r`.
fn stalled_and_talker(write_timeout: u64) -> (TestFarm, Raw, Raw) {
    let farm = TestFarm::start_with(
        1,
        false,
        &format!(
            "stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2\n\
             write_timeout = {write_timeout}\n{UNSHAPED}"
        ),
    );
    for u in ["stalled", "talker"] {
        farm.add_user(&format!("{u}@localhost"), "pw");
    }
    let slave = farm.slaves[0].c2s;
    let mut stalled = Raw::login(slave, "stalled", "pw", "r");
    stalled.send("<presence/>");
    stalled.wait_for("<presence", 5);
    let talker = Raw::login(slave, "talker", "pw", "r");
    (farm, stalled, talker)
}

/// A client that stops reading does not pin its session: once a write has waited
/// `limits.write_timeout` for it, the session ends (its contacts see it go) and the account
/// logs in again normally.
#[test]
fn a_client_that_stops_reading_loses_its_session_after_the_write_timeout() {
    let (farm, stalled, mut talker) = stalled_and_talker(2);
    let slave = farm.slaves[0].c2s;
    // 8 MB for a reader that reads nothing: more than the socket buffers hold.
    let body = "x".repeat(100_000);
    for i in 0..80 {
        talker.send(&format!(
            "<message to='stalled@localhost/r' type='chat' id='m{i}'><body>{body}</body></message>"
        ));
    }
    farm.wait_log(
        "dropping the session: the peer took nothing for 2 s jid=stalled@localhost/r",
        20,
    );
    farm.wait_log("session ended jid=stalled@localhost/r", 10);
    drop(stalled);
    Raw::login(slave, "stalled", "pw", "r");
}

/// The same through the master's relay: the relay gives up on a client that takes nothing,
/// as the slave gives up on the session.
#[test]
fn a_relayed_client_that_stops_reading_frees_the_relay_and_the_session() {
    let mut farm = TestFarm::start_with(
        1,
        false,
        &format!(
            "stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2\nwrite_timeout = 2\n\
             {UNSHAPED}"
        ),
    );
    farm.restart_with_config(|t| format!("{t}\n[relay]\nredirect = \"never\"\n"));
    for u in ["stalled", "talker"] {
        farm.add_user(&format!("{u}@localhost"), "pw");
    }
    let mut stalled = Raw::login(farm.master.c2s, "stalled", "pw", "r");
    stalled.send("<presence/>");
    stalled.wait_for("<presence", 5);
    let mut talker = Raw::login(farm.slaves[0].c2s, "talker", "pw", "r");
    let body = "x".repeat(100_000);
    for i in 0..80 {
        talker.send(&format!(
            "<message to='stalled@localhost/r' type='chat' id='m{i}'><body>{body}</body></message>"
        ));
    }
    farm.wait_log("relayed stream ended: a side took nothing for 2 s", 20);
    farm.wait_log("session ended jid=stalled@localhost/r", 20);
    drop(stalled);
    Raw::login(farm.master.c2s, "stalled", "pw", "r");
}

/// A full node refuses more connections at once: on the plain port with
/// `<resource-constraint/>`, on the direct-TLS port by closing before any TLS handshake (it
/// used to run the handshake, CPU an attacker could make it spend, to refuse afterwards).
#[test]
fn a_full_node_refuses_without_a_tls_handshake_and_serves_again_when_freed() {
    let farm = TestFarm::start_with(
        1,
        false,
        "stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2\nmax_connections = 2",
    );
    let slave = &farm.slaves[0];
    let held: Vec<Raw> = (0..2)
        .map(|_| {
            let mut c = Raw::connect(slave.c2s);
            c.send(HEADER);
            c.wait_for("</stream:features>", 5);
            c
        })
        .collect();
    let mut plain = Raw::connect(slave.c2s);
    let refused = plain.wait_closed(5);
    assert!(refused.contains("<resource-constraint"), "{refused}");
    // A ClientHello gets no answer at all: the connection is closed first.
    let mut tls = Raw::connect(slave.c2s_tls);
    tls.send_bytes(&[0x16, 0x03, 0x01, 0x00, 0x05, 0x01, 0x00, 0x00, 0x01, 0x00]);
    let answer = tls.wait_closed(5);
    assert!(answer.is_empty(), "{answer:?}");
    farm.wait_log("connection limit reached (direct TLS: closed)", 5);
    drop(held);
    farm.add_user("back@localhost", "pw");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    // The slots come back as soon as the server sees the held connections go.
    loop {
        let mut c = Raw::connect(slave.c2s);
        c.send(HEADER);
        let r = c.wait_closed_or("</stream:features>", 5);
        if r.contains("</stream:features>") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never served again: {r}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// A login that replaces a session whose client stopped reading (its queue full, its writes
/// waiting) ends that session at once, not after `limits.write_timeout`: the `<conflict/>`
/// signal travels apart from the stanza queue, so it cannot be dropped when the queue is full
/// (it was, and the replaced session lived on).
#[test]
fn a_replaced_session_ends_even_when_its_queue_is_full() {
    let (farm, stalled, mut talker) = stalled_and_talker(60);
    let slave = farm.slaves[0].c2s;
    // Enough to fill the socket buffers and the session's queue (1,024 stanzas).
    let body = "x".repeat(8_000);
    let mut batch = String::new();
    for i in 0..3000 {
        batch.push_str(&format!(
            "<message to='stalled@localhost/r' type='chat' id='m{i}'><body>{body}</body></message>"
        ));
        if batch.len() > 1_000_000 {
            talker.send(&batch);
            batch.clear();
        }
    }
    talker.send(&batch);
    talker.send("<iq type='get' id='sync'><ping xmlns='urn:xmpp:ping'/></iq>");
    talker.wait_for("id='sync'", 30);
    // The same resource logs in again: the stalled session is told to go, and goes now.
    let mut again = Raw::login(slave, "stalled", "pw", "r");
    farm.wait_log("session ended jid=stalled@localhost/r", 10);
    again.send("<presence/>");
    again.wait_for("<presence", 5);
    talker.send("<message to='stalled@localhost/r' type='chat' id='new'><body>to the new one</body></message>");
    again.wait_for("to the new one", 10);
    drop(stalled);
}

/// One SASL PLAIN attempt on a fresh connection: the `<success/>` or `<failure/>` text.
fn plain_attempt(addr: std::net::SocketAddr, user: &str, password: &str) -> String {
    let mut c = Raw::connect(addr);
    c.send(HEADER);
    c.wait_for("</stream:features>", 5);
    c.send(&common::plain_auth(user, password));
    let out = c.wait_for("urn:ietf:params:xml:ns:xmpp-sasl", 10);
    if out.contains("<success") {
        return out;
    }
    c.wait_closed_or("</failure>", 5)
}

/// Brute force (`[auth_limits]`): after the allowance, an account (from any address) and an
/// address (for any account) must wait, the wait doubling; an early attempt is refused with
/// `<temporary-auth-failure/>` and the wait in the text — even with the right password, which
/// is never checked — and after the wait the right password works again.
#[test]
fn failed_logins_make_the_account_and_the_address_wait() {
    let farm = TestFarm::start_edited(1, |t| {
        format!(
            "{t}\n[auth_limits]\nper_address = 6\nper_account = 3\nwait = 2\nmax_wait = 8\nforget = 60\n"
        )
    });
    farm.add_user("victim@localhost", "right");
    farm.add_user("other@localhost", "right");
    let slave = farm.slaves[0].c2s;
    for _ in 0..3 {
        let out = plain_attempt(slave, "victim", "wrong");
        assert!(out.contains("<not-authorized/>"), "{out}");
    }
    // Three failures: the account waits 2 s, and the right password is not even tried.
    let out = plain_attempt(slave, "victim", "right");
    assert!(
        out.contains("<temporary-auth-failure/>")
            && out.contains("too many failed logins for this account; try again in 2 s"),
        "{out}"
    );
    farm.wait_log(
        "failed logins for this account: further attempts must wait",
        5,
    );
    // Another account from the same address is not touched (yet).
    assert!(plain_attempt(slave, "other", "right").contains("<success"));
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(plain_attempt(slave, "victim", "right").contains("<success"));

    // Six failures from this address, each for a different name: then every account waits.
    for i in 0..3 {
        let out = plain_attempt(slave, &format!("nobody{i}"), "guess");
        assert!(out.contains("<not-authorized/>"), "{out}");
    }
    let out = plain_attempt(slave, "other", "right");
    assert!(
        out.contains("<temporary-auth-failure/>")
            && out.contains("too many failed logins for this address"),
        "{out}"
    );
    farm.wait_log(
        "failed logins from this address: further attempts must wait",
        5,
    );
    // The wait passes; one more failure doubles it (4 s).
    std::thread::sleep(std::time::Duration::from_millis(2100));
    assert!(plain_attempt(slave, "nobody9", "guess").contains("<not-authorized/>"));
    let out = plain_attempt(slave, "other", "right");
    assert!(out.contains("try again in 4 s"), "{out}");
    std::thread::sleep(std::time::Duration::from_millis(4100));
    Raw::login(slave, "other", "right", "r");
}

/// Inbound s2s before dialback (issue 11): read with the pre-authentication limits; dialback
/// checks run off the read loop, at most 4 at once and 16 per stream — the master dials the
/// domain each `<db:result/>` names, so an unbounded stream of them made it dial without end,
/// one at a time, while the stream waited.
#[test]
fn s2s_before_dialback_is_bounded() {
    use std::net::{SocketAddr, TcpListener};
    let s2s: SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    // Accepts connections (the kernel does) but never answers: a check against it waits.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let closed = common::free_port();
    let farm = TestFarm::start_edited(1, |text| {
        let mut routes = String::new();
        for i in 0..8 {
            routes.push_str(&format!("\"slow{i}.test\" = \"{silent_addr}\"\n"));
        }
        for i in 0..20 {
            routes.push_str(&format!("\"gone{i}.test\" = \"127.0.0.1:{closed}\"\n"));
        }
        text.replace(
            "name = \"master\"\nrole = \"master\"\n",
            &format!("name = \"master\"\nrole = \"master\"\ns2s = \"{s2s}\"\n"),
        ) + &format!("\n[s2s]\nconnect_timeout = 5\n\n[s2s.routes]\n{routes}")
    });
    let header = |from: &str| {
        format!(
            "<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{from}' to='localhost' version='1.0'>"
        )
    };

    // 1. A 20 KB stanza before any domain is authenticated: over the 10 KiB pre-auth limit.
    let mut c = Raw::connect(s2s);
    c.send(&header("slow0.test"));
    c.wait_for("</stream:features>", 5);
    let body = "x".repeat(20_000);
    c.send(&format!(
        "<message from='a@slow0.test' to='b@localhost'><body>{body}</body></message>"
    ));
    let got = c.wait_closed(5);
    assert!(
        got.contains("<policy-violation") && got.contains("stanza larger than 10240 bytes"),
        "{got}"
    );

    // 2. Five checks at once against a server that never answers: the fifth is refused now,
    // not after the first four time out one by one.
    let mut c = Raw::connect(s2s);
    c.send(&header("slow0.test"));
    c.wait_for("</stream:features>", 5);
    let started = std::time::Instant::now();
    for i in 0..5 {
        c.send(&format!(
            "<db:result from='slow{i}.test' to='localhost'>0123456789abcdef</db:result>"
        ));
    }
    let got = c.wait_closed(4);
    assert!(
        got.contains("<policy-violation") && got.contains("too many dialback requests"),
        "{got}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(3));

    // 3. One after the other, each answered: the seventeenth ends the stream.
    let mut c = Raw::connect(s2s);
    c.send(&header("gone0.test"));
    c.wait_for("</stream:features>", 5);
    for i in 0..16 {
        c.send(&format!(
            "<db:result from='gone{i}.test' to='localhost'>0123456789abcdef</db:result>"
        ));
        c.wait_for(&format!("to='gone{i}.test' type='invalid'"), 10);
    }
    c.send("<db:result from='gone16.test' to='localhost'>0123456789abcdef</db:result>");
    let got = c.wait_closed(5);
    assert!(got.contains("too many dialback requests"), "{got}");
    drop(silent);

    // The master still serves.
    farm.add_user("after@localhost", "pw");
    Raw::login(farm.owner("after").c2s, "after", "pw", "r");
}

/// `limits.max_resources`: one account may have so many resources bound at once; one more
/// gets `<resource-constraint/>` (RFC 6120 §7.6.2.2) and may try again once another left.
/// Logging in again with a bound resource replaces it and is not "one more".
#[test]
fn an_account_has_at_most_max_resources_bound() {
    let farm = TestFarm::start_with(
        1,
        false,
        "stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2\nmax_resources = 3",
    );
    farm.add_user("many@localhost", "pw");
    let slave = farm.slaves[0].c2s;
    let mut held: Vec<Raw> = (0..3)
        .map(|i| Raw::login(slave, "many", "pw", &format!("r{i}")))
        .collect();
    let bind = |resource: &str| {
        let mut c = Raw::connect(slave);
        c.send(HEADER);
        c.wait_for("</stream:features>", 5);
        c.send(&common::plain_auth("many", "pw"));
        c.wait_for("<success", 5);
        c.send(HEADER);
        c.wait_for("</stream:features>", 5);
        c.send(&format!("<iq type='set' id='b'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>{resource}</resource></bind></iq>"));
        let got = c.wait_for("</iq>", 5);
        (c, got)
    };
    let (mut fourth, got) = bind("r3");
    assert!(
        got.contains("type='error'") && got.contains("<resource-constraint"),
        "{got}"
    );
    // The same connection may try again once a resource went.
    let gone = held.remove(0);
    drop(gone);
    farm.wait_log("session ended jid=many@localhost/r0", 5);
    fourth.send("<iq type='set' id='b2'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>r3</resource></bind></iq>");
    let got = fourth.wait_for("</iq>", 5);
    assert!(got.contains("<jid>many@localhost/r3</jid>"), "{got}");
    // Replacing a bound resource is allowed at the limit.
    let (_again, got) = bind("r1");
    assert!(got.contains("<jid>many@localhost/r1</jid>"), "{got}");
}

/// A remote domain's server, as far as dialback needs one: every stream gets our header and
/// empty features, every `<db:verify/>` and every `<db:result/>` is answered `valid`, and
/// everything received is kept in the returned text (what the farm sends the domain).
fn fake_remote(
    domain: &'static str,
) -> (
    std::net::SocketAddr,
    std::sync::Arc<std::sync::Mutex<String>>,
) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let all = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let kept = all.clone();
    std::thread::spawn(move || {
        for sock in listener.incoming() {
            let Ok(mut sock) = sock else { return };
            let kept = kept.clone();
            std::thread::spawn(move || {
                let mut got = String::new();
                let mut buf = [0u8; 65536];
                let mut greeted = false;
                while let Ok(n) = sock.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    kept.lock().unwrap().push_str(&text);
                    got.push_str(&text);
                    if !greeted && got.contains("<stream:stream") {
                        greeted = true;
                        let _ = sock.write_all(format!("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='{domain}' id='fake' version='1.0'><stream:features/>").as_bytes());
                    }
                    for (close, kind) in [("</db:verify>", "verify"), ("</db:result>", "result")] {
                        while let Some(end) = got.find(close) {
                            let v = got[..end].to_owned();
                            got = got[end + close.len()..].to_owned();
                            let id = v
                                .split("id='")
                                .nth(1)
                                .and_then(|r| r.split('\'').next())
                                .map(|id| format!(" id='{id}'"))
                                .unwrap_or_default();
                            let _ = sock.write_all(
                                format!(
                                    "<db:{kind} from='{domain}' to='localhost'{id} type='valid'/>"
                                )
                                .as_bytes(),
                            );
                        }
                    }
                }
            });
        }
    });
    (addr, all)
}

/// Subscription requests waiting for an answer are bounded per user (1,000): a remote domain
/// sending them from ever new addresses gets `resource-constraint` for the one after, and the
/// user is handed 1,000 at login, not an unbounded pile in one write.
#[test]
fn pending_subscription_requests_are_bounded_per_user() {
    let s2s: std::net::SocketAddr = format!("127.0.0.1:{}", common::free_port())
        .parse()
        .unwrap();
    let (evil, evil_got) = fake_remote("evil.test");
    let farm = TestFarm::start_edited(1, |text| {
        text.replace(
            "name = \"master\"\nrole = \"master\"\n",
            &format!("name = \"master\"\nrole = \"master\"\ns2s = \"{s2s}\"\n"),
        ) + &format!("\n[s2s]\nconnect_timeout = 5\n\n[s2s.routes]\n\"evil.test\" = \"{evil}\"\n")
    });
    farm.add_user("target@localhost", "pw");
    let mut c = Raw::connect(s2s);
    c.send("<?xml version='1.0'?><stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback' from='evil.test' to='localhost' version='1.0'>");
    c.wait_for("</stream:features>", 5);
    c.send("<db:result from='evil.test' to='localhost'>0123456789abcdef</db:result>");
    c.wait_for("type='valid'", 10);
    let mut batch = String::new();
    for i in 0..1001 {
        batch.push_str(&format!(
            "<presence type='subscribe' from='fan{i}@evil.test' to='target@localhost' id='s{i}'/>"
        ));
    }
    c.send(&batch);
    // The one over the bound comes back to evil.test as an error.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let got = evil_got.lock().unwrap().clone();
        if let Some(at) = got.find("<resource-constraint") {
            let err = &got[got[..at].rfind("<presence").unwrap()..at];
            assert!(
                err.contains("id='s1000'") && err.contains("type='error'"),
                "{err}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no error came back: {got}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let mut t = Raw::login(farm.owner("target").c2s, "target", "pw", "r");
    t.send("<presence/>");
    let got = t.wait_for("fan999@evil.test", 20);
    assert_eq!(got.matches("type='subscribe'").count(), 1000, "{got}");
    assert!(!got.contains("fan1000@evil.test"));
}

/// Directed presence (RFC 6121 §4.6) is remembered per target so that unavailable follows
/// it; one resource may track 1,000 targets, and one more directed presence is refused with
/// `resource-constraint` instead of growing the session without bound.
#[test]
fn directed_presence_targets_are_bounded_per_session() {
    let farm = TestFarm::start(1);
    farm.add_user("talkative@localhost", "pw");
    let mut c = Raw::login(farm.slaves[0].c2s, "talkative", "pw", "r");
    c.send("<presence/>");
    c.wait_for("<presence", 5);
    let mut batch = String::new();
    for i in 0..1001 {
        batch.push_str(&format!("<presence to='someone{i}@localhost' id='d{i}'/>"));
    }
    c.send(&batch);
    let got = c.wait_for("<resource-constraint", 20);
    let at = got.find("<resource-constraint").unwrap();
    let err = &got[got[..at].rfind("<presence").unwrap()..at];
    assert!(
        err.contains("id='d1000'") && err.contains("type='error'"),
        "{err}"
    );
}

/// Every remote domain a user writes to costs the slave a resolution, a connection and a
/// task: `s2s.max_domains` bounds how many are open or being set up at once, and a stanza for
/// one more gets `resource-constraint` at once.
#[test]
fn outbound_s2s_domains_at_once_are_bounded() {
    // Accepts connections (the kernel does) and never answers: each stream stays "being set
    // up" for the whole connect_timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = silent.local_addr().unwrap();
    let farm = TestFarm::start_edited(1, |text| {
        format!(
            "{text}\n[s2s]\nconnect_timeout = 10\nmax_domains = 2\n\n[s2s.routes]\n\
             \"a.test\" = \"{at}\"\n\"b.test\" = \"{at}\"\n\"c.test\" = \"{at}\"\n"
        )
    });
    farm.add_user("writer@localhost", "pw");
    let mut c = Raw::login(farm.slaves[0].c2s, "writer", "pw", "r");
    for d in ["a", "b", "c"] {
        c.send(&format!(
            "<message to='x@{d}.test' type='chat' id='to-{d}'><body>hi</body></message>"
        ));
    }
    let got = c.wait_for("<resource-constraint", 5);
    let at = got.find("<resource-constraint").unwrap();
    let err = &got[got[..at].rfind("<message").unwrap()..at];
    assert!(
        err.contains("id='to-c'") && err.contains("type='error'"),
        "{err}"
    );
    drop(silent);
}

/// The per-session shaper (`limits.session_*`): a client sending faster than the sustained
/// rate past its burst is slowed down (the session stops reading for a while) — and loses
/// nothing: every request is answered, in order.
#[test]
fn a_flooding_client_is_slowed_down_and_loses_nothing() {
    let farm = TestFarm::start_with(
        1,
        false,
        "stream_open_timeout = 3\nlogin_timeout = 10\nshutdown_grace = 2\n\
         session_stanzas_per_second = 20\nsession_stanza_burst = 20",
    );
    farm.add_user("flood@localhost", "pw");
    let mut c = Raw::login(farm.slaves[0].c2s, "flood", "pw", "r");
    let started = std::time::Instant::now();
    let mut batch = String::new();
    for i in 0..100 {
        batch.push_str(&format!(
            "<iq type='get' id='p{i}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ));
    }
    c.send(&batch);
    let got = c.wait_for("id='p99'", 20);
    let took = started.elapsed();
    // 20 at once, then 80 at 20 per second: about 4 s (the login's stanzas count too).
    assert!(took >= std::time::Duration::from_secs(3), "{took:?}");
    let order: Vec<usize> = got
        .match_indices("id='p")
        .map(|(i, _)| {
            let rest = &got[i + 5..];
            rest[..rest.find('\'').unwrap()].parse().unwrap()
        })
        .collect();
    assert_eq!(order, (0..100).collect::<Vec<_>>());
    farm.wait_log(
        "sending faster than limits.session_* allow; reading slowed down jid=flood@localhost/r",
        5,
    );
}

/// Payloads the fuzzer found (docs/fuzzing.md, F1-F4) cross the farm link to a user on
/// another slave intact; before, the first of them made the receiving slave drop the link
/// ("bad frame"), cutting every user of one slave off from every user of the other.
#[test]
fn payloads_that_once_broke_a_farm_link_arrive_intact() {
    let farm = TestFarm::start(2);
    let users = farm.users_on_every_slave("frame", 1);
    let a = &users.iter().find(|(_, o)| o == "slave1").unwrap().0;
    let b = &users.iter().find(|(_, o)| o == "slave2").unwrap().0;
    for u in [a, b] {
        farm.add_user(u, "pw");
    }
    let mut ca = Raw::login(farm.owner(a).c2s, a, "pw", "r");
    let mut cb = Raw::login(farm.owner(b).c2s, b, "pw", "r");
    for (i, payload) in [
        "<x xmlns='jabber:server'><y xmlns='jabber:server:dialback'/></x>",
        "<y xmlns='jabber:server:dialback'/>",
        "<z xmlns:q='urn:a}b' q:w='v'/>",
        "<xml:x/>",
        "<body>tab&#9;cr&#13;end</body>",
    ]
    .iter()
    .enumerate()
    {
        ca.send(&format!(
            "<message to='{b}@localhost/r' id='odd{i}' type='headline'>{payload}</message>"
        ));
        let got = cb.wait_for(&format!("id='odd{i}'"), 5);
        assert!(!got.contains("type='error'"), "{got}");
    }
    // A carriage return that came as a character reference is written as one again (a tab
    // in text needs none: only attribute values normalize it).
    let body = cb.got.rsplit("<body>").next().unwrap_or("");
    assert!(body.starts_with("tab\tcr&#13;end</body>"), "{body:?}");
    ca.send(&format!(
        "<message to='{b}@localhost/r' type='chat'><body>link still up</body></message>"
    ));
    cb.wait_for("link still up", 5);
    assert!(!farm.log().contains("bad frame"), "a link was dropped");
}
