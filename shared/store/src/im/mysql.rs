//! The central backend: the IM tables in the farm's MySQL/MariaDB database
//! (`shared/store/migrations/mysql/0002_im.sql`, `0003_last_activity.sql`, `0004_known_users.sql`, applied when the account
//! store opens), shared by every slave, so a user's roster and offline messages follow the user
//! to whichever slave owns them. One file per feature implements its trait: `roster_mysql.rs`,
//! `offline_mysql.rs`, `vcard_mysql.rs`, `last_mysql.rs`.
//!
//! Concurrency: connections run at READ COMMITTED (no gap locks); every write transaction first
//! locks the user's `im_users` row ([`MysqlIm::write`]), so one user's writes are serialised
//! and writes of different users never wait for each other. Reads are single statements (one
//! snapshot each). A deadlock or lock-wait timeout is retried a few times; every operation,
//! retries included, is bounded by `storage.mysql.query_timeout`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::accounts::{MysqlStore, StoreError};
use sqlx::Transaction;
use sqlx::mysql::{MySql, MySqlPool};

const BACKEND: &str = "mysql";

/// ER_LOCK_DEADLOCK and ER_LOCK_WAIT_TIMEOUT: the transaction was rolled back; try again.
const RETRYABLE: &[u16] = &[1213, 1205];
const MAX_RETRIES: u32 = 3;

#[derive(Clone, Debug)]
pub struct MysqlIm {
    pub(super) pool: MySqlPool,
    /// `host:port/database`, for messages.
    name: Arc<str>,
    timeout: Duration,
}

/// Why one attempt failed: the database, or a row that cannot be (a corrupt value).
pub(super) enum Fail {
    Db(sqlx::Error),
    Corrupt(String),
}

impl From<sqlx::Error> for Fail {
    fn from(e: sqlx::Error) -> Self {
        Fail::Db(e)
    }
}

impl MysqlIm {
    /// Uses the account store's pool; its schema is already migrated (or checked).
    pub fn new(store: &MysqlStore) -> Self {
        Self {
            pool: store.pool().clone(),
            name: store.name().into(),
            timeout: store.query_timeout(),
        }
    }

    /// Removes all of the user's IM data in one transaction. The roster version counter stays,
    /// so an account created again under the same name never reuses a version a client of the
    /// old account may have cached (RFC 6121 §2.6).
    pub async fn delete_user(&self, user: &str) -> Result<(), StoreError> {
        self.run("deleting IM data", user, || async {
            let mut tx = self.write(user).await?;
            // roster_groups go with their items (ON DELETE CASCADE).
            for sql in [
                "DELETE FROM roster_items WHERE username = ?",
                "DELETE FROM pending_in WHERE username = ?",
                "DELETE FROM offline_messages WHERE username = ?",
                "DELETE FROM vcards WHERE username = ?",
                "DELETE FROM last_activity WHERE username = ?",
                "DELETE FROM known_users WHERE username = ?",
            ] {
                sqlx::query(sql).bind(user).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Records that `user` logged in (`known_users`); the first login's time stays.
    pub async fn mark_known(&self, user: &str, now_ms: i64) -> Result<(), StoreError> {
        self.run("recording a login", user, || async {
            sqlx::query("INSERT IGNORE INTO known_users (username, first_login_ms) VALUES (?, ?)")
                .bind(user)
                .bind(now_ms)
                .execute(&self.pool)
                .await?;
            Ok(())
        })
        .await
    }

    /// Every user who has logged in ([`Self::mark_known`]), sorted: the users of a farm whose
    /// accounts live in a directory that jabberfarm does not list.
    pub async fn known_users(&self) -> Result<Vec<String>, StoreError> {
        self.run("listing known users", "*", || async {
            Ok(sqlx::query_scalar(
                "SELECT CONVERT(username USING utf8mb4) FROM known_users ORDER BY username",
            )
            .fetch_all(&self.pool)
            .await?)
        })
        .await
    }

    /// Whether `user` has logged in before ([`Self::mark_known`]), on any slave.
    pub async fn is_known(&self, user: &str) -> Result<bool, StoreError> {
        self.run("looking up a known user", user, || async {
            let found: Option<i64> =
                sqlx::query_scalar("SELECT 1 FROM known_users WHERE username = ?")
                    .bind(user)
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(found.is_some())
        })
        .await
    }

    /// A transaction holding the exclusive lock on the user's `im_users` row (created on first
    /// use; `ON DUPLICATE KEY UPDATE` locks an existing row exclusively, not shared, so two
    /// writers never deadlock upgrading a lock).
    pub(super) async fn write(&self, user: &str) -> Result<Transaction<'static, MySql>, Fail> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO im_users (username) VALUES (?) \
             ON DUPLICATE KEY UPDATE username = username",
        )
        .bind(user)
        .execute(&mut *tx)
        .await?;
        Ok(tx)
    }

    /// Runs `attempt` (again after a deadlock), all within the query timeout; failures become
    /// [`StoreError::Unavailable`] naming what was done for whom.
    pub(super) async fn run<T, F, Fut>(
        &self,
        doing: &str,
        user: &str,
        mut attempt: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Fail>>,
    {
        let retried = async {
            let mut tries = 0;
            loop {
                match attempt().await {
                    Err(Fail::Db(e)) if tries < MAX_RETRIES && retryable(&e) => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(5 << tries)).await;
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(self.timeout, retried).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Fail::Db(e))) => Err(self.unavailable(doing, user, e.to_string())),
            Ok(Err(Fail::Corrupt(detail))) => Err(self.unavailable(doing, user, detail)),
            Err(_) => Err(self.unavailable(
                doing,
                user,
                format!(
                    "no answer within {:?} (storage.mysql.query_timeout)",
                    self.timeout
                ),
            )),
        }
    }

    fn unavailable(&self, doing: &str, user: &str, detail: String) -> StoreError {
        StoreError::Unavailable {
            backend: BACKEND,
            detail: format!("{doing} of {user:?} in {}: {detail}", self.name),
        }
    }
}

fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|m| RETRYABLE.contains(&m.number())),
        _ => false,
    }
}
