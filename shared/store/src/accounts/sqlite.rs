//! The embedded account store: one SQLite file per node (DESIGN.md D6), created on first start.
//!
//! Schema changes are migrations in `shared/store/migrations/sqlite/` (embedded at build time and
//! applied on open), so later tables (roster, offline messages) land in the same file.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sqlx::ConnectOptions;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

use super::{
    DerivedKeys, ScramCredentials, ScramHash, StoreError, credentials_from_row, unix_now,
    user_touched,
};

pub(crate) const BACKEND: &str = "sqlite";

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Connections in the pool: SQLite has one writer anyway; readers run beside it (WAL).
const MAX_CONNECTIONS: u32 = 4;
/// How long a caller waits for a free connection before the store counts as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a statement waits for another connection's write lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Dedicated connections for the hot single-statement reads (see [`Readers`]).
const READERS: usize = 2;

const SELECT_SHA1: &str = "SELECT salt, iterations, sha1_stored AS stored, sha1_server AS server \
                           FROM accounts WHERE username = ?1";
const SELECT_SHA256: &str = "SELECT salt, iterations, sha256_stored AS stored, \
                             sha256_server AS server FROM accounts WHERE username = ?1";

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    readers: Readers,
    /// For error messages: which file failed.
    path: PathBuf,
}

impl SqliteStore {
    /// Opens `path`, creating it (mode 0600: it holds SCRAM keys) and its parent directory if
    /// missing, in WAL mode, and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(|e| {
                unavailable(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        // Processes opening a fresh file together (two `jabberfarm user add`, or a node and a
        // `user add`) take turns: switching to WAL and creating the schema are not covered by
        // SQLite's busy timeout, so one opens and migrates, the next then finds it done.
        let lock = migration_lock(path).await?;
        create_private_file(path).await?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            // A file in this process cannot drop a connection the way a server can; the ping
            // before every acquire cost a round trip to the connection's worker thread, one
            // per store call (a fifth of a login's store work).
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        let migrated = MIGRATOR.run(&pool).await;
        drop(lock);
        if let Err(e) = migrated {
            pool.close().await;
            return Err(unavailable(format!(
                "cannot migrate the schema of {}: {e}",
                path.display()
            )));
        }
        let readers = match Readers::open(&options, READERS).await {
            Ok(r) => r,
            Err(e) => {
                pool.close().await;
                return Err(unavailable(format!("cannot open {}: {e}", path.display())));
            }
        };
        Ok(Self {
            pool,
            readers,
            path: path.to_owned(),
        })
    }

    /// The connection pool, for other tables kept in the same file.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Connections for single-statement reads of other tables in the same file.
    pub fn readers(&self) -> &Readers {
        &self.readers
    }

    pub(crate) async fn credentials(
        &self,
        username: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, StoreError> {
        let sql = match hash {
            ScramHash::Sha1 => SELECT_SHA1,
            ScramHash::Sha256 => SELECT_SHA256,
        };
        let mut conn = self
            .readers
            .get()
            .await
            .map_err(|e| self.db_error("reading credentials", e))?;
        // fetch_all, not fetch_optional: both wait for the statement to finish, found or
        // not (fetch_optional returns at the first row, a wake-up sooner than "no row"),
        // so an unknown name cannot be told from a real one by the answer's timing.
        let row = sqlx::query(sql)
            .bind(username)
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| self.db_error("reading credentials", e))?
            .into_iter()
            .next();
        drop(conn);
        row.map(|row| {
            credentials_from_row(&row, hash).map_err(|detail| {
                unavailable(format!(
                    "corrupt account {username:?} in {}: {detail}",
                    self.path.display()
                ))
            })
        })
        .transpose()
    }

    pub(crate) async fn add_user(
        &self,
        username: &str,
        keys: &DerivedKeys,
    ) -> Result<(), StoreError> {
        let done = keys
            .bind(sqlx::query(
                "INSERT INTO accounts (salt, iterations, sha1_stored, sha1_server, \
                 sha256_stored, sha256_server, username, created_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (username) DO NOTHING",
            ))
            .bind(username)
            .bind(unix_now())
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error("adding a user", e))?;
        if done.rows_affected() == 0 {
            return Err(StoreError::Exists(username.to_owned()));
        }
        Ok(())
    }

    pub(crate) async fn set_keys(
        &self,
        username: &str,
        keys: &DerivedKeys,
    ) -> Result<(), StoreError> {
        let done = keys
            .bind(sqlx::query(
                "UPDATE accounts SET salt = ?1, iterations = ?2, sha1_stored = ?3, \
                 sha1_server = ?4, sha256_stored = ?5, sha256_server = ?6 WHERE username = ?7",
            ))
            .bind(username)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error("changing a password", e))?;
        user_touched(done.rows_affected(), username)
    }

    pub(crate) async fn delete_user(&self, username: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM accounts WHERE username = ?1")
            .bind(username)
            .execute(&self.pool)
            .await
            .map_err(|e| self.db_error("deleting a user", e))?;
        user_touched(done.rows_affected(), username)
    }

    pub async fn list_users(&self) -> Result<Vec<String>, StoreError> {
        // BINARY collation: byte order of the UTF-8, the same order as Rust's `str`.
        sqlx::query_scalar("SELECT username FROM accounts ORDER BY username")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.db_error("listing users", e))
    }

    pub(crate) async fn close(&self) {
        self.readers.close().await;
        self.pool.close().await;
    }

    pub(crate) fn db_error(&self, doing: &str, e: sqlx::Error) -> StoreError {
        unavailable(format!("{doing} in {}: {e}", self.path.display()))
    }
}

fn unavailable(detail: String) -> StoreError {
    StoreError::Unavailable {
        backend: BACKEND,
        detail,
    }
}

/// Connections of their own for the hot single-statement reads: a login's credentials, what
/// a user has stored. Every query through sqlx's pool costs two round trips to the
/// connection's worker thread, because the pool pings each connection it takes back; these
/// are never given back, so a read is one round trip. Only autocommit SELECTs run here (each
/// sees one snapshot); transactions and writes use the pool.
#[derive(Clone, Debug)]
pub struct Readers {
    /// `None` once closed.
    conns: Arc<[Mutex<Option<SqliteConnection>>]>,
    next: Arc<AtomicUsize>,
}

impl Readers {
    async fn open(options: &SqliteConnectOptions, n: usize) -> Result<Self, sqlx::Error> {
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n.max(1) {
            conns.push(Mutex::new(Some(options.connect().await?)));
        }
        Ok(Self {
            conns: conns.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// A free connection, else the next in turn once it is free (at most the pool's acquire
    /// timeout).
    pub async fn get(&self) -> Result<MappedMutexGuard<'_, SqliteConnection>, sqlx::Error> {
        let free = self.conns.iter().find_map(|c| c.try_lock().ok());
        let guard = match free {
            Some(g) => g,
            None => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.conns.len();
                tokio::time::timeout(ACQUIRE_TIMEOUT, self.conns[i].lock())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)?
            }
        };
        MutexGuard::try_map(guard, Option::as_mut).map_err(|_| sqlx::Error::PoolClosed)
    }

    /// Waits for running reads, then closes every connection.
    async fn close(&self) {
        for c in self.conns.iter() {
            if let Some(conn) = c.lock().await.take() {
                let _ = sqlx::Connection::close(conn).await;
            }
        }
    }
}

/// Creates an empty database file readable by its owner only; SQLite gives its `-wal` and
/// `-shm` files the same mode. An existing file is left as it is.
async fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(0o600);
    match options.open(path).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(unavailable(format!(
            "cannot create {}: {e}",
            path.display()
        ))),
    }
}

/// An exclusive lock on `<db>.lock`, held while the file is opened and its schema migrated
/// (released on drop).
async fn migration_lock(db: &Path) -> Result<std::fs::File, StoreError> {
    let mut name = db.as_os_str().to_owned();
    name.push(".lock");
    let path = std::path::PathBuf::from(name);
    tokio::task::spawn_blocking(move || {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| unavailable(format!("cannot open {}: {e}", path.display())))?;
        f.lock()
            .map_err(|e| unavailable(format!("cannot lock {}: {e}", path.display())))?;
        Ok(f)
    })
    .await
    .map_err(|e| unavailable(format!("migration lock: {e}")))?
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::super::{AccountStore, MIN_ITERATIONS};
    use super::*;

    const I: u32 = MIN_ITERATIONS;

    async fn open(dir: &Path) -> (AccountStore, PathBuf) {
        let path = dir.join("data").join("accounts.sqlite");
        (AccountStore::open_sqlite(&path).await.unwrap(), path)
    }

    /// Separate opens of a fresh file at once (as separate `jabberfarm user add` processes
    /// do) all succeed, and every user added through them is there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_opens_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fresh.sqlite");
        let tasks: Vec<_> = (0..6)
            .map(|i| {
                let p = path.clone();
                tokio::spawn(async move {
                    let store = AccountStore::open_sqlite(&p).await.unwrap();
                    store.add_user(&format!("u{i}"), "pw", I).await.unwrap();
                    store.close().await;
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let store = AccountStore::open_sqlite(&path).await.unwrap();
        assert_eq!(store.list_users().await.unwrap().len(), 6);
    }

    async fn check_password(store: &AccountStore, user: &str, password: &str) -> bool {
        let mut results = Vec::new();
        for hash in [ScramHash::Sha1, ScramHash::Sha256] {
            let creds = store.credentials(user, hash).await.unwrap().unwrap();
            assert_eq!(creds.hash, hash);
            assert_eq!(creds.iterations, I);
            assert_eq!(creds.salt.len(), 16);
            let password = password.to_owned();
            let ok = tokio::task::spawn_blocking(move || creds.verify_plain(&password))
                .await
                .unwrap();
            results.push(ok);
        }
        assert_eq!(results[0], results[1], "SHA-1 and SHA-256 keys disagree");
        results[0]
    }

    #[tokio::test]
    async fn add_verify_and_no_password_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = open(dir.path()).await;
        let password = "correct horse battery staple";
        store.add_user("juliet", password, I).await.unwrap();
        assert!(check_password(&store, "juliet", password).await);
        assert!(!check_password(&store, "juliet", "wrong").await);
        assert!(
            store
                .credentials("romeo", ScramHash::Sha256)
                .await
                .unwrap()
                .is_none()
        );
        // A name no account can have is just not found.
        assert!(
            store
                .credentials("a@b", ScramHash::Sha1)
                .await
                .unwrap()
                .is_none()
        );

        // Neither the database nor its WAL holds the password, while open or after close.
        let scan = |when: &str| {
            let mut files = 0;
            for entry in std::fs::read_dir(path.parent().unwrap()).unwrap() {
                let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                files += 1;
                assert!(
                    !bytes
                        .windows(password.len())
                        .any(|w| w == password.as_bytes()),
                    "password found on disk {when}"
                );
            }
            assert!(files >= 1);
        };
        scan("while open");
        store.close().await;
        scan("after close");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[tokio::test]
    async fn duplicate_set_password_delete_list_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (store, path) = open(dir.path()).await;
        for user in ["romeo", "juliet", "benvolio"] {
            store.add_user(user, "right", I).await.unwrap();
        }
        assert!(matches!(
            store.add_user("juliet", "other", I).await,
            Err(StoreError::Exists(ref u)) if u == "juliet"
        ));
        assert!(
            check_password(&store, "juliet", "right").await,
            "duplicate add changed it"
        );

        let old_salt = store
            .credentials("romeo", ScramHash::Sha1)
            .await
            .unwrap()
            .unwrap()
            .salt;
        store.set_password("romeo", "new", I).await.unwrap();
        assert!(check_password(&store, "romeo", "new").await);
        assert!(!check_password(&store, "romeo", "right").await);
        let new_salt = store
            .credentials("romeo", ScramHash::Sha1)
            .await
            .unwrap()
            .unwrap()
            .salt;
        assert_ne!(old_salt, new_salt);
        assert!(matches!(
            store.set_password("nobody", "x", I).await,
            Err(StoreError::NoSuchUser(ref u)) if u == "nobody"
        ));

        store.delete_user("benvolio").await.unwrap();
        assert!(
            store
                .credentials("benvolio", ScramHash::Sha1)
                .await
                .unwrap()
                .is_none()
        );
        assert!(matches!(
            store.delete_user("benvolio").await,
            Err(StoreError::NoSuchUser(ref u)) if u == "benvolio"
        ));
        assert_eq!(store.list_users().await.unwrap(), ["juliet", "romeo"]);
        store.close().await;

        let store = AccountStore::open_sqlite(&path).await.unwrap();
        assert_eq!(store.list_users().await.unwrap(), ["juliet", "romeo"]);
        assert!(check_password(&store, "romeo", "new").await);
        store.close().await;
    }

    #[tokio::test]
    async fn rejects_bad_input() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path()).await;
        assert!(matches!(
            store.add_user("a b", "x", I).await,
            Err(StoreError::InvalidUsername(ref u)) if u == "a b"
        ));
        assert!(matches!(
            store.add_user("juliet", "x", 1).await,
            Err(StoreError::TooFewIterations(1))
        ));
        assert!(store.list_users().await.unwrap().is_empty());
        store.close().await;
    }

    #[tokio::test]
    async fn unusable_location_is_unavailable() {
        let dir = tempfile::tempdir().unwrap();
        // The parent "directory" is a regular file (fails whoever runs the test, root too).
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let unavailable = async |path: &Path| {
            let err = AccountStore::open_sqlite(path).await.unwrap_err();
            assert!(
                matches!(
                    err,
                    StoreError::Unavailable {
                        backend: "sqlite",
                        ..
                    }
                ),
                "{err:?}"
            );
            err.to_string()
        };
        let text = unavailable(&file.join("accounts.sqlite")).await;
        assert!(text.contains("cannot create directory"), "{text}");
        assert!(text.contains(&file.display().to_string()), "{text}");

        // The path is a directory: SQLite cannot open it.
        let text = unavailable(dir.path()).await;
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert!(
            text.starts_with("sqlite account backend unavailable: "),
            "{text}"
        );
    }
}
