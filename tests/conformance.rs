//! RFC 6120 / RFC 6121 / XEP conformance details over raw sockets against a real farm:
//! presence echoed to its sender, offline messages racing an initial presence, the IQ shape
//! rules where client stanzas enter, and what the server answers for itself and for accounts
//! (disco#info, software version, last activity).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Raw, TestFarm};

fn login(farm: &TestFarm, user: &str, res: &str) -> Raw {
    Raw::login(farm.owner(user).c2s, user, "pw", res)
}

/// `n` users on slave1 and one on slave2, with accounts: (same-slave users, the other one).
fn users(farm: &TestFarm, prefix: &str, n: usize) -> (Vec<String>, String) {
    let all = farm.users_on_every_slave(prefix, n);
    let here: Vec<String> = all
        .iter()
        .filter(|(_, o)| o == "slave1")
        .map(|(u, _)| u.clone())
        .take(n)
        .collect();
    let there = all.iter().find(|(_, o)| o == "slave2").unwrap().0.clone();
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
