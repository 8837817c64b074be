//! RFC 6120 / RFC 6121 / XEP conformance details over raw sockets against a real farm:
//! presence echoed to its sender, offline messages racing an initial presence, the IQ shape
//! rules where client stanzas enter, and what the server answers for itself and for accounts
//! (disco#info, software version, last activity).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Raw, TestFarm};

fn login(farm: &TestFarm, user: &str, res: &str) -> Raw {
    Raw::login(farm.owner(user).c2s, user, "pw", res)
}

/// `n` users on slave1 and one on slave2, with accounts: (same-slave users, the other one).
fn users(farm: &TestFarm, prefix: &str, n: usize) -> (Vec<String>, String) {
    let here = farm.users_on(prefix, "slave1", n);
    let there = farm.users_on(prefix, "slave2", 1).remove(0);
    for u in here.iter().chain([&there]) {
        farm.add_user(u, "pw");
    }
    (here, there)
}

/// A ping to the server, answered in order: everything sent before it has been handled.
fn sync(c: &mut Raw, id: &str) -> String {
    c.send(&format!(
        "<iq type='get' id='{id}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
    ));
    c.wait_for(&format!("id='{id}'"), 5)
}

/// The reply to IQ `id`, from its `id` to its end.
fn reply(c: &mut Raw, id: &str) -> String {
    let start = c.pos;
    c.wait_for(&format!("id='{id}'"), 5);
    let got = c.got[start..].to_owned();
    let at = got.find(&format!("id='{id}'")).unwrap();
    if !got[at..].contains("</iq>") && !got[at..].split('>').next().unwrap().ends_with('/') {
        c.wait_for("</iq>", 5);
    }
    let got = c.got[start..].to_owned();
    let tail = &got[at..];
    let end = tail.find("</iq>").map(|e| e + 5).unwrap_or(tail.len());
    tail[..end].to_owned()
}

/// The `seconds` attribute of the last `<query xmlns='jabber:iq:last'` in `text`.
fn seconds(text: &str) -> u64 {
    let at = text
        .rfind("<query xmlns='jabber:iq:last' seconds='")
        .unwrap();
    let rest = &text[at + "<query xmlns='jabber:iq:last' seconds='".len()..];
    rest[..rest.find('\'').unwrap()].parse().unwrap()
}

#[test]
fn presence_goes_to_the_sender_and_the_other_resources() {
    let farm = TestFarm::start(2);
    let (here, _) = users(&farm, "echo", 1);
    let u = &here[0];
    let mut r1 = login(&farm, u, "r1");
    let mut r2 = login(&farm, u, "r2");
    // RFC 6121 §4.2.2: initial presence reaches the sending resource too (Prosody: the full
    // presence, from the full JID).
    r1.send("<presence><priority>5</priority></presence>");
    let p = r1.wait_for(&format!("to='{u}@localhost/r1'"), 5);
    assert!(
        p.contains(&format!(
            "<presence from='{u}@localhost/r1' to='{u}@localhost/r1'><priority>5</priority></presence>"
        )),
        "{p}"
    );
    // r2 is not available yet: it gets nothing of r1's.
    let r = sync(&mut r2, "s1");
    assert!(!r.contains("<presence"), "{r}");
    // r2's initial presence: its own echo, r1's presence for r2, and r1 is told.
    r2.send("<presence/>");
    r2.wait_for(
        &format!("<presence from='{u}@localhost/r2' to='{u}@localhost/r2'/>"),
        5,
    );
    r2.wait_for(
        &format!("<presence from='{u}@localhost/r1' to='{u}@localhost/r2'>"),
        5,
    );
    r1.wait_for(
        &format!("<presence from='{u}@localhost/r2' to='{u}@localhost/r1'/>"),
        5,
    );
    // §4.4.2: a later broadcast, to both.
    r1.send("<presence><show>away</show></presence>");
    r1.wait_for(
        &format!("<presence from='{u}@localhost/r1' to='{u}@localhost/r1'><show>away</show>"),
        5,
    );
    r2.wait_for(
        &format!("<presence from='{u}@localhost/r1' to='{u}@localhost/r2'><show>away</show>"),
        5,
    );
    // §4.5.2: unavailable reaches the other available resource (and, as in Prosody, the
    // sender, whose stream is still open).
    r1.send("<presence type='unavailable'/>");
    r2.wait_for(
        &format!("<presence type='unavailable' from='{u}@localhost/r1' to='{u}@localhost/r2'/>"),
        5,
    );
    r1.wait_for(
        &format!("<presence type='unavailable' from='{u}@localhost/r1' to='{u}@localhost/r1'/>"),
        5,
    );
    // Each echo came once.
    let all = r1.got.clone();
    assert_eq!(
        all.matches(&format!("to='{u}@localhost/r1'><show>away"))
            .count(),
        1,
        "{all}"
    );
}

/// `trials` times: a new session of `rcpt` binds, then `sender` messages `rcpt`'s bare JID
/// while that session sends initial presence (in both orders). Each message is delivered to
/// that session exactly once, right away, and nothing is left in storage.
fn message_races_initial_presence(farm: &TestFarm, sender: &str, rcpt: &str, trials: usize) {
    let mut cs = login(farm, sender, "s");
    for i in 0..trials {
        let mut cr = login(farm, rcpt, &format!("t{i}"));
        let msg = format!(
            "<message to='{rcpt}@localhost' type='chat' id='m{i}'><body>race {i}</body></message>"
        );
        match i % 3 {
            0 => {
                cs.send(&msg);
                cr.send("<presence/>");
            }
            1 => {
                cr.send("<presence/>");
                cs.send(&msg);
            }
            _ => {
                cs.send(&msg);
                std::thread::sleep(Duration::from_millis(1));
                cr.send("<presence/>");
            }
        }
        cr.wait_for(&format!("race {i}</body>"), 5);
        sync(&mut cr, "sync");
        let got = &cr.got;
        assert_eq!(
            got.matches(&format!(">race {i}</body>")).count(),
            1,
            "trial {i}: {got}"
        );
        // Nothing from an earlier trial turned up late (stored although delivered, or left
        // in storage).
        assert_eq!(got.matches(">race ").count(), 1, "trial {i}: {got}");
        cr.send("</stream:stream>");
        cr.wait_closed(5);
    }
    // Storage is empty.
    let mut cr = login(farm, rcpt, "last");
    cr.send("<presence/>");
    let r = sync(&mut cr, "end");
    assert!(!r.contains(">race "), "{r}");
    let r = sync(&mut cs, "end");
    assert!(!cs.got.contains("type='error'"), "{r}");
}

#[test]
fn a_message_racing_initial_presence_is_delivered_once_on_one_slave() {
    let farm = TestFarm::start(2);
    let (here, _) = users(&farm, "raceone", 2);
    message_races_initial_presence(&farm, &here[0], &here[1], 30);
}

#[test]
fn a_message_racing_initial_presence_is_delivered_once_across_slaves() {
    let farm = TestFarm::start(2);
    let (here, there) = users(&farm, "raceacross", 1);
    message_races_initial_presence(&farm, &there, &here[0], 30);
}

#[test]
fn iq_shape_errors_where_client_stanzas_enter() {
    let farm = TestFarm::start(2);
    let (here, there) = users(&farm, "iqshape", 1);
    let mut c = login(&farm, &here[0], "r");
    let bad = |c: &mut Raw, iq: &str, marker: &str| {
        c.send(iq);
        let r = c.wait_for(marker, 5);
        let r = &r[r.rfind("<iq").unwrap()..];
        assert!(
            r.contains("type='error'")
                && r.contains("<error type='modify'><bad-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>"),
            "{iq}: {r}"
        );
    };
    // RFC 6120 §8.1.3: no id. The error carries none either; its text says why.
    bad(
        &mut c,
        "<iq type='get' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>",
        "an IQ needs an id attribute</text></error></iq>",
    );
    // §8.2.3: a get or set carries exactly one payload; to the server, a user here, a user on
    // another slave, another domain alike.
    for (n, to) in [
        "localhost".to_owned(),
        format!("{}@localhost", here[0]),
        format!("{there}@localhost"),
        "example.org".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        bad(
            &mut c,
            &format!("<iq type='get' id='zero{n}' to='{to}'/>"),
            &format!("id='zero{n}'"),
        );
        bad(
            &mut c,
            &format!(
                "<iq type='set' id='two{n}' to='{to}'><ping xmlns='urn:xmpp:ping'/><ping xmlns='urn:xmpp:ping'/></iq>"
            ),
            &format!("id='two{n}'"),
        );
        bad(
            &mut c,
            &format!("<iq type='fetch' id='type{n}' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>"),
            &format!("id='type{n}'"),
        );
    }
    // A result or error without id answers nothing: dropped, never answered with an error.
    c.send("<iq type='result' to='localhost'/>");
    c.send(&format!(
        "<iq type='error' to='{there}@localhost'><error type='cancel'><item-not-found xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
    ));
    let r = sync(&mut c, "after");
    assert_eq!(r.matches("<iq").count(), 1, "{r}");
    assert!(r.contains("<iq type='result' id='after'"), "{r}");
    // A well-formed IQ still works.
    c.send("<iq type='get' id='fine'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(c.wait_for("id='fine'", 5).contains("type='result'"));
}

#[test]
fn disco_version_and_last_activity() {
    let farm = TestFarm::start(2);
    let (here, b) = users(&farm, "last", 2);
    let (a, c) = (&here[0], &here[1]);
    let mut ca = login(&farm, a, "r");
    let mut cb = login(&farm, &b, "r");
    let mut cc = login(&farm, c, "r");
    // The server: disco#info names version and last activity; XEP-0092; XEP-0012 uptime.
    ca.send("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let r = reply(&mut ca, "d1");
    for f in ["jabber:iq:version", "jabber:iq:last"] {
        assert!(r.contains(&format!("<feature var='{f}'/>")), "{f}: {r}");
    }
    ca.send("<iq type='get' id='v1' to='localhost'><query xmlns='jabber:iq:version'/></iq>");
    let r = reply(&mut ca, "v1");
    assert!(
        r.contains(&format!(
            "<query xmlns='jabber:iq:version'><name>jabberfarm</name><version>{}</version></query>",
            env!("CARGO_PKG_VERSION")
        )),
        "{r}"
    );
    ca.send("<iq type='get' id='u1' to='localhost'><query xmlns='jabber:iq:last'/></iq>");
    let r = reply(&mut ca, "u1");
    assert!(seconds(&r) < 600, "{r}");

    // The account itself, no 'to': identity account/registered.
    ca.send("<iq type='get' id='o1'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    let r = reply(&mut ca, "o1");
    assert!(r.contains(&format!("from='{a}@localhost'")), "{r}");
    assert!(
        r.contains("<identity category='account' type='registered'/>")
            && r.contains("<feature var='http://jabber.org/protocol/disco#info'/>")
            && r.contains("<feature var='jabber:iq:last'/>"),
        "{r}"
    );

    // A subscribes to B (on the other slave); B approves. C has no subscription.
    // (Available, so that the approval is delivered: RFC 6121 §3.1.6.)
    ca.send("<presence/>");
    cb.send("<presence/>");
    ca.send(&format!("<presence to='{b}@localhost' type='subscribe'/>"));
    cb.wait_for("type='subscribe'", 5);
    cb.send(&format!("<presence to='{a}@localhost' type='subscribed'/>"));
    ca.wait_for("type='subscribed'", 5);

    let last_of_b = |c: &mut Raw, id: &str| {
        c.send(&format!(
            "<iq type='get' id='{id}' to='{b}@localhost'><query xmlns='jabber:iq:last'/></iq>"
        ));
        reply(c, id)
    };
    // XEP-0012 §4: B is online: 0 seconds.
    let r = last_of_b(&mut ca, "l1");
    assert!(
        r.contains("<query xmlns='jabber:iq:last' seconds='0'/>"),
        "{r}"
    );
    // Not subscribed: forbidden, and disco#info does not tell the account exists.
    let r = last_of_b(&mut cc, "l2");
    assert!(
        r.contains("type='error'") && r.contains("<forbidden"),
        "{r}"
    );
    cc.send(&format!(
        "<iq type='get' id='d2' to='{b}@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ));
    let r = reply(&mut cc, "d2");
    assert!(r.contains("<service-unavailable"), "{r}");
    ca.send(&format!(
        "<iq type='get' id='d3' to='{b}@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ));
    let r = reply(&mut ca, "d3");
    assert!(
        r.contains("<identity category='account' type='registered'/>"),
        "{r}"
    );

    // B logs out with a status: the seconds since, and the status.
    cb.send("<presence type='unavailable'><status>gone fishing</status></presence>");
    cb.send("</stream:stream>");
    cb.wait_closed(5);
    std::thread::sleep(Duration::from_millis(2100));
    let r = last_of_b(&mut ca, "l3");
    assert!(r.contains("'>gone fishing</query>"), "{r}");
    let s = seconds(&r);
    assert!((2..60).contains(&s), "{r}");
    let r = last_of_b(&mut cc, "l4");
    assert!(r.contains("<forbidden"), "{r}");
    // Back online: 0 again.
    let mut cb = login(&farm, &b, "again");
    cb.send("<presence/>");
    sync(&mut cb, "s");
    let r = last_of_b(&mut ca, "l5");
    assert!(r.contains("seconds='0'/>"), "{r}");
}
