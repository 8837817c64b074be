//! Central user data (DESIGN.md D6, `docs/backends.md`), end to end against real servers.
//!
//! - The same login body against SQLite, MariaDB (jabberfarm's SCRAM table, and an existing
//!   user table with `{SSHA}` hashes), and OpenLDAP (bind over StartTLS, search-then-bind with a
//!   service account over LDAPS): login works, a wrong password and an unknown user get the same
//!   `<not-authorized/>`, SCRAM-SHA-256 and PLAIN where the backend allows them (PLAIN over TLS
//!   only where it keeps no SCRAM keys), the user commands work or say where accounts live.
//! - Hostile usernames neither authenticate (not even with a real user's password) nor break
//!   anything.
//! - With MariaDB, roster, vCard and offline messages written through one slave are read
//!   through the other after the routing moved the user.
//! - The backend stopped mid-run: logins get `<temporary-auth-failure/>` within a bound,
//!   sessions keep working, logins work again once it is back.
//!
//! The servers are throwaway MariaDB and slapd instances from Debian (`jabberfarm_testkit::servers`, scripts in `tests/servers/`), on
//! loopback ports with temporary data directories, seeded here. `scripts/test.sh` installs them;
//! a server that cannot start fails the test with its log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{BIN, Raw, TestFarm};
use jabberfarm_proto::scram::ScramHash;
use jabberfarm_testkit::scram::{ClientKeys, ScramClient};
use jabberfarm_testkit::servers::{self, MariaDb, Slapd};

const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
/// Every backend knows these users (LDIF, SQL, `jabberfarm user add`).
const USERS: &[&str] = &["alice", "bob", "carol", "admin"];
const SERVICE_PASSWORD: &str = "service-Secret-9";

fn password(user: &str) -> String {
    format!("{user}-pw-Secret1")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mech {
    Plain,
    ScramSha256,
}

/// Connects to `addr`, upgrades to TLS when `tls`, runs one SASL exchange: the client and the
/// outcome text.
fn attempt(
    farm: &TestFarm,
    addr: SocketAddr,
    tls: bool,
    mech: Mech,
    user: &str,
    pw: &str,
) -> (Raw, String) {
    let mut c = Raw::connect(addr);
    c.open();
    if tls {
        c.starttls(&farm.ca());
    }
    let out = match mech {
        Mech::Plain => {
            c.send(&common::plain_auth(user, pw));
            c.wait_sasl_result(20)
        }
        Mech::ScramSha256 => scram_sha256(&mut c, user, pw),
    };
    (c, out)
}

/// A logged-in session (TLS, PLAIN) at the owner of `user`, bound to `resource`.
fn login(farm: &TestFarm, user: &str, resource: &str) -> Raw {
    let (mut c, out) = attempt(
        farm,
        farm.owner(user).c2s,
        true,
        Mech::Plain,
        user,
        &password(user),
    );
    assert!(out.contains("<success"), "login of {user}: {out}");
    c.bind(user, resource);
    c
}

/// SCRAM-SHA-256 (RFC 5802, RFC 7677) as a client; checks the server's signature on success.
fn scram_sha256(c: &mut Raw, user: &str, pw: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    let scram = ScramClient::new(ScramHash::Sha256, user);
    c.send(&format!(
        "<auth xmlns='{SASL}' mechanism='SCRAM-SHA-256'>{}</auth>",
        b64.encode(scram.first_message())
    ));
    let r = c.wait_until("a SCRAM challenge", 20, |t| {
        t.contains("</challenge>") || t.contains("</failure>")
    });
    if r.contains("</failure>") {
        return r;
    }
    let payload = between(&r, &format!("<challenge xmlns='{SASL}'>"), "</challenge>");
    let server_first = scram
        .parse_server_first(&b64.decode(payload).unwrap())
        .unwrap();
    let keys = ClientKeys::derive(
        ScramHash::Sha256,
        pw,
        &server_first.salt,
        server_first.iterations,
    );
    let (client_final, server_signature) = scram.final_message(&server_first, &keys);
    c.send(&format!(
        "<response xmlns='{SASL}'>{}</response>",
        b64.encode(client_final)
    ));
    let out = c.wait_sasl_result(20);
    if out.contains("<success") {
        let v = between(&out, &format!("<success xmlns='{SASL}'>"), "</success>");
        ScramClient::verify_server_final(&b64.decode(v).unwrap(), &server_signature)
            .expect("server signature");
    }
    out
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("{start:?} not in {text:?}"))
        + start.len();
    let len = text[from..].find(end).unwrap();
    &text[from..from + len]
}

/// `out` and whatever follows up to the end of the stream.
fn rest_of_stream(c: &mut Raw, out: String) -> String {
    if out.contains("</stream:stream>") {
        out
    } else {
        out + &c.wait_for("</stream:stream>", 10)
    }
}

/// The `<failure>…</failure>` element of a SASL outcome.
fn failure(out: &str) -> &str {
    let start = out
        .find("<failure")
        .unwrap_or_else(|| panic!("no <failure> in {out:?}"));
    let end = out[start..].find("</failure>").unwrap() + "</failure>".len();
    &out[start..start + end]
}

// ---- backends ------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    /// jabberfarm's own schema with SCRAM keys.
    Mysql,
    /// An existing user table with `{SSHA}` hashes (PLAIN only).
    MysqlLegacy,
    /// Bind with a DN template, StartTLS to the directory.
    LdapBind,
    /// Search-then-bind with a service account, LDAPS.
    LdapSearch,
}

impl Backend {
    /// Keeps SCRAM keys: SCRAM is offered, and PLAIN also without TLS.
    fn scram(self) -> bool {
        matches!(self, Backend::Sqlite | Backend::Mysql)
    }
}

/// A farm of two slaves on one backend, its users in place.
struct Setup {
    backend: Backend,
    farm: TestFarm,
    /// The MariaDB server and database name.
    mysql: Option<(Arc<MariaDb>, String)>,
    /// Holds the directory server for as long as the farm uses it.
    _ldap: Option<Arc<Slapd>>,
}

/// The directory: ou=people with [`USERS`] (and a second `alice` elsewhere that must never
/// matter), ou=services with the account for search-then-bind.
fn ldif() -> String {
    let mut out = String::from(servers::BASE_LDIF);
    out.push_str(&format!(
        "dn: cn=jabberfarm,ou=services,dc=example,dc=net\nobjectClass: organizationalRole\n\
         objectClass: simpleSecurityObject\ncn: jabberfarm\nuserPassword: {}\n\n",
        Slapd::hash(SERVICE_PASSWORD)
    ));
    for user in USERS {
        out.push_str(&format!(
            "dn: uid={user},ou=people,dc=example,dc=net\nobjectClass: inetOrgPerson\n\
             uid: {user}\ncn: {user}\nsn: {user}\nuserPassword: {}\n\n",
            Slapd::hash(&password(user))
        ));
    }
    out
}

fn shared_slapd() -> Arc<Slapd> {
    servers::shared_slapd(ldif)
}

fn db_name(url: &str) -> String {
    url.rsplit('/').next().unwrap().to_owned()
}

/// The `[storage]` body for `backend`; `extra` goes into its backend's sub-table.
fn storage_toml(
    backend: Backend,
    mysql_url: Option<&str>,
    ldap: Option<&Slapd>,
    extra: &str,
) -> String {
    let mysql = |more: &str| {
        format!(
            "backend = \"mysql\"\n[storage.mysql]\nurl = \"{}\"\nmax_connections = 4\n\
             acquire_timeout = 2\nquery_timeout = 4\n{more}{extra}",
            mysql_url.unwrap()
        )
    };
    match backend {
        Backend::Sqlite => "scram_iterations = 4096".to_owned(),
        Backend::Mysql => mysql(""),
        Backend::MysqlLegacy => mysql(
            "login_query = \"SELECT pw FROM legacy_users WHERE login = ?\"\n\
             password_format = \"ssha\"\n",
        ),
        Backend::LdapBind => {
            let l = ldap.unwrap();
            format!(
                "backend = \"ldap\"\n[storage.ldap]\nurl = \"{}\"\nstarttls = true\n\
                 ca = \"{}\"\nbind_dn = \"uid={{user}},ou=people,dc=example,dc=net\"\n\
                 timeout = 2\n{extra}",
                l.ldap_url,
                l.ca.display()
            )
        }
        Backend::LdapSearch => {
            let l = ldap.unwrap();
            format!(
                "backend = \"ldap\"\n[storage.ldap]\nurl = \"{}\"\nca = \"{}\"\n\
                 base = \"ou=people,dc=example,dc=net\"\n\
                 filter = \"(&(objectClass=inetOrgPerson)(uid={{user}}))\"\n\
                 service_dn = \"cn=jabberfarm,ou=services,dc=example,dc=net\"\n\
                 service_password = \"{SERVICE_PASSWORD}\"\ntimeout = 2\n{extra}",
                l.ldaps_url,
                l.ca.display()
            )
        }
    }
}

/// Starts what `backend` needs (the shared servers unless given), a farm of two slaves on it,
/// and puts the users in.
fn setup_on(
    backend: Backend,
    db: Option<Arc<MariaDb>>,
    ldap: Option<Arc<Slapd>>,
    extra: &str,
) -> Setup {
    let needs_db = matches!(backend, Backend::Mysql | Backend::MysqlLegacy);
    let needs_ldap = matches!(backend, Backend::LdapBind | Backend::LdapSearch);
    let mysql = needs_db.then(|| {
        let server = db.unwrap_or_else(servers::shared_mariadb);
        let url = server.create_database("farm");
        (server, url)
    });
    let ldap = needs_ldap.then(|| ldap.unwrap_or_else(shared_slapd));
    if let (Backend::MysqlLegacy, Some((server, url))) = (backend, &mysql) {
        // An ISP's existing table: its own names, hashes written by another tool.
        let db = db_name(url);
        let mut sql = format!(
            "CREATE TABLE `{db}`.legacy_users (login VARCHAR(64) PRIMARY KEY, \
             pw VARCHAR(255) NOT NULL, active TINYINT NOT NULL DEFAULT 1);"
        );
        for user in USERS {
            sql.push_str(&format!(
                "INSERT INTO `{db}`.legacy_users (login, pw) VALUES ('{user}', '{}');",
                Slapd::hash(&password(user))
            ));
        }
        server.sql(&sql);
    }
    let storage = storage_toml(
        backend,
        mysql.as_ref().map(|(_, url)| url.as_str()),
        ldap.as_deref(),
        extra,
    );
    // Hostile names and wrong passwords come by the dozen from one address: this test asks
    // the brute-force limiter to leave loopback alone.
    let storage = format!("{storage}\n\n[auth_limits]\nexempt = [\"127.0.0.0/8\"]\n");
    let farm = TestFarm::start_with_storage(2, &storage);
    if backend.scram() {
        for user in USERS {
            farm.add_user(user, &password(user));
        }
    }
    Setup {
        backend,
        farm,
        mysql,
        _ldap: ldap,
    }
}

fn setup(backend: Backend) -> Setup {
    setup_on(backend, None, None, "")
}

/// The c2s address of the slave that owns `name`, if `jabberfarm route` accepts the name.
fn route(farm: &TestFarm, name: &str) -> Option<SocketAddr> {
    if name.contains('\0') {
        return None; // cannot be an argument; no slave owns it anyway
    }
    let out = Command::new(BIN)
        .args(["route", "--config"])
        .arg(&farm.config)
        .arg("--")
        .arg(name)
        .output()
        .unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let node = text.rsplit('\t').next()?.trim().to_owned();
    farm.slaves.iter().find(|s| s.name == node).map(|s| s.c2s)
}

// ---- the test bodies -----------------------------------------------------------------------

/// Login works; wrong password and unknown user are refused alike; SCRAM-SHA-256 and PLAIN
/// where the backend allows them.
fn login_contract(s: &Setup) {
    let farm = &s.farm;
    let alice = farm.owner("alice").c2s;
    let pw = password("alice");

    // What is offered before and after TLS.
    let mut c = Raw::connect(alice);
    let before = c.open();
    if s.backend.scram() {
        assert!(
            before.contains("<mechanism>SCRAM-SHA-256</mechanism>"),
            "{before}"
        );
        assert!(before.contains("<mechanism>PLAIN</mechanism>"), "{before}");
    } else {
        // Nothing to log in with before TLS, and STARTTLS is required.
        assert!(!before.contains("<mechanisms"), "{before}");
        assert!(before.contains("<required/></starttls>"), "{before}");
        c.send(&common::plain_auth("alice", &pw));
        let out = c.wait_sasl_result(10);
        assert!(failure(&out).contains("<encryption-required/>"), "{out}");
    }
    drop(c);
    let mut c = Raw::connect(alice);
    c.open();
    let after = c.starttls(&farm.ca());
    assert!(after.contains("<mechanism>PLAIN</mechanism>"), "{after}");
    assert_eq!(
        after.contains("SCRAM-SHA-256"),
        s.backend.scram(),
        "{:?}: {after}",
        s.backend
    );
    drop(c);

    // PLAIN over TLS: in, bound, and the IM store answers.
    let mut session = login(farm, "alice", "desk");
    session.send("<iq type='get' id='roster1'><query xmlns='jabber:iq:roster'/></iq>");
    let r = session.wait_for("</iq>", 10);
    assert!(
        r.contains("type='result'") && r.contains("id='roster1'"),
        "{r}"
    );
    drop(session);

    // Wrong password and unknown user: the same answer, word for word.
    let nobody = farm.owner("nobody").c2s;
    let mechs: &[Mech] = if s.backend.scram() {
        &[Mech::Plain, Mech::ScramSha256]
    } else {
        &[Mech::Plain]
    };
    for &mech in mechs {
        let (_, wrong) = attempt(farm, alice, true, mech, "alice", "wrong-password");
        let (_, unknown) = attempt(farm, nobody, true, mech, "nobody", &pw);
        let (_, empty) = attempt(farm, alice, true, mech, "alice", "");
        assert!(
            failure(&wrong).contains("<not-authorized/>"),
            "{mech:?}: {wrong}"
        );
        assert_eq!(failure(&wrong), failure(&unknown), "{mech:?}");
        assert_eq!(failure(&wrong), failure(&empty), "{mech:?}: empty password");
    }

    // SCRAM-SHA-256 (with the server's signature checked) where there are keys; elsewhere it
    // is not a mechanism at all.
    let (_, out) = attempt(farm, alice, true, Mech::ScramSha256, "alice", &pw);
    if s.backend.scram() {
        assert!(out.contains("<success"), "{out}");
        // And PLAIN without TLS (the demo farm allows it).
        let (_, out) = attempt(farm, alice, false, Mech::Plain, "alice", &pw);
        assert!(out.contains("<success"), "{out}");
    } else {
        assert!(failure(&out).contains("<invalid-mechanism/>"), "{out}");
    }

    // The master sends alice to her slave, whatever the backend.
    let (mut c, out) = attempt(farm, farm.master.c2s, true, Mech::Plain, "alice", &pw);
    let all = rest_of_stream(&mut c, out);
    let owner = farm.owner("alice");
    assert!(
        all.contains(&format!(
            "<see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>{}</see-other-host>",
            owner.c2s
        )),
        "{all}"
    );
}

/// Names built to break a filter, a DN or a query get `<not-authorized/>`, even with a real
/// user's password, and everything works afterwards.
fn hostile_usernames(s: &Setup) {
    let farm = &s.farm;
    let long = "a".repeat(2048);
    let names = [
        "*",
        ")(uid=*",
        "admin)(|(uid=*",
        "alice)(uid=*",
        "alice*",
        "*)(userPassword=*",
        "al*ce",
        "alice\\",
        "\\2a",
        "uid=alice,ou=people,dc=example,dc=net",
        "alice,ou=people",
        "\"alice\"",
        "'alice'",
        "'; DROP TABLE accounts; --",
        "alice'; DROP TABLE accounts; --",
        "alice' OR '1'='1",
        "%",
        "al_ce",
        "al\0ice",
        "alice\0",
        long.as_str(),
    ];
    for name in names {
        for who in ["alice", "admin"] {
            let addr = route(farm, name).unwrap_or(farm.slaves[0].c2s);
            let (_, out) = attempt(farm, addr, true, Mech::Plain, name, &password(who));
            assert!(!out.contains("<success"), "{name:?} logged in: {out}");
            if name.contains('\0') {
                // PLAIN separates its fields with NUL: not even a well-formed request.
                assert!(out.contains("<failure"), "{name:?}: {out}");
            } else {
                assert!(
                    failure(&out).contains("<not-authorized/>"),
                    "{name:?} with {who}'s password: {out}"
                );
            }
        }
    }
    // Nothing broke: the users still log in and their data is there.
    for user in ["alice", "admin"] {
        let mut c = login(farm, user, "after");
        c.send("<iq type='get' id='roster2'><query xmlns='jabber:iq:roster'/></iq>");
        let r = c.wait_for("</iq>", 10);
        assert!(r.contains("type='result'"), "{r}");
    }
    if let Some((server, url)) = &s.mysql {
        let db = db_name(url);
        let tables = server.sql(&format!("SHOW TABLES FROM `{db}`"));
        for table in [
            "accounts",
            "im_users",
            "roster_items",
            "offline_messages",
            "vcards",
        ] {
            assert!(tables.contains(table), "{table} gone: {tables}");
        }
    }
    if s.backend.scram() {
        let (ok, list) = farm.try_cli(&["user", "list"]);
        assert!(ok, "{list}");
        for user in USERS {
            assert!(list.contains(&format!("{user}@localhost\t")), "{list}");
        }
    }
}

/// `jabberfarm user` against the backend: it manages accounts in our own tables and says
/// clearly where else they live.
fn user_commands(s: &Setup) {
    let farm = &s.farm;
    match s.backend {
        Backend::Sqlite => {} // tests/cli.rs
        Backend::Mysql => {
            let (ok, out) = farm.try_cli(&["user", "list"]);
            assert!(ok, "{out}");
            // One central table: each user once, with the slave that serves them now.
            for user in USERS {
                let owner = &farm.owner(user).name;
                assert_eq!(
                    out.matches(&format!("{user}@localhost\t{owner}\n")).count(),
                    1,
                    "{out}"
                );
            }
            let (ok, out) = farm.try_cli(&["user", "add", "dave", "--password", "dave-1"]);
            assert!(
                ok && out.contains("dave@localhost: added (served by slave"),
                "{out}"
            );
            let (ok, out) = farm.try_cli(&["user", "add", "dave", "--password", "other"]);
            assert!(!ok && out.contains("user dave already exists"), "{out}");
            let (ok, out) = farm.try_cli(&["user", "passwd", "dave", "--password", "dave-2"]);
            assert!(ok && out.contains("password changed"), "{out}");
            let (_, out) = attempt(
                farm,
                farm.owner("dave").c2s,
                true,
                Mech::ScramSha256,
                "dave",
                "dave-2",
            );
            assert!(out.contains("<success"), "{out}");
            let (ok, out) = farm.try_cli(&["user", "del", "dave"]);
            assert!(ok && out.contains("deleted"), "{out}");
            let (ok, out) = farm.try_cli(&["user", "del", "dave"]);
            assert!(!ok && out.contains("no such user dave"), "{out}");
        }
        Backend::MysqlLegacy | Backend::LdapBind | Backend::LdapSearch => {
            let place = if s.backend == Backend::MysqlLegacy {
                "existing user table"
            } else {
                "LDAP directory"
            };
            for args in [
                &["user", "add", "erin", "--password", "x"][..],
                &["user", "passwd", "alice", "--password", "x"][..],
                &["user", "list"][..],
            ] {
                let (ok, out) = farm.try_cli(args);
                assert!(!ok, "{args:?}: {out}");
                assert!(out.contains(place), "{args:?}: {out}");
            }
            // del removes what the farm keeps (roster, offline messages, vCard) and says the
            // account itself is elsewhere.
            let (ok, out) = farm.try_cli(&["user", "del", "alice"]);
            assert!(ok, "{out}");
            assert!(
                out.contains("roster, offline messages and vCard deleted") && out.contains(place),
                "{out}"
            );
            let mut c = login(farm, "alice", "still-here");
            c.send("<iq type='get' id='r3'><query xmlns='jabber:iq:roster'/></iq>");
            assert!(c.wait_for("</iq>", 10).contains("type='result'"));
        }
    }
}

/// A message to a user who is offline is kept and delivered at the next login, whatever the
/// backend (before, LDAP and legacy-table accounts bounced every such message); one to a name
/// with no account is bounced with `<service-unavailable/>`.
fn offline_contract(s: &Setup) {
    let farm = &s.farm;
    let bounced = |c: &mut Raw, id: &str| {
        let needle = format!("id='{id}'");
        let out = c.wait_until(&needle.clone(), 10, |t| {
            t.find(&needle)
                .is_some_and(|i| t[i..].contains("</message>"))
        });
        assert!(
            out.contains("type='error'") && out.contains("<service-unavailable"),
            "{id}: {out}"
        );
    };
    let mut alice = login(farm, "alice", "offline");
    alice.send("<presence/>");
    if s.backend == Backend::LdapBind {
        // The directory hides its entries from anonymous readers and there is no service
        // account: until carol has logged in once, the farm cannot know she exists.
        alice.send(
            "<message to='carol@localhost' type='chat' id='o0'><body>too early</body></message>",
        );
        bounced(&mut alice, "o0");
        let mut carol = login(farm, "carol", "first");
        carol.send("</stream:stream>");
        carol.wait_until("the stream to close", 10, |t| {
            t.contains("</stream:stream>")
        });
    }
    alice.send(
        "<message to='carol@localhost' type='chat' id='o1'><body>kept while away</body></message>",
    );
    alice
        .send("<message to='nosuchuser@localhost' type='chat' id='o2'><body>lost</body></message>");
    bounced(&mut alice, "o2");
    let mut carol = login(farm, "carol", "phone");
    carol.send("<presence/>");
    let msg = carol.wait_for("kept while away", 10);
    assert!(msg.contains("from='alice@localhost/offline'"), "{msg}");
}

fn every_contract(backend: Backend) {
    let s = setup(backend);
    login_contract(&s);
    hostile_usernames(&s);
    user_commands(&s);
    offline_contract(&s);
}

#[test]
fn sqlite_logins_hostile_names_and_user_commands() {
    every_contract(Backend::Sqlite);
}

#[test]
fn mariadb_logins_hostile_names_and_user_commands() {
    every_contract(Backend::Mysql);
}

#[test]
fn mariadb_legacy_table_logins_hostile_names_and_user_commands() {
    every_contract(Backend::MysqlLegacy);
}

#[test]
fn ldap_bind_logins_hostile_names_and_user_commands() {
    every_contract(Backend::LdapBind);
}

#[test]
fn ldap_search_then_bind_logins_hostile_names_and_user_commands() {
    every_contract(Backend::LdapSearch);
}

// ---- central data follows the user ---------------------------------------------------------

/// The routing key of the test farm (`tests/common`), and another one.
const KEY: &str = "000102030405060708090a0b0c0d0e0f";
const OTHER_KEY: &str = "f0e1d2c3b4a5968778695a4b3c2d1e0f";

/// The owner of `user` if the farm's hash key were `key`.
fn owner_with_key(farm: &TestFarm, key: &str, user: &str) -> String {
    let text = std::fs::read_to_string(&farm.config)
        .unwrap()
        .replace(KEY, key);
    let path = farm.dir.path().join("other-key.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN)
        .args(["route", "--config"])
        .arg(&path)
        .arg(user)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout)
        .unwrap()
        .rsplit('\t')
        .next()
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn mariadb_data_follows_the_user_to_another_slave() {
    let mut s = setup(Backend::Mysql);
    let (server, url) = s.mysql.clone().unwrap();
    let db = db_name(&url);
    // A user the new key moves to the other slave.
    let user = (0..200)
        .map(|i| format!("mover{i}"))
        .find(|u| s.farm.owner(u).name != owner_with_key(&s.farm, OTHER_KEY, u))
        .expect("no user moves with the other key");
    let before = s.farm.owner(&user).name.clone();
    s.farm.add_user(&user, &password(&user));

    // Through the first slave: a roster item with a group, a vCard; then offline.
    let mut c = login(&s.farm, &user, "phone");
    c.send(
        "<iq type='set' id='r1'><query xmlns='jabber:iq:roster'><item jid='nurse@localhost' \
         name='The Nurse'><group>Verona</group><group>Capulets, house of</group></item></query></iq>",
    );
    assert!(c.wait_for("id='r1'", 10).contains("type='result'"));
    c.send("<iq type='set' id='v1'><vCard xmlns='vcard-temp'><FN>Moving Person</FN></vCard></iq>");
    assert!(c.wait_for("id='v1'", 10).contains("type='result'"));
    c.send("</stream:stream>");
    c.wait_until("the stream to close", 10, |t| {
        t.contains("</stream:stream>")
    });
    drop(c);

    // A message while the user is offline: stored by the user's slave, in the database.
    let mut alice = login(&s.farm, "alice", "desk");
    alice.send(&format!(
        "<message to='{user}@localhost' type='chat' id='m1'><body>kept for you</body></message>"
    ));
    let count = format!(
        "SELECT COUNT(*) FROM `{db}`.offline_messages \
         WHERE username = CAST('{user}' AS BINARY)"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.sql(&count).contains("\n1\n") {
        assert!(
            Instant::now() < deadline,
            "the offline message was not stored:\n{}",
            s.farm.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(alice);

    // The routing changes: the user now belongs to the other slave.
    s.farm
        .restart_with_config(|text| text.replace(KEY, OTHER_KEY));
    let after = s.farm.owner(&user).name.clone();
    assert_ne!(before, after);

    // The old slave sends the user away; the new one has everything.
    let old = s.farm.slaves.iter().find(|n| n.name == before).unwrap().c2s;
    let (mut c, out) = attempt(&s.farm, old, true, Mech::Plain, &user, &password(&user));
    let redirect = rest_of_stream(&mut c, out);
    assert!(
        redirect.contains(&format!("{}</see-other-host>", s.farm.owner(&user).c2s)),
        "{redirect}"
    );
    let mut c = login(&s.farm, &user, "laptop");
    c.send("<iq type='get' id='r2'><query xmlns='jabber:iq:roster'/></iq>");
    let roster = c.wait_iq("r2");
    for part in [
        "jid='nurse@localhost'",
        "name='The Nurse'",
        "<group>Verona</group>",
        "<group>Capulets, house of</group>",
    ] {
        assert!(roster.contains(part), "{part} not in {roster}");
    }
    c.send("<iq type='get' id='v2'><vCard xmlns='vcard-temp'/></iq>");
    let vcard = c.wait_iq("v2");
    assert!(vcard.contains("<FN>Moving Person</FN>"), "{vcard}");
    c.send("<presence/>");
    let msg = c.wait_for("kept for you", 10);
    assert!(msg.contains("from='alice@localhost/desk'"), "{msg}");
    // Delivered, so gone from the database.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.sql(&count).contains("\n0\n") {
        assert!(Instant::now() < deadline, "still stored after delivery");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---- the backend goes away and comes back -------------------------------------------------

/// Sessions logged in before the outage keep working; new logins get
/// `<temporary-auth-failure/>` quickly; after the backend is back they work again.
fn outage(s: &Setup, stop: impl FnOnce(), start: impl FnOnce(), log: impl Fn() -> String) {
    let farm = &s.farm;
    let mut alice = login(farm, "alice", "desk");
    let mut bob = login(farm, "bob", "desk");
    bob.send("<presence/>");
    alice.send("<presence/>");
    bob.sync("localhost");
    alice.sync("localhost");

    stop();

    let carol = farm.owner("carol").c2s;
    let mechs: &[Mech] = if s.backend.scram() {
        &[Mech::Plain, Mech::ScramSha256]
    } else {
        &[Mech::Plain]
    };
    for &mech in mechs {
        let started = Instant::now();
        let (_, out) = attempt(farm, carol, true, mech, "carol", &password("carol"));
        let took = started.elapsed();
        assert!(
            failure(&out).contains("<temporary-auth-failure/>"),
            "{mech:?} during the outage: {out}\n{}",
            farm.log()
        );
        // acquire_timeout = 2 / timeout = 2 in the test configs; never a hang.
        assert!(took < Duration::from_secs(9), "{mech:?} took {took:?}");
    }
    assert!(
        farm.log().contains("account store failure"),
        "no log line names the backend:\n{}",
        farm.log()
    );

    // Logged-in sessions carry on.
    alice.send(
        "<message to='bob@localhost/desk' type='chat' id='during'><body>still here</body></message>",
    );
    let got = bob.wait_for("still here", 10);
    assert!(got.contains("from='alice@localhost/desk'"), "{got}");
    alice.send("<iq type='get' to='localhost' id='ping1'><ping xmlns='urn:xmpp:ping'/></iq>");
    assert!(alice.wait_for("id='ping1'", 10).contains("type='result'"));

    start();

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out) = attempt(farm, carol, true, Mech::Plain, "carol", &password("carol"));
        if out.contains("<success") {
            break;
        }
        assert!(
            failure(&out).contains("<temporary-auth-failure/>"),
            "after the restart: {out}"
        );
        assert!(
            Instant::now() < deadline,
            "logins did not recover:\n{}\n{}",
            farm.log(),
            log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    if s.backend.scram() {
        let (_, out) = attempt(
            farm,
            carol,
            true,
            Mech::ScramSha256,
            "carol",
            &password("carol"),
        );
        assert!(out.contains("<success"), "{out}");
    }
    // The old sessions never noticed.
    bob.send(
        "<message to='alice@localhost/desk' type='chat' id='after'><body>welcome back</body></message>",
    );
    assert!(
        alice
            .wait_for("welcome back", 10)
            .contains("from='bob@localhost/desk'")
    );
}

#[test]
fn mariadb_outage_gives_temporary_auth_failure_and_recovers() {
    // Its own server: stopping the shared one would fail the other tests.
    let server = Arc::new(MariaDb::start());
    let s = setup_on(Backend::Mysql, Some(server.clone()), None, "");
    outage(&s, || server.stop(), || server.restart(), || server.log());
}

#[test]
fn ldap_outage_gives_temporary_auth_failure_and_recovers() {
    let slapd = Arc::new(Slapd::start(&ldif()));
    let s = setup_on(Backend::LdapSearch, None, Some(slapd.clone()), "");
    outage(&s, || slapd.stop(), || slapd.restart(), || slapd.log());
}

// ---- one slow user holds up nobody else ---------------------------------------------------

/// The worker a slave hands a farm-link stanza for `bare` to (slave/src/router.rs,
/// `worker_of`): the same hash, so the test can pick users on different workers.
fn inbound_worker(bare: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for b in bare.bytes() {
        b.to_ascii_lowercase().hash(&mut h);
    }
    h.finish() % 16
}

/// Stanzas from farm links are handled by workers keyed by user: while the database keeps one
/// user's offline message waiting (its row locked by another transaction), messages from the
/// same link to other users arrive at once. (One task handled everything before: one slow
/// write held up every user of the slave for `query_timeout`.)
#[test]
fn a_user_whose_writes_wait_does_not_hold_up_the_others() {
    let s = setup(Backend::Mysql);
    let (server, url) = s.mysql.clone().unwrap();
    let db = db_name(&url);
    let farm = &s.farm;
    // A sender on one slave; on the other, a user whose row will be locked and one online.
    let sender = "alice";
    let far = farm.other_slave(sender).name.clone();
    let on_far = |prefix: &str, not_worker: Option<u64>| {
        (0..500)
            .map(|i| format!("{prefix}{i}"))
            .find(|u| {
                farm.owner(u).name == far
                    && not_worker.is_none_or(|w| inbound_worker(&format!("{u}@localhost")) != w)
            })
            .unwrap()
    };
    let locked = on_far("locked", None);
    let free = on_far("free", Some(inbound_worker(&format!("{locked}@localhost"))));
    for u in [&locked, &free] {
        farm.add_user(u, &password(u));
    }
    server.sql(&format!(
        "INSERT INTO `{db}`.im_users (username) VALUES ('{locked}')"
    ));
    // Another transaction holds the row for 8 s: every write for `locked` waits.
    let holder = {
        let server = server.clone();
        let sql = format!(
            "BEGIN; SELECT username FROM `{db}`.im_users WHERE username = '{locked}' FOR UPDATE; \
             SELECT SLEEP(8); COMMIT;"
        );
        std::thread::spawn(move || server.sql(&sql))
    };
    // Go on once the row is locked (the holder has reached its SLEEP), not after a guess.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .sql(
            "SELECT CONCAT('held=', COUNT(*)) FROM information_schema.PROCESSLIST \
             WHERE INFO = 'SELECT SLEEP(8)'",
        )
        .contains("held=1")
    {
        assert!(Instant::now() < deadline, "the lock was never taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut f = login(farm, &free, "online");
    f.send("<presence/>");
    f.wait_for("<presence", 5);
    let mut a = login(farm, sender, "desk");
    // Offline messages for `locked`: each store waits for the lock.
    for i in 0..3 {
        a.send(&format!(
            "<message to='{locked}@localhost' type='chat' id='l{i}'><body>wait</body></message>"
        ));
    }
    let started = Instant::now();
    a.send(&format!(
        "<message to='{free}@localhost/online' type='headline' id='f'><body>not held up</body></message>"
    ));
    f.wait_for("not held up", 10);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "took {took:?}");
    holder.join().unwrap();
}
