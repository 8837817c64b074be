//! End to end over raw sockets against a real `jabberfarm up`: redirects, logins, messages,
//! bad input, shutdown. Exact wire assertions, as a client would see them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{HEADER, Raw, TestFarm, plain_auth};

const SEE_OTHER: &str = "<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>";

fn see_other_host(addr: std::net::SocketAddr) -> String {
    format!("<stream:error>{SEE_OTHER}{addr}</see-other-host></stream:error></stream:stream>")
}

#[test]
fn master_redirects_sasl_logins_to_the_owner() {
    let farm = TestFarm::start(2);
    for (user, _) in farm.users_on_every_slave("sasl", 3) {
        let owner = farm.owner(&user).c2s;
        let mut c = Raw::connect(farm.master.c2s);
        c.send(HEADER);
        c.wait_for("</stream:features>", 5);
        c.send(&plain_auth(&user, "irrelevant"));
        let got = c.wait_closed(5);
        assert!(got.ends_with(&see_other_host(owner)), "{user}: {got}");
        // The master never answers the password.
        assert!(!got.contains("<success") && !got.contains("<failure"));
    }
}

/// Ranges at a prefix (issue 13): the letter s split between two slaves, the master sends
/// each name where the table says, and a login at the owner succeeds.
#[test]
fn prefix_ranges_split_a_letter_between_slaves() {
    let farm = TestFarm::start_edited(2, |text| {
        text.replace(
            "mode = \"hash\"\nhash_key = \"000102030405060708090a0b0c0d0e0f\"\n",
            "mode = \"ranges\"\nother = \"slave1\"\n\
             [[routing.ranges]]\nletters = \"a-sm\"\nnode = \"slave1\"\n\
             [[routing.ranges]]\nletters = \"sn-z\"\nnode = \"slave2\"\n",
        )
    });
    for (user, slave) in [("smith", 0), ("s1", 0), ("Snow", 1), ("sz", 1), ("tom", 1)] {
        let owner = farm.slaves[slave].c2s;
        assert_eq!(farm.owner(user).c2s, owner, "jabberfarm route {user}");
        let mut c = Raw::connect(farm.master.c2s);
        c.send(HEADER);
        c.wait_for("</stream:features>", 5);
        c.send(&plain_auth(user, "irrelevant"));
        let got = c.wait_closed(5);
        assert!(got.ends_with(&see_other_host(owner)), "{user}: {got}");
    }
    farm.add_user("snow", "pw");
    let mut c = Raw::login(farm.slaves[1].c2s, "snow", "pw", "r");
    c.sync("localhost");
}

#[test]
fn master_redirects_scram_by_the_n_attribute() {
    use base64::Engine as _;
    let farm = TestFarm::start(2);
    let owner = farm.owner("romeo").c2s;
    let mut c = Raw::connect(farm.master.c2s);
    c.send(HEADER);
    c.wait_for("</stream:features>", 5);
    let first = base64::engine::general_purpose::STANDARD.encode("n,,n=Romeo,r=abcdefgh");
    c.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='SCRAM-SHA-256'>{first}</auth>"
    ));
    let got = c.wait_closed(5);
    assert!(got.ends_with(&see_other_host(owner)), "{got}");
}

#[test]
fn legacy_iq_auth_gets_302_then_see_other_host() {
    let farm = TestFarm::start(2);
    let owner = farm.owner("bill").c2s;
    let mut c = Raw::connect(farm.master.c2s);
    // A pre-XMPP-1.0 client: no version attribute, so no stream features.
    c.send("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
    c.send("<iq type='get' id='auth1'><query xmlns='jabber:iq:auth'><username>bill</username></query></iq>");
    let got = c.wait_closed(5);
    let expected_iq = format!(
        "<iq type='error' id='auth1'><error code='302' type='modify'><redirect xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'>{owner}</redirect><text xmlns='urn:ietf:params:xml:ns:xmpp-stanzas' xml:lang='en'>bill is served by {owner}; log in there</text></error></iq>"
    );
    assert!(
        got.ends_with(&format!("{expected_iq}{}", see_other_host(owner))),
        "{got}"
    );
    assert!(!got.contains("<stream:features>"));
}

#[test]
fn slaves_redirect_foreign_logins_and_authenticate_their_own() {
    let farm = TestFarm::start(2);
    farm.add_user("juliet", "r0m30");
    let owner = farm.owner("juliet");
    let other = farm.other_slave("juliet");

    // At the wrong slave: redirected to the right one.
    let mut c = Raw::connect(other.c2s);
    c.send(HEADER);
    c.wait_for("</stream:features>", 5);
    c.send(&plain_auth("juliet", "r0m30"));
    assert!(c.wait_closed(5).ends_with(&see_other_host(owner.c2s)));

    // At the right slave: a session as juliet@localhost/balcony.
    let mut j = Raw::login(owner.c2s, "juliet", "r0m30", "balcony");
    j.send("<iq type='get' id='p1' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>");
    let r = j.wait_for("id='p1'", 5);
    assert!(r.contains("type='result'"), "{r}");

    // Wrong password and unknown user: the same <not-authorized/>.
    for (user, pw) in [("juliet", "wrong"), ("nosuchuser", "whatever")] {
        let owner = farm.owner(user).c2s;
        let mut c = Raw::connect(owner);
        c.send(HEADER);
        c.wait_for("</stream:features>", 5);
        c.send(&plain_auth(user, pw));
        let r = c.wait_for("</failure>", 10);
        assert!(
            r.contains(
                "<failure xmlns='urn:ietf:params:xml:ns:xmpp-sasl'><not-authorized/></failure>"
            ),
            "{user}: {r}"
        );
    }
}

#[test]
fn scram_sha256_and_sha1_logins_at_the_slave() {
    use base64::Engine as _;
    use jabberfarm_proto::scram::{ScramCredentials, ScramHash};
    use jabberfarm_testkit::scram::{ClientKeys, ScramClient};
    let b64 = base64::engine::general_purpose::STANDARD;
    let farm = TestFarm::start(2);
    farm.add_user("mercutio", "queen mab");
    let slave = farm.owner("mercutio").c2s;
    let between = |text: &str, start: &str, end: &str| -> String {
        text.split(start)
            .nth(1)
            .unwrap()
            .split(end)
            .next()
            .unwrap()
            .to_owned()
    };
    for (mech, hash) in [
        ("SCRAM-SHA-256", ScramHash::Sha256),
        ("SCRAM-SHA-1", ScramHash::Sha1),
    ] {
        let mut c = Raw::connect(slave);
        c.send(HEADER);
        c.wait_for("</stream:features>", 5);
        let scram = ScramClient::new(hash, "mercutio");
        c.send(&format!(
            "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{mech}'>{}</auth>",
            b64.encode(scram.first_message())
        ));
        let r = c.wait_for("</challenge>", 10);
        let payload = between(
            &r,
            "<challenge xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
            "</challenge>",
        );
        // The server nonce extends ours (checked by the parser) and the salt and count are
        // the account's: the keys derived from them are the stored ones.
        let server_first = scram
            .parse_server_first(&b64.decode(payload).unwrap())
            .unwrap();
        let keys = ClientKeys::derive(
            hash,
            "queen mab",
            &server_first.salt,
            server_first.iterations,
        );
        let stored = ScramCredentials::derive(
            hash,
            "queen mab",
            &server_first.salt,
            server_first.iterations,
        );
        assert_eq!(keys.stored_key, stored.stored_key);
        let (client_final, server_signature) = scram.final_message(&server_first, &keys);
        c.send(&format!(
            "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
            b64.encode(client_final)
        ));
        let r = c.wait_for("</success>", 10);
        let v = between(
            &r,
            "<success xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>",
            "</success>",
        );
        ScramClient::verify_server_final(&b64.decode(v).unwrap(), &server_signature)
            .unwrap_or_else(|e| panic!("{mech}: {e}"));
    }
}

#[test]
fn legacy_iq_auth_login_at_the_owner() {
    let farm = TestFarm::start(2);
    farm.add_user("tybalt", "cats");
    let slave = farm.owner("tybalt").c2s;
    let mut c = Raw::connect(slave);
    c.send("<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
    c.send("<iq type='get' id='a1'><query xmlns='jabber:iq:auth'><username>tybalt</username></query></iq>");
    let r = c.wait_for("id='a1'", 5);
    assert!(
        r.contains("type='result'") && r.contains("<password/>"),
        "{r}"
    );
    c.send("<iq type='set' id='a2'><query xmlns='jabber:iq:auth'><username>tybalt</username><password>dogs</password><resource>home</resource></query></iq>");
    c.wait_for("id='a2'", 10);
    let r = c.wait_for("</iq>", 10);
    assert!(
        r.contains("code='401'") && r.contains("<not-authorized"),
        "{r}"
    );
    c.send("<iq type='set' id='a3'><query xmlns='jabber:iq:auth'><username>tybalt</username><password>cats</password><resource>home</resource></query></iq>");
    let r = c.wait_for("id='a3'", 10);
    assert!(r.contains("<iq type='result' id='a3'/>"), "{r}");
    c.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>");
    let r = c.wait_for("id='p'", 5);
    assert!(
        r.contains("type='result'") && r.contains("to='tybalt@localhost/home'"),
        "{r}"
    );
}

/// Two users on the slave that owns both.
fn two_users_on_one_slave(farm: &TestFarm) -> (String, String, std::net::SocketAddr) {
    let users = farm.users_on_every_slave("pal", 2);
    let slave = users[0].1.clone();
    let same: Vec<&String> = users
        .iter()
        .filter(|(_, o)| *o == slave)
        .map(|(u, _)| u)
        .collect();
    let node = farm.slaves.iter().find(|s| s.name == slave).unwrap();
    (same[0].clone(), same[1].clone(), node.c2s)
}

#[test]
fn messages_between_two_users_on_one_slave() {
    let farm = TestFarm::start(2);
    let (a, b, slave) = two_users_on_one_slave(&farm);
    farm.add_user(&a, "pw-a");
    farm.add_user(&b, "pw-b");
    let mut ca = Raw::login(slave, &a, "pw-a", "laptop");
    let mut cb = Raw::login(slave, &b, "pw-b", "phone");
    cb.send("<presence/>");
    // Full JID, with a forged from that the server must overwrite.
    ca.send(&format!(
        "<message to='{b}@localhost/phone' from='evil@localhost/x' type='chat' id='m1'><body>hello {b}</body></message>"
    ));
    let r = cb.wait_for("</message>", 5);
    assert!(
        r.contains(&format!("from='{a}@localhost/laptop'"))
            && r.contains(&format!("<body>hello {b}</body>")),
        "{r}"
    );
    assert!(!r.contains("evil"));
    // Bare JID: reaches the available resource.
    ca.send(&format!(
        "<message to='{b}@localhost' type='chat' id='m2'><body>bare hello</body></message>"
    ));
    let r = cb.wait_for("bare hello", 5);
    assert!(r.contains(&format!("to='{b}@localhost'")), "{r}");
    // And back.
    cb.send(&format!(
        "<message to='{a}@localhost/laptop' type='chat' id='m3'><body>hello back</body></message>"
    ));
    let r = ca.wait_for("hello back", 5);
    assert!(r.contains(&format!("from='{b}@localhost/phone'")), "{r}");
    // To a resource that does not exist: an IQ gets service-unavailable.
    ca.send(&format!(
        "<iq to='{b}@localhost/nowhere' type='get' id='q1'><ping xmlns='urn:xmpp:ping'/></iq>"
    ));
    let r = ca.wait_for("id='q1'", 5);
    assert!(
        r.contains("type='error'") && r.contains("<service-unavailable"),
        "{r}"
    );
}

#[test]
fn second_login_with_same_resource_replaces_the_first() {
    let farm = TestFarm::start(2);
    farm.add_user("benvolio", "peace");
    let slave = farm.owner("benvolio").c2s;
    let mut first = Raw::login(slave, "benvolio", "peace", "desk");
    let mut second = Raw::login(slave, "benvolio", "peace", "desk");
    let got = first.wait_closed(5);
    assert!(
        got.contains("<conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{got}"
    );
    second.send("<iq type='get' id='p'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(second.wait_for("id='p'", 5).contains("type='result'"));
}

#[test]
fn bad_input_gets_the_right_stream_error_and_the_server_keeps_serving() {
    let farm = TestFarm::start(2);
    farm.add_user("nurse", "herbs");
    let slave = farm.owner("nurse").c2s;
    let mut user = Raw::login(slave, "nurse", "herbs", "garden");
    let big = format!("<message><body>{}</body></message>", "x".repeat(12 * 1024));
    let deep = "<a>".repeat(10_000);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "DTD",
            b"<?xml version='1.0'?><!DOCTYPE foo [<!ENTITY x 'y'>]>".to_vec(),
            "restricted-xml",
        ),
        (
            "processing instruction",
            format!("{HEADER}<?evil?>").into_bytes(),
            "restricted-xml",
        ),
        (
            "comment",
            format!("{HEADER}<!-- hi -->").into_bytes(),
            "restricted-xml",
        ),
        (
            "invalid UTF-8",
            [HEADER.as_bytes(), b"<message><body>\xff\xfe</body></message>"].concat(),
            "unsupported-encoding",
        ),
        (
            "stanza over the pre-auth limit",
            format!("{HEADER}{big}").into_bytes(),
            "policy-violation",
        ),
        (
            "10,000 nested elements",
            format!("{HEADER}{deep}").into_bytes(),
            "policy-violation",
        ),
        (
            "XML 1.1",
            b"<?xml version='1.1'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>".to_vec(),
            "unsupported-version",
        ),
        (
            "wrong domain",
            b"<?xml version='1.0'?><stream:stream to='example.org' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>".to_vec(),
            "host-unknown",
        ),
    ];
    for (what, bytes, cond) in cases {
        for addr in [farm.master.c2s, slave] {
            let mut c = Raw::connect(addr);
            c.send_bytes(&bytes);
            let got = c.wait_closed(5);
            assert!(
                got.contains(&format!(
                    "<stream:error><{cond} xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"
                )),
                "{what} at {addr}: {got}"
            );
            assert!(got.ends_with("</stream:stream>"), "{what}: {got}");
        }
        // The logged-in user is still served.
        user.send(&format!(
            "<iq type='get' id='alive-{cond}' to='localhost'><ping xmlns='urn:xmpp:ping'/></iq>"
        ));
        assert!(
            user.wait_for(&format!("id='alive-{cond}'"), 5)
                .contains("type='result'")
        );
    }
    // A stream that never opens is closed by the timeout (3 s in the test farm).
    let mut silent = Raw::connect(slave);
    let got = silent.wait_closed(10);
    assert!(
        got.contains("<connection-timeout xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{got}"
    );
    // Stanzas before authentication are refused.
    let mut early = Raw::connect(farm.master.c2s);
    early.send(HEADER);
    early.send("<message to='nurse@localhost'><body>hi</body></message>");
    assert!(
        early
            .wait_closed(5)
            .contains("<not-authorized xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>")
    );
}

#[test]
fn nothing_is_redirected_before_tls_when_tls_is_required() {
    let farm = TestFarm::start_with(2, true, "stream_open_timeout = 3");
    let mut c = Raw::connect(farm.master.c2s);
    c.send(HEADER);
    let f = c.wait_for("</stream:features>", 5);
    assert!(
        f.contains("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'><required/></starttls>"),
        "{f}"
    );
    assert!(!f.contains("<mechanisms"), "{f}");
    c.send(&plain_auth("romeo", "x"));
    let r = c.wait_for("</failure>", 5);
    assert!(r.contains("<encryption-required/>"), "{r}");
    assert!(!r.contains("see-other-host"));
    c.send("<iq type='get' id='a1'><query xmlns='jabber:iq:auth'><username>romeo</username></query></iq>");
    let r = c.wait_for("id='a1'", 5);
    assert!(r.contains("type='error'") && !r.contains("redirect"), "{r}");
}

#[test]
fn sigterm_closes_sessions_with_system_shutdown() {
    let mut farm = TestFarm::start(2);
    farm.add_user("friar", "potion");
    let slave = farm.owner("friar").c2s;
    let mut c = Raw::login(slave, "friar", "potion", "cell");
    let status = farm.stop().unwrap();
    assert!(status.success(), "exit status {status}");
    let got = c.wait_closed(5);
    assert!(
        got.contains("<system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"),
        "{got}"
    );
}

#[test]
fn direct_tls_port_speaks_tls_first() {
    // A plain-text stream header on the direct-TLS port is not XMPP to it: no stream header
    // comes back, the TLS handshake fails and the connection closes.
    let farm = TestFarm::start(2);
    let mut c = Raw::connect(farm.master.c2s_tls);
    c.send(HEADER);
    let got = c.wait_closed(5);
    assert!(!got.contains("<stream:stream"), "{got}");
}

#[test]
fn a_stream_header_naming_the_user_is_redirected_before_sasl() {
    let farm = TestFarm::start(2);
    let owner = farm.owner("lady.capulet").c2s;
    let mut c = Raw::connect(farm.master.c2s);
    c.send("<?xml version='1.0'?><stream:stream from='Lady.Capulet@localhost' to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
    let got = c.wait_closed(5);
    assert!(got.ends_with(&see_other_host(owner)), "{got}");
    assert!(!got.contains("<stream:features>"), "{got}");
    // At the owner the same header goes on to the normal negotiation.
    let mut c = Raw::connect(owner);
    c.send("<?xml version='1.0'?><stream:stream from='lady.capulet@localhost' to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>");
    assert!(c.wait_for("</stream:features>", 5).contains("<mechanisms"));
}

#[test]
fn imported_accounts_log_in_at_their_slave() {
    let farm = TestFarm::start(2);
    farm.add_user("already", "old-password");
    let users = farm.users_on_every_slave("imp", 3);
    let mut file = String::from("# migrated from the old server\n\n");
    for (i, (user, _)) in users.iter().enumerate() {
        // Passwords may hold colons; the first one after the name ends it.
        file.push_str(&format!("{user}@localhost:pw:{i}\n"));
    }
    file.push_str("already:new-password\n");
    let path = farm.data_dir().join("accounts.txt");
    std::fs::write(&path, &file).unwrap();
    let out = farm.cli(&["user", "import", common::path_str(&path)]);
    assert!(
        out.contains("imported: 6 added, 0 updated, 1 already there"),
        "{out}"
    );
    for (i, (user, _)) in users.iter().enumerate() {
        let mut c = Raw::login(farm.owner(user).c2s, user, &format!("pw:{i}"), "r");
        c.send("<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
        c.wait_for("id='p1'", 5);
    }
    // Left alone without --update: the old password still works.
    Raw::login(farm.owner("already").c2s, "already", "old-password", "r");
    let out = farm.cli(&["user", "import", "--update", common::path_str(&path)]);
    assert!(out.contains("0 added, 7 updated"), "{out}");
    Raw::login(farm.owner("already").c2s, "already", "new-password", "r");

    // One bad line: nothing is imported, and the error names the line, not the password.
    std::fs::write(&path, "fresh1:secret-one\nbad user:secret-two\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jabberfarm"))
        .args(["user", "import", common::path_str(&path), "--config"])
        .arg(&farm.config)
        .arg("--data-dir")
        .arg(farm.data_dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("accounts.txt:2") && err.contains("nothing imported"),
        "{err}"
    );
    assert!(!err.contains("secret"), "a password was printed: {err}");
    let list = farm.cli(&["user", "list"]);
    assert!(!list.contains("fresh1"), "{list}");
}
