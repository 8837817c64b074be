//! Throwaway MariaDB and OpenLDAP servers for tests: Rust handles on `tests/servers/mariadb.sh`
//! and `tests/servers/slapd.sh`. Used by `tests/backends.rs` and by the store crate's tests, so
//! both start servers the same way.
//!
//! Each server lives in its own temporary directory on free loopback ports and is stopped when
//! its handle drops (the scripts' watchdog also stops it if the test process dies). A server
//! that cannot start fails the test with its log; nothing is skipped. [`shared_mariadb`] and
//! [`shared_slapd`] give every test of one binary the same instance while any test holds it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

/// `tests/servers/NAME`, found from the crate that includes this file (the workspace root or a
/// member below it).
fn script(name: &str) -> PathBuf {
    let mut dir = Some(Path::new(env!("CARGO_MANIFEST_DIR")));
    while let Some(d) = dir {
        let candidate = d.join("tests").join("servers").join(name);
        if candidate.is_file() {
            return candidate;
        }
        dir = d.parent();
    }
    panic!(
        "tests/servers/{name} not found above {}",
        env!("CARGO_MANIFEST_DIR")
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(script_name: &str, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(script(script_name))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script_name}: {e}"))
}

fn value<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {stdout:?}"))
}

/// The URL `mariadb.sh start` printed; panics with what it said if the server did not start.
fn launched(out: Output) -> String {
    assert!(
        out.status.success(),
        "MariaDB did not start (tests/servers/mariadb.sh):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    value(&String::from_utf8_lossy(&out.stdout), "url").to_owned()
}

/// What `slapd.sh start` printed; panics with what it said if slapd did not start.
fn launched_slapd(out: Output) -> String {
    assert!(
        out.status.success(),
        "slapd did not start (tests/servers/slapd.sh):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A MariaDB server; the user `jabberfarm` may create and use databases named `jf_*`.
pub struct MariaDb {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// `mysql://jabberfarm:PASSWORD@127.0.0.1:PORT` (no database).
    base_url: String,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        let mut db = MariaDb {
            dir: tempfile::tempdir().unwrap(),
            port: 0,
            base_url: String::new(),
        };
        // A port free when chosen may be taken before the server binds it (by an outgoing
        // connection's ephemeral port, say): mariadb.sh then says so (exit 3), and another
        // one is tried.
        for _ in 0..5 {
            db.port = free_port();
            let out = db.try_launch();
            if out.status.code() != Some(3) {
                db.base_url = launched(out);
                return db;
            }
        }
        panic!("MariaDB could not bind a free port in 5 attempts");
    }

    fn try_launch(&self) -> Output {
        run(
            "mariadb.sh",
            &[
                "start",
                self.dir_str(),
                &self.port.to_string(),
                &std::process::id().to_string(),
            ],
        )
    }

    fn launch(&self) -> String {
        launched(self.try_launch())
    }

    fn dir_str(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base_url)
    }

    /// Creates a new, empty database `jf_<prefix>_<pid>_<n>` and returns its URL.
    pub fn create_database(&self, prefix: &str) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "jf_{prefix}_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        self.sql(&format!("CREATE DATABASE `{name}`"));
        self.url(&name)
    }

    /// Runs SQL as root (over the socket); panics with the server's answer if it fails.
    pub fn sql(&self, sql: &str) -> String {
        let out = run("mariadb.sh", &["sql", self.dir_str(), sql]);
        assert!(
            out.status.success(),
            "SQL failed: {sql}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Stops the server (as an outage would); [`Self::restart`] brings it back on the same port
    /// with the same data.
    pub fn stop(&self) {
        let out = run("mariadb.sh", &["stop", self.dir_str()]);
        assert!(out.status.success(), "{out:?}");
    }

    pub fn restart(&self) {
        self.launch();
    }

    pub fn log(&self) -> String {
        String::from_utf8_lossy(&run("mariadb.sh", &["log", self.dir_str()]).stdout).into_owned()
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        // Its data goes with the temporary directory: no clean shutdown needed.
        let _ = run("mariadb.sh", &["kill", self.dir_str()]);
    }
}

/// The binary's MariaDB, started by the first test that asks and stopped when the last one
/// holding it is done.
pub fn shared_mariadb() -> Arc<MariaDb> {
    static SHARED: Mutex<Weak<MariaDb>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(db) = slot.upgrade() {
        return db;
    }
    let db = Arc::new(MariaDb::start());
    *slot = Arc::downgrade(&db);
    db
}

/// An OpenLDAP slapd with suffix `dc=example,dc=net`, seeded from LDIF, speaking StartTLS on
/// `ldap_url` and TLS on `ldaps_url` with a certificate from the CA in `ca`.
/// The directory every test seeds on: `dc=example,dc=net` with the organizational units
/// `ou=people` (the accounts) and `ou=services` (service accounts for search-then-bind).
pub const BASE_LDIF: &str = "dn: dc=example,dc=net\nobjectClass: dcObject\nobjectClass: organization\n\
    o: Example\ndc: example\n\n\
    dn: ou=people,dc=example,dc=net\nobjectClass: organizationalUnit\nou: people\n\n\
    dn: ou=services,dc=example,dc=net\nobjectClass: organizationalUnit\nou: services\n\n";

pub struct Slapd {
    pub dir: tempfile::TempDir,
    pub ldap_url: String,
    pub ldaps_url: String,
    pub ca: PathBuf,
    ports: (u16, u16),
}

impl Slapd {
    /// `seed`: LDIF for `slapadd` (the suffix entry first).
    pub fn start(seed: &str) -> Slapd {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("seed.ldif"), seed).unwrap();
        let mut s = Slapd {
            dir,
            ldap_url: String::new(),
            ldaps_url: String::new(),
            ca: PathBuf::new(),
            ports: (0, 0),
        };
        // As for MariaDB: ports taken before slapd binds them are replaced (exit 3).
        let mut out = None;
        for _ in 0..5 {
            s.ports = (free_port(), free_port());
            let o = s.try_launch();
            if o.status.code() != Some(3) {
                out = Some(o);
                break;
            }
        }
        let out = launched_slapd(out.expect("slapd could not bind free ports in 5 attempts"));
        s.ldap_url = value(&out, "ldap").to_owned();
        s.ldaps_url = value(&out, "ldaps").to_owned();
        s.ca = PathBuf::from(value(&out, "ca"));
        s
    }

    fn launch(&self) -> String {
        launched_slapd(self.try_launch())
    }

    fn try_launch(&self) -> Output {
        let root = self.dir.path();
        let seed = root.join("seed.ldif");
        run(
            "slapd.sh",
            &[
                "start",
                root.join("server").to_str().unwrap(),
                &self.ports.0.to_string(),
                &self.ports.1.to_string(),
                &std::process::id().to_string(),
                seed.to_str().unwrap(),
            ],
        )
    }

    pub fn stop(&self) {
        let server = self.dir.path().join("server");
        let out = run("slapd.sh", &["stop", server.to_str().unwrap()]);
        assert!(out.status.success(), "{out:?}");
    }

    pub fn restart(&self) {
        self.launch();
    }

    pub fn log(&self) -> String {
        let server = self.dir.path().join("server");
        String::from_utf8_lossy(&run("slapd.sh", &["log", server.to_str().unwrap()]).stdout)
            .into_owned()
    }

    /// An `{SSHA}` userPassword value for `password` (slappasswd).
    pub fn hash(password: &str) -> String {
        let out = run("slapd.sh", &["hash", password]);
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        let server = self.dir.path().join("server");
        let _ = run("slapd.sh", &["stop", server.to_str().unwrap()]);
    }
}

/// The binary's slapd (see [`shared_mariadb`]); every caller must pass the same seed.
pub fn shared_slapd(seed: impl FnOnce() -> String) -> Arc<Slapd> {
    static SHARED: Mutex<Weak<Slapd>> = Mutex::new(Weak::new());
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(s) = slot.upgrade() {
        return s;
    }
    let s = Arc::new(Slapd::start(&seed()));
    *slot = Arc::downgrade(&s);
    s
}
