//! Accounts: SCRAM credentials ([`scram`]) and the stores that keep them (DESIGN.md D6).
//!
//! [`AccountStore`] is a closed enum over the backends with a narrow async API. A wrong password
//! is never an error here: [`AccountStore::credentials`] returns the keys (or `None` for an
//! unknown user) and the caller checks the proof; [`StoreError::Unavailable`] means the backend
//! itself failed, so a login answers `temporary-auth-failure`, not `not-authorized`.
//! Passwords are never stored: only salted SCRAM keys for SHA-1 and SHA-256.
//!
//! - [`scram`]: key derivation and proof checks (RFC 5802, RFC 7677), sans-IO.
//! - [`sqlite`]: the embedded store, one file per node.

pub mod scram;
pub mod sqlite;

use std::path::Path;

pub use scram::{ScramCredentials, ScramHash, h, hmac};
pub use sqlite::SqliteStore;

/// Lowest PBKDF2 iteration count accepted for new credentials (RFC 7677 §4: "at least 4096").
pub const MIN_ITERATIONS: u32 = 4096;

/// Longest localpart in bytes (RFC 7622 §3.3.1).
const MAX_USERNAME_BYTES: usize = 1023;

/// An account backend. MySQL/MariaDB and LDAP come later as more variants.
#[derive(Clone, Debug)]
pub enum AccountStore {
    Sqlite(SqliteStore),
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
}

impl AccountStore {
    /// Opens (and on first start creates, with its parent directory) the SQLite store at `path`
    /// and brings its schema up to date.
    pub async fn open_sqlite(path: &Path) -> Result<Self, StoreError> {
        SqliteStore::open(path).await.map(Self::Sqlite)
    }

    /// The user's keys for `hash`; `None` if there is no such user. `username` is the
    /// normalised localpart. A name that no account can have (see [`StoreError::InvalidUsername`])
    /// is simply not found.
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
        }
    }

    /// Creates an account with a random 16-byte salt, storing SHA-1 and SHA-256 keys.
    pub async fn add_user(
        &self,
        username: &str,
        password: &str,
        iterations: u32,
    ) -> Result<(), StoreError> {
        check_username(username)?;
        let keys = derive_keys(self.backend_name(), password, iterations).await?;
        match self {
            Self::Sqlite(store) => store.add_user(username, &keys).await,
        }
    }

    /// Replaces the user's keys (new salt too); [`StoreError::NoSuchUser`] if absent.
    pub async fn set_password(
        &self,
        username: &str,
        password: &str,
        iterations: u32,
    ) -> Result<(), StoreError> {
        check_username(username)?;
        let keys = derive_keys(self.backend_name(), password, iterations).await?;
        match self {
            Self::Sqlite(store) => store.set_keys(username, &keys).await,
        }
    }

    pub async fn delete_user(&self, username: &str) -> Result<(), StoreError> {
        check_username(username)?;
        match self {
            Self::Sqlite(store) => store.delete_user(username).await,
        }
    }

    /// All usernames, sorted (byte order of their UTF-8).
    pub async fn list_users(&self) -> Result<Vec<String>, StoreError> {
        match self {
            Self::Sqlite(store) => store.list_users().await,
        }
    }

    /// The backend's name as error messages and logs show it.
    pub fn backend_name(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => sqlite::BACKEND,
        }
    }

    /// Closes the backend's connections, waiting for running queries.
    pub async fn close(&self) {
        match self {
            Self::Sqlite(store) => store.close().await,
        }
    }
}

/// The keys of one password for both hashes, sharing one salt and iteration count.
#[derive(Debug)]
pub(crate) struct DerivedKeys {
    pub sha1: ScramCredentials,
    pub sha256: ScramCredentials,
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
