//! [`RosterStore`] on SQLite: tables `roster_items`, `roster_groups` (a row per group),
//! `roster_versions` and `pending_in`.

use std::collections::HashMap;

use jid::BareJid;

use crate::accounts::StoreError;
use sqlx::Row;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use super::roster::{RosterItem, RosterStore};
use super::sqlite::SqliteIm;

const SELECT_ITEMS: &str = "SELECT jid, name, subscription, ask, approved FROM roster_items \
                            WHERE username = ?1 ORDER BY jid";
const SELECT_GROUPS: &str =
    "SELECT jid, name FROM roster_groups WHERE username = ?1 ORDER BY jid, position";
const SELECT_ITEM: &str = "SELECT jid, name, subscription, ask, approved FROM roster_items \
                           WHERE username = ?1 AND jid = ?2";
const SELECT_ITEM_GROUPS: &str =
    "SELECT name FROM roster_groups WHERE username = ?1 AND jid = ?2 ORDER BY position";
const SELECT_VERSION: &str = "SELECT version FROM roster_versions WHERE username = ?1";
/// The version and whether there is any item, in one statement (one snapshot): most users
/// logging in have no roster, and this spares them the read transaction.
const SELECT_VERSION_ANY: &str = "SELECT (SELECT version FROM roster_versions WHERE username = ?1), \
                                  EXISTS (SELECT 1 FROM roster_items WHERE username = ?1)";
const BUMP_VERSION: &str = "INSERT INTO roster_versions (username, version) VALUES (?1, 1) \
                            ON CONFLICT (username) DO UPDATE SET version = version + 1 \
                            RETURNING version";

impl RosterStore for SqliteIm {
    async fn roster(&self, user: &str) -> Result<(u64, Vec<RosterItem>), StoreError> {
        let doing = "reading the roster";
        let err = |e| self.error(doing, user, e);
        let mut conn = self.reader(user, doing).await?;
        let (version, any): (Option<i64>, bool) = sqlx::query_as(SELECT_VERSION_ANY)
            .bind(user)
            .fetch_one(&mut *conn)
            .await
            .map_err(err)?;
        drop(conn);
        if !any {
            return Ok((
                self.check_version(version.unwrap_or(0), user, doing)?,
                Vec::new(),
            ));
        }
        let mut tx = self.read(user, doing).await?;
        let version = self.read_version(&mut tx, user, doing).await?;
        let items = sqlx::query(SELECT_ITEMS)
            .bind(user)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        let group_rows = sqlx::query(SELECT_GROUPS)
            .bind(user)
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)?;

        let mut groups: HashMap<String, Vec<String>> = HashMap::new();
        for row in &group_rows {
            let jid: String = row.try_get("jid").map_err(err)?;
            groups
                .entry(jid)
                .or_default()
                .push(row.try_get("name").map_err(err)?);
        }
        let items = items
            .iter()
            .map(|row| {
                let mut item = self.item_from_row(row, user, doing)?;
                item.groups = groups.remove(item.jid.as_str()).unwrap_or_default();
                Ok(item)
            })
            .collect::<Result<_, StoreError>>()?;
        Ok((version, items))
    }

    async fn item(&self, user: &str, contact: &BareJid) -> Result<Option<RosterItem>, StoreError> {
        let doing = "reading a roster item";
        let err = |e| self.error(doing, user, e);
        let mut tx = self.read(user, doing).await?;
        let Some(row) = sqlx::query(SELECT_ITEM)
            .bind(user)
            .bind(contact.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(err)?
        else {
            return Ok(None);
        };
        let mut item = self.item_from_row(&row, user, doing)?;
        item.groups = sqlx::query(SELECT_ITEM_GROUPS)
            .bind(user)
            .bind(contact.as_str())
            .fetch_all(&mut *tx)
            .await
            .map_err(err)?
            .iter()
            .map(|row| row.try_get("name"))
            .collect::<Result<_, _>>()
            .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(Some(item))
    }

    async fn put_item(&self, user: &str, item: &RosterItem) -> Result<u64, StoreError> {
        let doing = "storing a roster item";
        let err = |e| self.error(doing, user, e);
        let mut tx = self.write(user, doing).await?;
        item.bind(sqlx::query(
            "INSERT INTO roster_items (jid, name, subscription, ask, approved, username) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (username, jid) DO UPDATE SET \
             name = excluded.name, subscription = excluded.subscription, ask = excluded.ask, \
             approved = excluded.approved",
        ))
        .bind(user)
        .execute(&mut *tx)
        .await
        .map_err(err)?;
        sqlx::query("DELETE FROM roster_groups WHERE username = ?1 AND jid = ?2")
            .bind(user)
            .bind(item.jid.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        for (position, group) in item.stored_groups() {
            sqlx::query(
                "INSERT INTO roster_groups (username, jid, position, name) \
                 VALUES (?1, ?2, ?3, ?4)",
            )
            .bind(user)
            .bind(item.jid.as_str())
            .bind(position)
            .bind(group)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        }
        let version = self.bump_version(&mut tx, user, doing).await?;
        tx.commit().await.map_err(err)?;
        Ok(version)
    }

    async fn remove_item(&self, user: &str, contact: &BareJid) -> Result<Option<u64>, StoreError> {
        let doing = "removing a roster item";
        let err = |e| self.error(doing, user, e);
        let mut tx = self.write(user, doing).await?;
        sqlx::query("DELETE FROM roster_groups WHERE username = ?1 AND jid = ?2")
            .bind(user)
            .bind(contact.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        let done = sqlx::query("DELETE FROM roster_items WHERE username = ?1 AND jid = ?2")
            .bind(user)
            .bind(contact.as_str())
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        if done.rows_affected() == 0 {
            // Nothing changed (a group row without its item cannot exist); dropping rolls back.
            return Ok(None);
        }
        let version = self.bump_version(&mut tx, user, doing).await?;
        tx.commit().await.map_err(err)?;
        Ok(Some(version))
    }

    async fn version(&self, user: &str) -> Result<u64, StoreError> {
        let doing = "reading the roster version";
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| self.error(doing, user, e))?;
        self.read_version(&mut conn, user, doing).await
    }

    async fn item_count(&self, user: &str) -> Result<usize, StoreError> {
        let doing = "counting the roster";
        let mut conn = self.reader(user, doing).await?;
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM roster_items WHERE username = ?1")
            .bind(user)
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| self.error(doing, user, e))?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn add_pending_in(
        &self,
        user: &str,
        contact: &BareJid,
        stanza_xml: &str,
        max: usize,
    ) -> Result<bool, StoreError> {
        let doing = "storing a subscription request";
        let mut tx = self.write(user, doing).await?;
        let others: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pending_in WHERE username = ?1 AND contact <> ?2",
        )
        .bind(user)
        .bind(contact.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| self.error(doing, user, e))?;
        if others >= super::sqlite::to_i64(max) {
            return Ok(false);
        }
        // REPLACE deletes the old row and inserts a new one with a higher id: the newest.
        sqlx::query("REPLACE INTO pending_in (username, contact, stanza) VALUES (?1, ?2, ?3)")
            .bind(user)
            .bind(contact.as_str())
            .bind(stanza_xml)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.error(doing, user, e))?;
        tx.commit().await.map_err(|e| self.error(doing, user, e))?;
        Ok(true)
    }

    async fn remove_pending_in(&self, user: &str, contact: &BareJid) -> Result<bool, StoreError> {
        let done = sqlx::query("DELETE FROM pending_in WHERE username = ?1 AND contact = ?2")
            .bind(user)
            .bind(contact.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| self.error("removing a subscription request", user, e))?;
        Ok(done.rows_affected() > 0)
    }

    async fn pending_in(&self, user: &str) -> Result<Vec<(String, String)>, StoreError> {
        let err = |e| self.error("reading subscription requests", user, e);
        let mut conn = self.reader(user, "reading subscription requests").await?;
        sqlx::query("SELECT contact, stanza FROM pending_in WHERE username = ?1 ORDER BY id")
            .bind(user)
            .fetch_all(&mut *conn)
            .await
            .map_err(err)?
            .iter()
            .map(|row| Ok((row.try_get("contact")?, row.try_get("stanza")?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(err)
    }
}

impl SqliteIm {
    async fn read_version(
        &self,
        conn: &mut SqliteConnection,
        user: &str,
        doing: &str,
    ) -> Result<u64, StoreError> {
        let version: Option<i64> = sqlx::query_scalar(SELECT_VERSION)
            .bind(user)
            .fetch_optional(conn)
            .await
            .map_err(|e| self.error(doing, user, e))?;
        self.check_version(version.unwrap_or(0), user, doing)
    }

    /// Within the caller's write transaction.
    async fn bump_version(
        &self,
        conn: &mut SqliteConnection,
        user: &str,
        doing: &str,
    ) -> Result<u64, StoreError> {
        let version: i64 = sqlx::query_scalar(BUMP_VERSION)
            .bind(user)
            .fetch_one(conn)
            .await
            .map_err(|e| self.error(doing, user, e))?;
        self.check_version(version, user, doing)
    }

    fn check_version(&self, version: i64, user: &str, doing: &str) -> Result<u64, StoreError> {
        u64::try_from(version)
            .map_err(|_| self.corrupt(doing, user, format!("roster version {version} < 0")))
    }

    fn item_from_row(
        &self,
        row: &SqliteRow,
        user: &str,
        doing: &str,
    ) -> Result<RosterItem, StoreError> {
        let err = |e| self.error(doing, user, e);
        let jid: String = row.try_get("jid").map_err(err)?;
        let subscription: String = row.try_get("subscription").map_err(err)?;
        RosterItem::from_stored(
            &jid,
            &subscription,
            row.try_get("name").map_err(err)?,
            row.try_get("ask").map_err(err)?,
            row.try_get("approved").map_err(err)?,
        )
        .map_err(|what| self.corrupt(doing, user, what))
    }
}
