//! RFC 6121 across the farm over raw sockets: exact stanzas for roster, subscriptions,
//! presence, offline storage and vCards, with the two users on different slaves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Raw, TestFarm};

/// A on slave1, B on slave2, both with accounts.
fn users(farm: &TestFarm, prefix: &str) -> (String, String) {
    farm.user_pair(prefix, "pw")
}

fn login(farm: &TestFarm, user: &str, res: &str) -> Raw {
    Raw::login(farm.owner(user).c2s, user, "pw", res)
}

fn roster_get(c: &mut Raw, id: &str) -> String {
    c.send(&format!(
        "<iq type='get' id='{id}'><query xmlns='jabber:iq:roster'/></iq>"
    ));
    let start = c.pos;
    c.wait_for(&format!("id='{id}'"), 5);
    let complete = |c: &Raw| {
        let at = start + c.got[start..].find(&format!("id='{id}'")).unwrap();
        let tail = &c.got[at..];
        tail.contains("</iq>") || tail.split('>').next().is_some_and(|t| t.ends_with('/'))
    };
    while !complete(c) {
        c.wait_for("</iq>", 5);
    }
    c.got[start..].to_owned()
}

/// The subscription handshake both ways, returning both sessions with presence sent.
fn subscribed_pair(farm: &TestFarm, a: &str, b: &str) -> (Raw, Raw) {
    let mut ca = login(farm, a, "ra");
    let mut cb = login(farm, b, "rb");
    roster_get(&mut ca, "r1");
    roster_get(&mut cb, "r1");
    ca.send("<presence/>");
    cb.send("<presence/>");
    // A asks B.
    ca.send(&format!("<presence to='{b}@localhost' type='subscribe'/>"));
    // A's roster push: none + ask.
    let push = ca.wait_for("ask='subscribe'", 5);
    assert!(push.contains(&format!("jid='{b}@localhost'")), "{push}");
    // B gets the request from A's bare JID.
    let r = cb.wait_for("type='subscribe'", 5);
    assert!(r.contains(&format!("from='{a}@localhost'")), "{r}");
    cb.send(&format!("<presence to='{a}@localhost' type='subscribed'/>"));
    // B's roster: from. A's roster: to. A sees B's presence.
    cb.wait_for("subscription='from'", 5);
    ca.wait_for("subscription='to'", 5);
    ca.wait_for(&format!("<presence from='{b}@localhost/rb'"), 5);
    // And back.
    cb.send(&format!("<presence to='{a}@localhost' type='subscribe'/>"));
    ca.wait_for("type='subscribe'", 5);
    ca.send(&format!("<presence to='{b}@localhost' type='subscribed'/>"));
    ca.wait_for("subscription='both'", 5);
    cb.wait_for("subscription='both'", 5);
    cb.wait_for(&format!("<presence from='{a}@localhost/ra'"), 5);
    (ca, cb)
}

#[test]
fn subscription_handshake_both_ways_across_slaves() {
    let farm = TestFarm::start(2);
    let (a, b) = users(&farm, "sub");
    let (mut ca, mut cb) = subscribed_pair(&farm, &a, &b);
    // The stored rosters say both, with versions.
    let r = roster_get(&mut ca, "r2");
    assert!(
        r.contains(&format!("<item jid='{b}@localhost' subscription='both'/>")),
        "{r}"
    );
    let r = roster_get(&mut cb, "r2");
    assert!(
        r.contains(&format!("<item jid='{a}@localhost' subscription='both'/>")),
        "{r}"
    );
    // A presence change reaches the contact; unavailable too.
    ca.send("<presence><show>away</show><status>lunch</status></presence>");
    let p = cb.wait_for("lunch", 5);
    assert!(p.contains("<show>away</show>"), "{p}");
    ca.send("<presence type='unavailable'/>");
    let p = cb.wait_for("type='unavailable'", 5);
    assert!(p.contains(&format!("from='{a}@localhost/ra'")), "{p}");
}

#[test]
fn roster_versioning_set_and_remove() {
    let farm = TestFarm::start(2);
    let (a, b) = users(&farm, "ver");
    let mut ca = login(&farm, &a, "r");
    let r = roster_get(&mut ca, "g1");
    assert!(
        r.contains("<query xmlns='jabber:iq:roster' ver='0'/>"),
        "{r}"
    );
    ca.send(&format!(
        "<iq type='set' id='s1'><query xmlns='jabber:iq:roster'><item jid='{b}@localhost' name='Bee'><group>Friends, old</group></item></query></iq>"
    ));
    let r = ca.wait_for("id='s1'", 5);
    // Push first (ver 1), then the result.
    assert!(
        r.contains("ver='1'")
            && r.contains("name='Bee'")
            && r.contains("<group>Friends, old</group>"),
        "{r}"
    );
    assert!(r.contains("<iq type='result' id='s1'"), "{r}");
    // Same version: empty result (RFC 6121 §2.6.3).
    ca.send("<iq type='get' id='g2'><query xmlns='jabber:iq:roster' ver='1'/></iq>");
    let r = ca.wait_for("id='g2'", 5);
    assert!(r.contains("<iq type='result' id='g2'"), "{r}");
    assert!(!r.contains("<item"), "{r}");
    // Remove: push with subscription='remove'.
    ca.send(&format!(
        "<iq type='set' id='s2'><query xmlns='jabber:iq:roster'><item jid='{b}@localhost' subscription='remove'/></query></iq>"
    ));
    let r = ca.wait_for("id='s2'", 5);
    assert!(
        r.contains("subscription='remove'") && r.contains("ver='2'"),
        "{r}"
    );
    // Two items in one set is a bad request.
    ca.send("<iq type='set' id='s3'><query xmlns='jabber:iq:roster'><item jid='x@localhost'/><item jid='y@localhost'/></query></iq>");
    let r = ca.wait_for("id='s3'", 5);
    assert!(r.contains("<bad-request"), "{r}");
    // Nobody else may read A's roster.
    let mut cb = login(&farm, &b, "r");
    cb.send(&format!(
        "<iq type='get' to='{a}@localhost' id='spy'><query xmlns='jabber:iq:roster'/></iq>"
    ));
    let r = cb.wait_for("id='spy'", 5);
    assert!(r.contains("<forbidden"), "{r}");
}

#[test]
fn offline_messages_arrive_in_order_with_delay() {
    let farm = TestFarm::start(2);
    let (a, b) = users(&farm, "off");
    let mut ca = login(&farm, &a, "r");
    ca.send("<presence/>");
    for i in 1..=3 {
        ca.send(&format!(
            "<message to='{b}@localhost' type='chat'><body>offline {i}</body></message>"
        ));
    }
    // Nothing bounces. The barrier is an IQ to b's account: b's slave answers it (for a
    // non-contact: service-unavailable) after it has handled (stored) the messages before
    // it, and would have sent any bounce first. (A ping to the domain, as before, was
    // answered by a's own slave and proved nothing.)
    ca.send(&format!(
        "<iq type='get' id='sync' to='{b}@localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    ));
    let r = ca.wait_for("id='sync'", 5);
    assert!(r.contains(&format!("from='{b}@localhost'")), "{r}");
    assert!(!r.contains("<message"), "a message bounced: {r}");
    let mut cb = login(&farm, &b, "r");
    // Nothing before initial presence...
    cb.send("<presence/>");
    let got = cb.wait_for("offline 3", 5);
    let i1 = got.find("offline 1").unwrap();
    let i2 = got.find("offline 2").unwrap();
    let i3 = got.find("offline 3").unwrap();
    assert!(i1 < i2 && i2 < i3, "{got}");
    assert_eq!(
        got.matches("<delay xmlns='urn:xmpp:delay' from='localhost' stamp='")
            .count(),
        3,
        "{got}"
    );
    assert!(got.contains(&format!("from='{a}@localhost/r'")), "{got}");
    // Delivered once: a second login gets none.
    drop(cb);
    let mut cb2 = login(&farm, &b, "r2");
    cb2.send("<presence/>");
    cb2.send("<iq type='get' id='p' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    let r = cb2.wait_for("id='p'", 5);
    assert!(!r.contains("offline 1"), "{r}");
}

#[test]
fn a_dropped_connection_turns_unavailable_for_contacts() {
    let farm = TestFarm::start(2);
    let (a, b) = users(&farm, "drop");
    let (mut ca, cb) = subscribed_pair(&farm, &a, &b);
    // B's socket goes away without </stream:stream>.
    cb.tcp().shutdown(std::net::Shutdown::Both).unwrap();
    drop(cb);
    let p = ca.wait_for("type='unavailable'", 5);
    assert!(p.contains(&format!("from='{b}@localhost/rb'")), "{p}");
}

#[test]
fn probes_tell_a_new_session_who_is_online() {
    let farm = TestFarm::start(2);
    let (a, b) = users(&farm, "probe");
    let (mut ca, mut cb) = subscribed_pair(&farm, &a, &b);
    ca.send("</stream:stream>");
    ca.wait_closed(5);
    cb.wait_for("type='unavailable'", 5);
    // A comes back: its probe is answered with B's presence.
    let mut ca = login(&farm, &a, "again");
    ca.send("<presence/>");
    // The probe went from A's bare JID; the answer comes to it (RFC 6121 §4.3.2).
    let p = ca.wait_for(&format!("<presence from='{b}@localhost/rb'"), 5);
    let p = &p[p.rfind("<presence from=").unwrap()..];
    assert!(
        p.starts_with(&format!(
            "<presence from='{b}@localhost/rb' to='{a}@localhost"
        )),
        "{p}"
    );
}

#[test]
fn pre_approval_and_pending_requests() {
    let farm = TestFarm::start(2);
    let (a, b) = users(&farm, "pre");
    // B pre-approves A (RFC 6121 §3.4): nothing goes out; B's roster shows approved.
    let mut cb = login(&farm, &b, "r");
    roster_get(&mut cb, "r1");
    cb.send(&format!("<presence to='{a}@localhost' type='subscribed'/>"));
    let push = cb.wait_for("approved='true'", 5);
    assert!(push.contains("subscription='none'"), "{push}");
    // A subscribes and is approved automatically.
    let mut ca = login(&farm, &a, "r");
    roster_get(&mut ca, "r1");
    ca.send(&format!("<presence to='{b}@localhost' type='subscribe'/>"));
    // The roster push comes first, then the approval itself.
    ca.wait_for("subscription='to'", 5);
    ca.wait_for(
        &format!("from='{b}@localhost' to='{a}@localhost' type='subscribed'"),
        5,
    );
    // A request that waits: B subscribes to A while A is offline; A gets it at login.
    ca.send("</stream:stream>");
    ca.wait_closed(5);
    cb.send(&format!("<presence to='{a}@localhost' type='subscribe'/>"));
    // A's slave has kept the request once it answers a ping to A sent after it.
    cb.sync(&format!("{a}@localhost"));
    let mut ca = login(&farm, &a, "back");
    ca.send("<presence/>");
    let r = ca.wait_for("type='subscribe'", 5);
    assert!(r.contains(&format!("from='{b}@localhost'")), "{r}");
}

#[test]
fn vcards_across_the_farm() {
    let farm = TestFarm::start(2);
    let (a, b) = users(&farm, "card");
    let mut ca = login(&farm, &a, "r");
    ca.send("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Alice Liddell</FN><NICKNAME>al</NICKNAME></vCard></iq>");
    assert!(ca.wait_for("id='v1'", 5).contains("type='result'"));
    let mut cb = login(&farm, &b, "r");
    cb.send(&format!(
        "<iq type='get' id='v2' to='{a}@localhost'><vCard xmlns='vcard-temp'/></iq>"
    ));
    let r = cb.wait_for("</iq>", 5);
    assert!(
        r.contains("<FN>Alice Liddell</FN>") && r.contains(&format!("from='{a}@localhost'")),
        "{r}"
    );
    // Only the owner may set it.
    cb.send(&format!("<iq type='set' id='v3' to='{a}@localhost'><vCard xmlns='vcard-temp'><FN>Mallory</FN></vCard></iq>"));
    assert!(cb.wait_for("id='v3'", 5).contains("<forbidden"));
    // disco#info lists what the server supports.
    cb.send("<iq type='get' id='d1' to='localhost'><query xmlns='http://jabber.org/protocol/disco#info'/></iq>");
    cb.wait_for("id='d1'", 5);
    let r = cb.wait_for("</iq>", 5);
    for f in [
        "vcard-temp",
        "msgoffline",
        "urn:xmpp:ping",
        "http://jabber.org/protocol/disco#info",
    ] {
        assert!(r.contains(&format!("var='{f}'")), "{f}: {r}");
    }
}
