//! The central account stores against real servers: a throwaway MariaDB and OpenLDAP slapd
//! from `tests/servers/` (one of each per test binary, a new database per test).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::*;
use jabberfarm_config::{
    ImDataConfig, LdapAuth, LdapConfig, MysqlAccounts, MysqlConfig, PasswordFormat,
};

use jabberfarm_testkit::servers;

const I: u32 = MIN_ITERATIONS;

/// Names built to break a filter, a DN or a query.
const HOSTILE: &[&str] = &[
    "*",
    ")(uid=*",
    "admin)(|(uid=*",
    "alice)(uid=*",
    "alice*",
    "*)(userPassword=*",
    "alice\\",
    "uid=alice,ou=people,dc=example,dc=net",
    "'; DROP TABLE accounts; --",
    "alice' OR '1'='1",
    "\"alice\"",
    "%",
    "al_ce",
    "alice\0",
    "",
];

fn mysql_config(url: String, accounts: MysqlAccounts) -> MysqlConfig {
    MysqlConfig {
        url,
        password: None,
        max_connections: 4,
        acquire_timeout: Duration::from_secs(2),
        query_timeout: Duration::from_secs(10),
        migrate: true,
        accounts,
    }
}

async fn open_mysql(cfg: MysqlConfig) -> Result<AccountStore, StoreError> {
    let storage = StorageConfig {
        backend: StorageBackend::Mysql(cfg),
        scram_iterations: I,
    };
    AccountStore::open(&storage, Path::new("unused"), "slave1").await
}

fn db_name(url: &str) -> &str {
    url.rsplit('/').next().unwrap()
}

fn assert_unavailable(r: Result<impl std::fmt::Debug, StoreError>, backend: &str, part: &str) {
    match r {
        Err(StoreError::Unavailable { backend: b, detail }) => {
            assert_eq!(b, backend, "{detail}");
            assert!(detail.contains(part), "{part:?} not in {detail:?}");
        }
        other => panic!("expected {backend} unavailable ({part}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_scram_accounts() {
    let server = servers::shared_mariadb();
    let url = server.create_database("auth");
    let store = open_mysql(mysql_config(url.clone(), MysqlAccounts::Scram))
        .await
        .unwrap();
    assert!(!store.plain_only());
    let password = "correct horse battery staple";
    for user in ["juliet", "romeo", "ünïcödé"] {
        store.add_user(user, password, I).await.unwrap();
    }
    assert!(matches!(
        store.add_user("juliet", "other", I).await,
        Err(StoreError::Exists(ref u)) if u == "juliet"
    ));
    for hash in [ScramHash::Sha1, ScramHash::Sha256] {
        let creds = store.credentials("juliet", hash).await.unwrap().unwrap();
        assert_eq!(
            (creds.hash, creds.iterations, creds.salt.len()),
            (hash, I, 16)
        );
        assert!(store.credentials("nobody", hash).await.unwrap().is_none());
    }
    assert!(store.verify_password("juliet", password).await.unwrap());
    assert!(!store.verify_password("juliet", "wrong").await.unwrap());
    assert!(!store.verify_password("nobody", password).await.unwrap());
    store.set_password("romeo", "new", I).await.unwrap();
    assert!(store.verify_password("romeo", "new").await.unwrap());
    assert!(!store.verify_password("romeo", password).await.unwrap());
    assert!(matches!(
        store.set_password("nobody", "x", I).await,
        Err(StoreError::NoSuchUser(_))
    ));
    store.delete_user("romeo").await.unwrap();
    assert!(matches!(
        store.delete_user("romeo").await,
        Err(StoreError::NoSuchUser(_))
    ));
    // Byte order of the UTF-8, like SQLite and Rust.
    assert_eq!(store.list_users().await.unwrap(), ["juliet", "ünïcödé"]);
    // Nothing in the table is the password.
    let dump = server.sql(&format!("SELECT * FROM `{}`.accounts", db_name(&url)));
    assert!(
        dump.contains("juliet") && !dump.contains(password),
        "{dump}"
    );

    // Hostile names are not found and break nothing.
    for name in HOSTILE {
        assert!(
            !store.verify_password(name, password).await.unwrap(),
            "{name:?}"
        );
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            assert!(store.credentials(name, hash).await.unwrap().is_none());
        }
    }
    assert!(store.verify_password("juliet", password).await.unwrap());
    store.close().await;

    // Open again (the schema is there): same accounts.
    let store = open_mysql(mysql_config(url, MysqlAccounts::Scram))
        .await
        .unwrap();
    assert_eq!(store.list_users().await.unwrap(), ["juliet", "ünïcödé"]);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_schema_checked_when_not_migrating_and_migrated_once_by_many() {
    let server = servers::shared_mariadb();
    let url = server.create_database("schema");
    let mut cfg = mysql_config(url.clone(), MysqlAccounts::Scram);
    cfg.migrate = false;
    // An empty database: the error says what is missing and what to do.
    let r = open_mysql(cfg.clone()).await;
    assert_unavailable(r, "mysql", "table accounts");
    let r = open_mysql(cfg.clone()).await;
    assert_unavailable(r, "mysql", "apply shared/store/migrations/mysql/*.sql");

    // Four nodes starting together on the fresh database: one migrates, the others wait.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let cfg = mysql_config(url.clone(), MysqlAccounts::Scram);
        tasks.push(tokio::spawn(async move { open_mysql(cfg).await }));
    }
    for t in tasks {
        t.await.unwrap().unwrap().close().await;
    }
    // Now the check passes.
    open_mysql(cfg).await.unwrap().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_unreachable_fails_fast_naming_the_server() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let r = open_mysql(mysql_config(
        format!("mysql://jf:secret@127.0.0.1:{port}/jf_x"),
        MysqlAccounts::Scram,
    ))
    .await;
    assert_unavailable(
        r,
        "mysql",
        &format!("cannot connect to 127.0.0.1:{port}/jf_x"),
    );
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Hashes of "secret" made by other implementations (see `legacy.rs`).
const SSHA: &str = "{SSHA}zpjDGbAbUAIVw0xuF8p4MXGZZ1Elv2D3";
const BCRYPT: &str = "$2b$10$abcdefghijklmnopqrstuuqflPDzB6gcMhKa1rZqKiun2YGL5sa2u";
const ARGON2I: &str = "$argon2i$v=19$m=4096,t=3,p=1$nxYT7gowl76D3QOmrkua/w$\
                       JajTBAUQ4uND7YExRYkO7wYCXl1EPjF4aAhuv4rAI3A";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_existing_user_table_with_legacy_hashes() {
    let server = servers::shared_mariadb();
    let url = server.create_database("legacy");
    let db = db_name(&url);
    server.sql(&format!(
        "CREATE TABLE `{db}`.members (nick VARCHAR(64) PRIMARY KEY, ssha TEXT, bc TEXT, \
         a2 TEXT, dup INT); \
         INSERT INTO `{db}`.members VALUES ('alice', '{SSHA}', '{BCRYPT}', '{ARGON2I}', 1), \
         ('broken', 'not a hash', 'not a hash', 'not a hash', 1), \
         ('twin1', '{SSHA}', '{BCRYPT}', '{ARGON2I}', 2), \
         ('twin2', '{SSHA}', '{BCRYPT}', '{ARGON2I}', 2);"
    ));
    for (column, format) in [
        ("ssha", PasswordFormat::Ssha),
        ("bc", PasswordFormat::Bcrypt),
        ("a2", PasswordFormat::Argon2),
    ] {
        let store = open_mysql(mysql_config(
            url.clone(),
            MysqlAccounts::Legacy {
                login_query: format!("SELECT {column} FROM members WHERE nick = ?"),
                format,
            },
        ))
        .await
        .unwrap();
        assert!(store.plain_only());
        assert!(
            store.verify_password("alice", "secret").await.unwrap(),
            "{column}"
        );
        assert!(!store.verify_password("alice", "Secret").await.unwrap());
        assert!(!store.verify_password("alice", "").await.unwrap());
        assert!(!store.verify_password("nobody", "secret").await.unwrap());
        if format == PasswordFormat::Ssha {
            // Once: the query is the same for every format (and argon2 decoys are slow in
            // debug builds).
            for name in HOSTILE {
                assert!(
                    !store.verify_password(name, "secret").await.unwrap(),
                    "{name:?}"
                );
            }
        }
        // No SCRAM keys, and jabberfarm does not manage these accounts.
        assert!(
            store
                .credentials("alice", ScramHash::Sha256)
                .await
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            store.add_user("carol", "x", I).await,
            Err(StoreError::ManagedElsewhere(m)) if m.contains("existing user table")
        ));
        assert!(matches!(
            store.list_users().await,
            Err(StoreError::ManagedElsewhere(_))
        ));
        // A value that is not a hash of the format is the backend's fault, not a wrong password.
        let r = store.verify_password("broken", "secret").await;
        assert_unavailable(r, "mysql", "storage.mysql.password_format");
        store.close().await;
    }
    // A query that can return two rows for one login is refused, not guessed at.
    let store = open_mysql(mysql_config(
        url.clone(),
        MysqlAccounts::Legacy {
            login_query: "SELECT ssha FROM members WHERE dup = 2 AND nick <> ?".into(),
            format: PasswordFormat::Ssha,
        },
    ))
    .await
    .unwrap();
    assert_unavailable(
        store.verify_password("x", "secret").await,
        "mysql",
        "returned 2 rows",
    );
    store.close().await;
    // A broken login_query fails at start.
    let r = open_mysql(mysql_config(
        url,
        MysqlAccounts::Legacy {
            login_query: "SELECT pw FROM no_such_table WHERE nick = ?".into(),
            format: PasswordFormat::Ssha,
        },
    ))
    .await;
    assert_unavailable(r, "mysql", "storage.mysql.login_query");
}

// ---- LDAP ----------------------------------------------------------------------------------

const SERVICE_DN: &str = "cn=jabberfarm,ou=services,dc=example,dc=net";
const SERVICE_PASSWORD: &str = "service-pw";

fn ldif() -> String {
    let hash = servers::Slapd::hash;
    let mut out = String::from(servers::BASE_LDIF);
    out.push_str(&format!(
        "dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n\
         cn: jabberfarm\nuserPassword: {}\n\n",
        hash(SERVICE_PASSWORD)
    ));
    for (dn, uid) in [
        ("uid=alice", "alice"),
        ("uid=admin", "admin"),
        // Two entries with one uid: search-then-bind must not pick either.
        ("cn=twin one", "twin"),
        ("cn=twin two", "twin"),
    ] {
        out.push_str(&format!(
            "dn: {dn},ou=people,dc=example,dc=net\nobjectClass: inetOrgPerson\nuid: {uid}\n\
             cn: {uid}\nsn: {uid}\nuserPassword: {}\n\n",
            hash(&format!("{uid}-secret"))
        ));
    }
    out
}

fn ldap_config(slapd: &servers::Slapd, auth: LdapAuth, starttls: bool) -> LdapConfig {
    LdapConfig {
        url: if starttls {
            slapd.ldap_url.clone()
        } else {
            slapd.ldaps_url.clone()
        },
        starttls,
        ca: slapd.ca.clone(),
        auth,
        max_connections: 4,
        timeout: Duration::from_secs(2),
        data: ImDataConfig::Sqlite {
            path_template: "{node}.sqlite".into(),
        },
    }
}

async fn open_ldap(cfg: LdapConfig, dir: &Path) -> Result<AccountStore, StoreError> {
    let storage = StorageConfig {
        backend: StorageBackend::Ldap(cfg),
        scram_iterations: I,
    };
    AccountStore::open(&storage, dir, "slave1").await
}

fn search(service: Option<(&str, &str)>) -> LdapAuth {
    LdapAuth::Search {
        base: "ou=people,dc=example,dc=net".into(),
        filter_template: "(&(objectClass=inetOrgPerson)(uid={user}))".into(),
        service: service.map(|(dn, pw)| (dn.to_owned(), pw.to_owned())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_bind_and_search_then_bind() {
    let slapd = servers::shared_slapd(ldif);
    let dir = tempfile::tempdir().unwrap();
    let bind = LdapAuth::Bind {
        dn_template: "uid={user},ou=people,dc=example,dc=net".into(),
    };
    let cases = [
        ("bind, StartTLS", ldap_config(&slapd, bind, true)),
        (
            "search-then-bind, LDAPS",
            ldap_config(&slapd, search(Some((SERVICE_DN, SERVICE_PASSWORD))), false),
        ),
    ];
    for (what, cfg) in cases {
        let store = open_ldap(cfg, dir.path()).await.unwrap();
        assert!(store.plain_only());
        assert!(
            store
                .verify_password("alice", "alice-secret")
                .await
                .unwrap(),
            "{what}"
        );
        assert!(
            store
                .verify_password("admin", "admin-secret")
                .await
                .unwrap(),
            "{what}"
        );
        assert!(
            !store
                .verify_password("alice", "admin-secret")
                .await
                .unwrap(),
            "{what}"
        );
        assert!(
            !store
                .verify_password("nobody", "alice-secret")
                .await
                .unwrap(),
            "{what}"
        );
        // An empty password would be an anonymous bind: refused before any bind.
        assert!(!store.verify_password("alice", "").await.unwrap(), "{what}");
        // Injection attempts with a real user's password get nowhere.
        for name in HOSTILE {
            for pw in ["alice-secret", "admin-secret"] {
                assert!(
                    !store.verify_password(name, pw).await.unwrap(),
                    "{what}: {name:?} with {pw}"
                );
            }
        }
        // Two entries with the same uid: never "the first one" (and bind mode finds no
        // `uid=twin` DN at all).
        assert!(
            !store.verify_password("twin", "twin-secret").await.unwrap(),
            "{what}"
        );
        // The pool serves concurrent logins.
        let mut tasks = Vec::new();
        for n in 0..12 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let pw = if n % 2 == 0 { "alice-secret" } else { "wrong" };
                (n, store.verify_password("alice", pw).await.unwrap())
            }));
        }
        for t in tasks {
            let (n, ok) = t.await.unwrap();
            assert_eq!(ok, n % 2 == 0, "{what}: {n}");
        }
        assert!(matches!(
            store.add_user("carol", "x", I).await,
            Err(StoreError::ManagedElsewhere(m)) if m.contains("LDAP directory")
        ));
        assert!(
            store
                .credentials("alice", ScramHash::Sha256)
                .await
                .unwrap()
                .is_none()
        );
        // IM data lives in the node's SQLite file.
        assert!(matches!(store.im_database(), ImDatabase::Sqlite(_)));
        store.close().await;
    }
    assert!(dir.path().join("slave1.sqlite").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_configuration_mistakes_fail_at_start_with_the_key_to_fix() {
    let slapd = servers::shared_slapd(ldif);
    let dir = tempfile::tempdir().unwrap();
    // A wrong service password.
    let cfg = ldap_config(&slapd, search(Some((SERVICE_DN, "wrong"))), false);
    assert_unavailable(
        open_ldap(cfg, dir.path()).await,
        "ldap",
        "storage.ldap.service_dn",
    );
    // A CA that did not sign the directory's certificate (the system's bundle).
    let mut cfg = ldap_config(&slapd, search(Some((SERVICE_DN, SERVICE_PASSWORD))), false);
    cfg.ca = "/etc/ssl/certs/ca-certificates.crt".into();
    if cfg.ca.is_file() {
        assert_unavailable(open_ldap(cfg, dir.path()).await, "ldap", "connecting");
    }
    // Nobody listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cfg = ldap_config(&slapd, search(None), false);
    cfg.url = format!("ldaps://127.0.0.1:{port}");
    let started = Instant::now();
    assert_unavailable(
        open_ldap(cfg, dir.path()).await,
        "ldap",
        &format!("ldaps://127.0.0.1:{port}"),
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // Anonymous search where the directory's ACLs hide the base: a configuration problem
    // that the log names, not "everybody has the wrong password".
    let cfg = ldap_config(&slapd, search(None), false);
    let store = open_ldap(cfg, dir.path()).await.unwrap();
    assert_unavailable(
        store.verify_password("alice", "alice-secret").await,
        "ldap",
        "check storage.ldap.base",
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ldap_outage_is_unavailable_and_recovers() {
    let slapd = Arc::new(servers::Slapd::start(&ldif()));
    let dir = tempfile::tempdir().unwrap();
    let cfg = ldap_config(&slapd, search(Some((SERVICE_DN, SERVICE_PASSWORD))), true);
    let store = open_ldap(cfg, dir.path()).await.unwrap();
    assert!(
        store
            .verify_password("alice", "alice-secret")
            .await
            .unwrap()
    );
    slapd.stop();
    let started = Instant::now();
    let r = store.verify_password("alice", "alice-secret").await;
    assert_unavailable(r, "ldap", &slapd.ldap_url);
    assert!(started.elapsed() < Duration::from_secs(9));
    slapd.restart();
    // The pooled connection died with the server; the next login uses a new one.
    assert!(
        store
            .verify_password("alice", "alice-secret")
            .await
            .unwrap()
    );
    assert!(!store.verify_password("alice", "wrong").await.unwrap());
    store.close().await;
}
