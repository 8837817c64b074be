//! Accounts: SCRAM credentials (`jabberfarm_proto::scram`) and the stores that keep them (DESIGN.md D6;
//! `docs/backends.md`).
//!
//! [`AccountStore`] is a closed enum over the backends with a narrow async API. A wrong password
//! is never an error here: [`AccountStore::credentials`] returns the keys (or `None` for an
//! unknown user) and the caller checks the proof, [`AccountStore::verify_password`] answers
//! `false`; [`StoreError::Unavailable`] means the backend itself failed, so a login answers
//! `temporary-auth-failure`, not `not-authorized`. Passwords are never stored: only salted SCRAM
//! keys for SHA-1 and SHA-256 (or, read-only, an existing table's hashes or a directory).
//!
//! - [`sqlite`]: the embedded store, one file per node.
//! - [`mysql`]: the central store on MySQL/MariaDB: our SCRAM table, or an existing user table.
//! - [`ldap`]: accounts in an LDAP directory (bind, or search-then-bind).
//! - [`legacy`]: argon2, bcrypt and `{SSHA}` hashes of existing user tables.

pub mod ldap;
pub mod legacy;
pub mod mysql;
pub mod sqlite;

/// The MySQL and LDAP stores against real servers.
#[cfg(test)]
mod server_tests;

use std::path::Path;

pub use jabberfarm_proto::scram::{ScramCredentials, ScramHash};
pub use ldap::LdapStore;
pub use mysql::MysqlStore;
pub use sqlite::SqliteStore;

use jabberfarm_config::{ImDataConfig, StorageBackend, StorageConfig};
use jabberfarm_net::c2s::{Accounts, AccountsFuture};

/// Lowest PBKDF2 iteration count accepted for new credentials (RFC 7677 §4: "at least 4096").
pub const MIN_ITERATIONS: u32 = 4096;

/// Longest localpart in bytes (RFC 7622 §3.3.1).
const MAX_USERNAME_BYTES: usize = 1023;

/// What [`AccountStore::exists`] can say about a username.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existence {
    Yes,
    No,
    /// The backend cannot look users up without their password (LDAP bind mode): only a
    /// successful login shows that an account exists.
    Unknown,
}

/// An account backend (`storage.backend`).
#[derive(Clone, Debug)]
pub enum AccountStore {
    /// One SQLite file per node, accounts and IM data.
    Sqlite(SqliteStore),
    /// One MySQL/MariaDB database for the farm, accounts (SCRAM keys or an existing user table)
    /// and IM data.
    Mysql(MysqlStore),
    /// Accounts in the directory; IM data in the database beside it (`storage.ldap.data`).
    Ldap(LdapStore, ImDatabase),
}

/// The database that keeps the per-user IM data (`shared/store/src/im/`) beside the accounts: the
/// account store's own, or for LDAP the one `storage.ldap.data` names. Its schema is migrated.
#[derive(Clone, Debug)]
pub enum ImDatabase {
    Sqlite(SqliteStore),
    Mysql(MysqlStore),
}

impl ImDatabase {
    async fn close(&self) {
        match self {
            Self::Sqlite(s) => s.close().await,
            Self::Mysql(s) => s.close().await,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend could not answer (file, server or network down, corrupt data).
    #[error("{backend} account backend unavailable: {detail}")]
    Unavailable {
        backend: &'static str,
        detail: String,
    },
    #[error("user {0} already exists")]
    Exists(String),
    #[error("no such user {0}")]
    NoSuchUser(String),
    #[error(
        "invalid username {0:?}: must be 1 to 1023 bytes without spaces, control characters \
         or any of \" & ' / : < > @ (RFC 7622 §3.3.1)"
    )]
    InvalidUsername(String),
    #[error("{0} PBKDF2 iterations are too few: at least {MIN_ITERATIONS} (RFC 7677 §4)")]
    TooFewIterations(u32),
    /// The accounts live where jabberfarm only reads them (a directory, an existing table).
    #[error("{0}")]
    ManagedElsewhere(&'static str),
}

impl AccountStore {
    /// The node's own SQLite file, when that is where the data lives (it moves with its users:
    /// [`crate::moving`]).
    pub fn sqlite(&self) -> Option<&SqliteStore> {
        match self {
            AccountStore::Sqlite(s) => Some(s),
            _ => None,
        }
    }

    /// Opens the configured store for `node` (for SQLite: the node's file under `data_dir`,
    /// created on first start), bringing its schema up to date.
    pub async fn open(
        storage: &StorageConfig,
        data_dir: &Path,
        node: &str,
    ) -> Result<Self, StoreError> {
        let sqlite = || {
            storage
                .sqlite_path(data_dir, node)
                .ok_or_else(|| StoreError::Unavailable {
                    backend: sqlite::BACKEND,
                    detail: "no SQLite file configured (storage.path)".to_owned(),
                })
        };
        match &storage.backend {
            StorageBackend::Sqlite { .. } => Self::open_sqlite(&sqlite()?).await,
            StorageBackend::Mysql(cfg) => MysqlStore::open(cfg).await.map(Self::Mysql),
            StorageBackend::Ldap(cfg) => {
                let data = match &cfg.data {
                    ImDataConfig::Sqlite { .. } => {
                        ImDatabase::Sqlite(SqliteStore::open(&sqlite()?).await?)
                    }
                    ImDataConfig::Mysql(m) => ImDatabase::Mysql(MysqlStore::open(m).await?),
                };
                match LdapStore::open(cfg).await {
                    Ok(directory) => Ok(Self::Ldap(directory, data)),
                    Err(e) => {
                        data.close().await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Opens (and on first start creates, with its parent directory) the SQLite store at `path`
    /// and brings its schema up to date.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        SqliteStore::open(path).await.map(Self::Sqlite)
    }

    /// Where the per-user IM data lives.
    pub fn im_database(&self) -> ImDatabase {
        match self {
            Self::Sqlite(s) => ImDatabase::Sqlite(s.clone()),
            Self::Mysql(s) => ImDatabase::Mysql(s.clone()),
            Self::Ldap(_, data) => data.clone(),
        }
    }

    /// No SCRAM keys: only a password in clear can be checked ([`Self::verify_password`]), so
    /// logins are SASL PLAIN (over TLS) only.
    pub fn plain_only(&self) -> bool {
        match self {
            Self::Sqlite(_) => false,
            Self::Mysql(s) => s.is_legacy(),
            Self::Ldap(..) => true,
        }
    }

    /// The user's keys for `hash`; `None` if there is no such user (and always on a
    /// [`Self::plain_only`] backend). `username` is the normalised localpart. A name that no
    /// account can have (see [`StoreError::InvalidUsername`]) is simply not found.
    pub async fn credentials(
        &self,
        username: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, StoreError> {
        if check_username(username).is_err() {
            return Ok(None);
        }
        match self {
            Self::Sqlite(store) => store.credentials(username, hash).await,
            Self::Mysql(store) => store.credentials(username, hash).await,
            Self::Ldap(..) => Ok(None),
        }
    }

    /// Whether the account `username` exists, for deciding whether a message to an offline
    /// user is kept (offline storage) or bounced. No password is checked; nothing here is
    /// visible to the sender beyond that bounce, which an offline user with a full store gets
    /// too. [`Existence::Unknown`] only where the backend cannot look a user up: LDAP with
    /// `bind_dn` and no service account (the directory hides its entries from anonymous
    /// readers).
    pub async fn exists(&self, username: &str) -> Result<Existence, StoreError> {
        if check_username(username).is_err() {
            return Ok(Existence::No);
        }
        let found = match self {
            Self::Mysql(store) if store.is_legacy() => store.legacy_user_exists(username).await?,
            Self::Sqlite(_) | Self::Mysql(_) => self
                .credentials(username, ScramHash::Sha256)
                .await?
                .is_some(),
            Self::Ldap(directory, _) => match directory.exists(username).await? {
                Some(found) => found,
                None => return Ok(Existence::Unknown),
            },
        };
        Ok(if found { Existence::Yes } else { Existence::No })
    }

    /// Whether [`Self::exists`] can answer for every user; if not, the slave keeps a record of
    /// who has logged in (`known_users`) to answer for them.
    pub fn looks_up_users(&self) -> bool {
        match self {
            Self::Ldap(directory, _) => directory.can_search(),
            Self::Sqlite(_) | Self::Mysql(_) => true,
        }
    }

    /// Whether `password` is the user's password: `false` for a wrong password and for an
    /// unknown or impossible username alike. With SCRAM keys this derives a key (PBKDF2) on the
    /// blocking pool; with a legacy hash it checks the hash (an unknown user costs as much);
    /// with LDAP it binds (an empty password never reaches the directory).
    pub async fn verify_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<bool, StoreError> {
        if check_username(username).is_err() {
            return Ok(false);
        }
        match self {
            Self::Mysql(store) if store.is_legacy() => {
                store.verify_legacy(username, password).await
            }
            Self::Ldap(directory, _) => directory.verify(username, password).await,
            Self::Sqlite(_) | Self::Mysql(_) => {
                let Some(creds) = self.credentials(username, ScramHash::Sha256).await? else {
                    return Ok(false);
                };
                let password = password.to_owned();
                tokio::task::spawn_blocking(move || creds.verify_plain(&password))
                    .await
                    .map_err(|e| StoreError::Unavailable {
                        backend: self.backend_name(),
                        detail: format!("password check task failed: {e}"),
                    })
            }
        }
    }

    /// Creates an account with a random 16-byte salt, storing SHA-1 and SHA-256 keys.
    pub async fn add_user(
        &self,
        username: &str,
        password: &str,
        iterations: u32,
    ) -> Result<(), StoreError> {
        let keys = self.keys_for(username, password, iterations).await?;
        match self {
            Self::Sqlite(store) => store.add_user(username, &keys).await,
            Self::Mysql(store) => store.add_user(username, &keys).await,
            Self::Ldap(..) => Err(self.elsewhere()),
        }
    }

    /// Replaces the user's keys (new salt too); [`StoreError::NoSuchUser`] if absent.
    pub async fn set_password(
        &self,
        username: &str,
        password: &str,
        iterations: u32,
    ) -> Result<(), StoreError> {
        let keys = self.keys_for(username, password, iterations).await?;
        match self {
            Self::Sqlite(store) => store.set_keys(username, &keys).await,
            Self::Mysql(store) => store.set_keys(username, &keys).await,
            Self::Ldap(..) => Err(self.elsewhere()),
        }
    }

    /// The keys to store for a new password, once the username and the backend allow it.
    async fn keys_for(
        &self,
        username: &str,
        password: &str,
        iterations: u32,
    ) -> Result<DerivedKeys, StoreError> {
        check_username(username)?;
        self.managed_here()?;
        derive_keys(self.backend_name(), password, iterations).await
    }

    pub async fn delete_user(&self, username: &str) -> Result<(), StoreError> {
        check_username(username)?;
        self.managed_here()?;
        match self {
            Self::Sqlite(store) => store.delete_user(username).await,
            Self::Mysql(store) => store.delete_user(username).await,
            Self::Ldap(..) => Err(self.elsewhere()),
        }
    }

    /// All usernames, sorted (byte order of their UTF-8).
    pub async fn list_users(&self) -> Result<Vec<String>, StoreError> {
        self.managed_here()?;
        match self {
            Self::Sqlite(store) => store.list_users().await,
            Self::Mysql(store) => store.list_users().await,
            Self::Ldap(..) => Err(self.elsewhere()),
        }
    }

    /// The backend's name as error messages and logs show it.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => sqlite::BACKEND,
            Self::Mysql(_) => mysql::BACKEND,
            Self::Ldap(..) => ldap::BACKEND,
        }
    }

    /// Closes the backend's connections, waiting for running queries.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(store) => store.close().await,
            Self::Mysql(store) => store.close().await,
            Self::Ldap(directory, data) => {
                directory.close().await;
                data.close().await;
            }
        }
    }

    /// [`StoreError::ManagedElsewhere`] for a directory or an existing user table.
    fn managed_here(&self) -> Result<(), StoreError> {
        if self.plain_only() {
            Err(self.elsewhere())
        } else {
            Ok(())
        }
    }

    fn elsewhere(&self) -> StoreError {
        StoreError::ManagedElsewhere(match self {
            Self::Ldap(..) => {
                "accounts live in the LDAP directory (storage.ldap); manage them there \
                 (ldapadd, ldappasswd, ldapdelete)"
            }
            _ => {
                "accounts live in the existing user table that storage.mysql.login_query \
                 reads; manage them there"
            }
        })
    }
}

/// The keys of one password for both hashes, sharing one salt and iteration count.
#[derive(Debug)]
pub(crate) struct DerivedKeys {
    pub sha1: ScramCredentials,
    pub sha256: ScramCredentials,
}

impl DerivedKeys {
    /// Binds the six key columns to the first six parameters of a statement of either
    /// backend, in this order: `salt, iterations, sha1_stored, sha1_server, sha256_stored,
    /// sha256_server`.
    fn bind<'q, DB: sqlx::Database>(
        &self,
        query: sqlx::query::Query<'q, DB, DB::Arguments>,
    ) -> sqlx::query::Query<'q, DB, DB::Arguments>
    where
        for<'t> &'t [u8]: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> i64: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        query
            .bind(self.sha256.salt.as_slice())
            .bind(i64::from(self.sha256.iterations))
            .bind(self.sha1.stored_key.as_slice())
            .bind(self.sha1.server_key.as_slice())
            .bind(self.sha256.stored_key.as_slice())
            .bind(self.sha256.server_key.as_slice())
    }
}

/// The keys of one hash from a row with columns `salt, iterations, stored, server`, of
/// either backend; the error says what is wrong with the row.
fn credentials_from_row<R: sqlx::Row>(row: &R, hash: ScramHash) -> Result<ScramCredentials, String>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    for<'r> Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let text = |e: sqlx::Error| e.to_string();
    ScramCredentials::from_stored(
        hash,
        row.try_get("salt").map_err(text)?,
        row.try_get("iterations").map_err(text)?,
        row.try_get("stored").map_err(text)?,
        row.try_get("server").map_err(text)?,
    )
}

/// `Ok` if a statement on `username`'s row touched it, [`StoreError::NoSuchUser`] if none.
fn user_touched(rows_affected: u64, username: &str) -> Result<(), StoreError> {
    if rows_affected == 0 {
        return Err(StoreError::NoSuchUser(username.to_owned()));
    }
    Ok(())
}

/// Seconds since the Unix epoch, for `created_at` (0 if the clock is before 1970).
fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// Derives both key sets on the blocking pool (PBKDF2 is CPU-heavy).
async fn derive_keys(
    backend: &'static str,
    password: &str,
    iterations: u32,
) -> Result<DerivedKeys, StoreError> {
    if iterations < MIN_ITERATIONS {
        return Err(StoreError::TooFewIterations(iterations));
    }
    let salt: [u8; 16] = rand::random();
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || DerivedKeys {
        sha1: ScramCredentials::derive(ScramHash::Sha1, &password, &salt, iterations),
        sha256: ScramCredentials::derive(ScramHash::Sha256, &password, &salt, iterations),
    })
    .await
    .map_err(|e| StoreError::Unavailable {
        backend,
        detail: format!("key derivation task failed: {e}"),
    })
}

/// Rejects what cannot be a normalised JID localpart (RFC 7622 §3.3.1), so a bad name never
/// reaches a backend.
fn check_username(username: &str) -> Result<(), StoreError> {
    const FORBIDDEN: &[char] = &['"', '&', '\'', '/', ':', '<', '>', '@'];
    let bad = username.is_empty()
        || username.len() > MAX_USERNAME_BYTES
        || username
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || FORBIDDEN.contains(&c));
    if bad {
        Err(StoreError::InvalidUsername(username.to_owned()))
    } else {
        Ok(())
    }
}

/// The login negotiation asks the store through this (`jabberfarm_net::c2s`).
impl Accounts for AccountStore {
    fn plain_only(&self) -> bool {
        AccountStore::plain_only(self)
    }

    fn credentials<'a>(
        &'a self,
        user: &'a str,
        hash: ScramHash,
    ) -> AccountsFuture<'a, Option<ScramCredentials>> {
        Box::pin(async move { Ok(AccountStore::credentials(self, user, hash).await?) })
    }

    fn verify_password<'a>(&'a self, user: &'a str, password: &'a str) -> AccountsFuture<'a, bool> {
        Box::pin(async move { Ok(AccountStore::verify_password(self, user, password).await?) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn usernames() {
        for ok in ["juliet", "ünïcödé", "a.b_c-d", "1234", "x+y=z"] {
            assert!(check_username(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "a b", "a@b", "a/b", "a:b", "x\u{0}", "<x>", "\"q\"", "a&b", "it's",
        ] {
            assert!(
                matches!(check_username(bad), Err(StoreError::InvalidUsername(ref u)) if u == bad),
                "{bad:?}"
            );
        }
        assert!(check_username(&"a".repeat(1023)).is_ok());
        assert!(check_username(&"a".repeat(1024)).is_err());
    }
}
