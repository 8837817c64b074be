//! The embedded backend: the IM tables live in the node's SQLite file next to the accounts
//! (`shared/store/migrations/sqlite/0002_im.sql`, `0003_last_activity.sql`, `0004_known_users.sql`, applied when the account
//! store opens). One file per feature implements its trait: `roster_sqlite.rs`,
//! `offline_sqlite.rs`, `vcard_sqlite.rs`, `last_sqlite.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Holding;
use crate::accounts::StoreError;
use crate::accounts::sqlite::Readers;
use sqlx::Transaction;
use sqlx::sqlite::{Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::MappedMutexGuard;

const BACKEND: &str = "sqlite";

#[derive(Clone, Debug)]
pub struct SqliteIm {
    pub(super) pool: SqlitePool,
    /// Single-statement reads: one round trip instead of the pool's two.
    readers: Readers,
    /// For error messages: which file failed.
    path: PathBuf,
}

impl SqliteIm {
    /// Uses `pool` and `readers`, whose schema must already be migrated (as
    /// `SqliteStore::open` does).
    pub fn new(pool: SqlitePool, readers: Readers) -> Self {
        let path = pool.connect_options().get_filename().to_owned();
        Self {
            pool,
            readers,
            path,
        }
    }

    /// A connection for one autocommit SELECT.
    pub(super) async fn reader(
        &self,
        user: &str,
        doing: &str,
    ) -> Result<MappedMutexGuard<'_, SqliteConnection>, StoreError> {
        self.readers
            .get()
            .await
            .map_err(|e| self.error(doing, user, e))
    }

    /// Every user who has logged in here ([`Self::mark_known`]), sorted.
    pub async fn known_users(&self) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT username FROM known_users ORDER BY username")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error("listing known users", "*", e))
    }

    /// What every user keeps here, by user: one grouped read per table, in one read
    /// transaction (a consistent count even while the node runs).
    pub async fn holdings(&self) -> Result<BTreeMap<String, Holding>, StoreError> {
        let doing = "counting what each user keeps";
        let err = |e| self.error(doing, "*", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        let mut all: BTreeMap<String, Holding> = BTreeMap::new();
        // (username, rows, bytes) per table; each sets its own counter.
        type SetCount = fn(&mut Holding, u64);
        let tables: [(&str, SetCount); 4] = [
            (
                "SELECT username, COUNT(*), SUM(LENGTH(jid) + COALESCE(LENGTH(name), 0)) \
                 FROM roster_items GROUP BY username",
                |h, n| h.roster_items = n,
            ),
            (
                "SELECT username, COUNT(*), SUM(LENGTH(stanza)) FROM pending_in GROUP BY username",
                |h, n| h.pending_in = n,
            ),
            (
                "SELECT username, COUNT(*), SUM(LENGTH(stanza)) FROM offline_messages \
                 GROUP BY username",
                |h, n| h.offline_messages = n,
            ),
            (
                "SELECT username, COUNT(*), SUM(LENGTH(xml)) FROM vcards GROUP BY username",
                |h, n| h.vcard = n > 0,
            ),
        ];
        for (sql, count) in tables {
            let rows: Vec<(String, i64, Option<i64>)> =
                sqlx::query_as(sql).fetch_all(&mut *tx).await.map_err(err)?;
            for (user, n, bytes) in rows {
                let h = all.entry(user).or_default();
                count(h, u64::try_from(n).unwrap_or(0));
                h.bytes += bytes.and_then(|b| u64::try_from(b).ok()).unwrap_or(0);
            }
        }
        tx.commit().await.map_err(err)?;
        Ok(all)
    }

    /// Removes all of the user's IM data in one transaction. The roster version counter stays,
    /// so an account created again under the same name never reuses a version a client of the
    /// old account may have cached (RFC 6121 §2.6).
    pub async fn delete_user(&self, user: &str) -> Result<(), StoreError> {
        let doing = "deleting IM data";
        let mut tx = self.write(user, doing).await?;
        for sql in [
            "DELETE FROM roster_groups WHERE username = ?1",
            "DELETE FROM roster_items WHERE username = ?1",
            "DELETE FROM pending_in WHERE username = ?1",
            "DELETE FROM offline_messages WHERE username = ?1",
            "DELETE FROM vcards WHERE username = ?1",
            "DELETE FROM last_activity WHERE username = ?1",
            "DELETE FROM known_users WHERE username = ?1",
        ] {
            sqlx::query(sql)
                .bind(user)
                .execute(&mut *tx)
                .await
                .map_err(|e| self.error(doing, user, e))?;
        }
        tx.commit().await.map_err(|e| self.error(doing, user, e))
    }

    /// Records that `user` logged in (`known_users`); the first login's time stays.
    pub async fn mark_known(&self, user: &str, now_ms: i64) -> Result<(), StoreError> {
        sqlx::query("INSERT OR IGNORE INTO known_users (username, first_login_ms) VALUES (?1, ?2)")
            .bind(user)
            .bind(now_ms)
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| self.error("recording a login", user, e))
    }

    /// Whether `user` has logged in here before ([`Self::mark_known`]).
    pub async fn is_known(&self, user: &str) -> Result<bool, StoreError> {
        let doing = "looking up a known user";
        let mut conn = self.reader(user, doing).await?;
        let found: Option<i64> =
            sqlx::query_scalar("SELECT 1 FROM known_users WHERE username = ?1")
                .bind(user)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.error(doing, user, e))?;
        Ok(found.is_some())
    }

    /// Whether the user has roster items, pending subscription requests, offline messages:
    /// one statement, one snapshot.
    pub async fn login_state(&self, user: &str) -> Result<super::LoginState, StoreError> {
        let mut conn = self.reader(user, "reading what is stored").await?;
        let (roster, pending_in, offline): (bool, bool, bool) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM roster_items WHERE username = ?1), \
             EXISTS (SELECT 1 FROM pending_in WHERE username = ?1), \
             EXISTS (SELECT 1 FROM offline_messages WHERE username = ?1)",
        )
        .bind(user)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| self.error("reading what is stored", user, e))?;
        Ok(super::LoginState {
            roster,
            pending_in,
            offline,
        })
    }

    /// A transaction that takes the write lock at once (`BEGIN IMMEDIATE`), so it never fails
    /// half-way trying to upgrade a read lock; waits up to the pool's busy timeout.
    pub(super) async fn write(
        &self,
        user: &str,
        doing: &str,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(|e| self.error(doing, user, e))
    }

    /// A read transaction: its queries see one snapshot (WAL).
    pub(super) async fn read(
        &self,
        user: &str,
        doing: &str,
    ) -> Result<Transaction<'static, Sqlite>, StoreError> {
        self.pool
            .begin()
            .await
            .map_err(|e| self.error(doing, user, e))
    }

    pub(super) fn error(&self, doing: &str, user: &str, e: sqlx::Error) -> StoreError {
        self.corrupt(doing, user, e.to_string())
    }

    pub(super) fn corrupt(&self, doing: &str, user: &str, detail: String) -> StoreError {
        StoreError::Unavailable {
            backend: BACKEND,
            detail: format!("{doing} of {user:?} in {}: {detail}", self.path.display()),
        }
    }
}

/// SQLite integers are `i64`; counts and limits are `usize` (saturating: a limit past
/// `i64::MAX` means no limit).
pub(super) fn to_i64(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}
