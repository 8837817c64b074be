//! [`RosterStore`] on MySQL/MariaDB: tables `roster_items`, `roster_groups` (a row per group,
//! by item id), `im_users.roster_version` and `pending_in`.

use jid::BareJid;

use crate::accounts::StoreError;
use sqlx::Row;
use sqlx::mysql::{MySqlConnection, MySqlRow};

use super::mysql::{Fail, MysqlIm};
use super::roster::{RosterItem, RosterStore};

/// The version and every item with its groups in one statement (one snapshot): one row per
/// group, an item without groups once with `grp` NULL, a user without items once with `jid`
/// NULL, and no row at all for a user never seen.
const SELECT_ROSTER: &str = "SELECT u.roster_version AS version, \
     CONVERT(i.jid USING utf8mb4) AS jid, i.name, i.subscription, i.ask, i.approved, \
     g.name AS grp \
     FROM im_users u \
     LEFT JOIN roster_items i ON i.username = u.username \
     LEFT JOIN roster_groups g ON g.item_id = i.id \
     WHERE u.username = ? ORDER BY i.jid, g.position";
const SELECT_ITEM: &str = "SELECT CONVERT(i.jid USING utf8mb4) AS jid, i.name, i.subscription, \
     i.ask, i.approved, g.name AS grp \
     FROM roster_items i LEFT JOIN roster_groups g ON g.item_id = i.id \
     WHERE i.username = ? AND i.jid = ? ORDER BY g.position";
const SELECT_ITEM_ID: &str = "SELECT id FROM roster_items WHERE username = ? AND jid = ?";

impl RosterStore for MysqlIm {
    async fn roster(&self, user: &str) -> Result<(u64, Vec<RosterItem>), StoreError> {
        self.run("reading the roster", user, || async {
            let rows = sqlx::query(SELECT_ROSTER)
                .bind(user)
                .fetch_all(&self.pool)
                .await?;
            let version = match rows.first() {
                Some(row) => version(row.try_get("version")?)?,
                None => 0,
            };
            Ok((version, items_from_rows(&rows)?))
        })
        .await
    }

    async fn item(&self, user: &str, contact: &BareJid) -> Result<Option<RosterItem>, StoreError> {
        self.run("reading a roster item", user, || async {
            let rows = sqlx::query(SELECT_ITEM)
                .bind(user)
                .bind(contact.as_str())
                .fetch_all(&self.pool)
                .await?;
            Ok(items_from_rows(&rows)?.pop())
        })
        .await
    }

    async fn put_item(&self, user: &str, item: &RosterItem) -> Result<u64, StoreError> {
        self.run("storing a roster item", user, || async {
            let mut tx = self.write(user).await?;
            let existing: Option<i64> = sqlx::query_scalar(SELECT_ITEM_ID)
                .bind(user)
                .bind(item.jid.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let id = match existing {
                Some(id) => {
                    // The jid is the one just matched: setting it again keeps one bind order.
                    item.bind(sqlx::query(
                        "UPDATE roster_items SET jid = ?, name = ?, subscription = ?, ask = ?, \
                         approved = ? WHERE id = ?",
                    ))
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query("DELETE FROM roster_groups WHERE item_id = ?")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                    id
                }
                None => {
                    let done = item
                        .bind(sqlx::query(
                            "INSERT INTO roster_items (jid, name, subscription, ask, approved, \
                             username) VALUES (?, ?, ?, ?, ?, ?)",
                        ))
                        .bind(user)
                        .execute(&mut *tx)
                        .await?;
                    i64::try_from(done.last_insert_id())
                        .map_err(|_| Fail::Corrupt("item id out of range".to_owned()))?
                }
            };
            for (position, group) in item.stored_groups() {
                sqlx::query("INSERT INTO roster_groups (item_id, position, name) VALUES (?, ?, ?)")
                    .bind(id)
                    .bind(position)
                    .bind(group)
                    .execute(&mut *tx)
                    .await?;
            }
            let version = bump_version(&mut tx, user).await?;
            tx.commit().await?;
            Ok(version)
        })
        .await
    }

    async fn remove_item(&self, user: &str, contact: &BareJid) -> Result<Option<u64>, StoreError> {
        self.run("removing a roster item", user, || async {
            let mut tx = self.write(user).await?;
            let existing: Option<i64> = sqlx::query_scalar(SELECT_ITEM_ID)
                .bind(user)
                .bind(contact.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(id) = existing else {
                // Nothing changed; dropping the transaction rolls it back.
                return Ok(None);
            };
            // Its groups go with it (ON DELETE CASCADE).
            sqlx::query("DELETE FROM roster_items WHERE id = ?")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            let version = bump_version(&mut tx, user).await?;
            tx.commit().await?;
            Ok(Some(version))
        })
        .await
    }

    async fn version(&self, user: &str) -> Result<u64, StoreError> {
        self.run("reading the roster version", user, || async {
            let v: Option<i64> =
                sqlx::query_scalar("SELECT roster_version FROM im_users WHERE username = ?")
                    .bind(user)
                    .fetch_optional(&self.pool)
                    .await?;
            version(v.unwrap_or(0))
        })
        .await
    }

    async fn item_count(&self, user: &str) -> Result<usize, StoreError> {
        self.run("counting the roster", user, || async {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM roster_items WHERE username = ?")
                .bind(user)
                .fetch_one(&self.pool)
                .await?;
            Ok(usize::try_from(n).unwrap_or(0))
        })
        .await
    }

    async fn add_pending_in(
        &self,
        user: &str,
        contact: &BareJid,
        stanza_xml: &str,
        max: usize,
    ) -> Result<bool, StoreError> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        self.run("storing a subscription request", user, || async {
            let mut tx = self.write(user).await?;
            // The user's row is locked (`write`): the count holds until the commit.
            let others: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM pending_in WHERE username = ? AND contact <> ?",
            )
            .bind(user)
            .bind(contact.as_str())
            .fetch_one(&mut *tx)
            .await?;
            if others >= max {
                return Ok(false);
            }
            // Deleted and inserted again: a new, higher id makes it the newest.
            sqlx::query("DELETE FROM pending_in WHERE username = ? AND contact = ?")
                .bind(user)
                .bind(contact.as_str())
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO pending_in (username, contact, stanza) VALUES (?, ?, ?)")
                .bind(user)
                .bind(contact.as_str())
                .bind(stanza_xml)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
        .await
    }

    async fn remove_pending_in(&self, user: &str, contact: &BareJid) -> Result<bool, StoreError> {
        self.run("removing a subscription request", user, || async {
            let mut tx = self.write(user).await?;
            let done = sqlx::query("DELETE FROM pending_in WHERE username = ? AND contact = ?")
                .bind(user)
                .bind(contact.as_str())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected() > 0)
        })
        .await
    }

    async fn pending_in(&self, user: &str) -> Result<Vec<(String, String)>, StoreError> {
        self.run("reading subscription requests", user, || async {
            let rows = sqlx::query(
                "SELECT CONVERT(contact USING utf8mb4) AS contact, stanza FROM pending_in \
                 WHERE username = ? ORDER BY id",
            )
            .bind(user)
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("contact")?, row.try_get("stanza")?)))
                .collect::<Result<_, sqlx::Error>>()
                .map_err(Fail::from)
        })
        .await
    }
}

/// Bumps and returns the user's roster version, within the caller's write transaction (which
/// holds the user's row).
async fn bump_version(conn: &mut MySqlConnection, user: &str) -> Result<u64, Fail> {
    sqlx::query("UPDATE im_users SET roster_version = roster_version + 1 WHERE username = ?")
        .bind(user)
        .execute(&mut *conn)
        .await?;
    let v: i64 = sqlx::query_scalar("SELECT roster_version FROM im_users WHERE username = ?")
        .bind(user)
        .fetch_one(&mut *conn)
        .await?;
    version(v)
}

fn version(v: i64) -> Result<u64, Fail> {
    u64::try_from(v).map_err(|_| Fail::Corrupt(format!("roster version {v} < 0")))
}

/// Items from rows ordered by JID then group position, one row per group (see
/// [`SELECT_ROSTER`]); rows without a JID (a user without items) are skipped.
fn items_from_rows(rows: &[MySqlRow]) -> Result<Vec<RosterItem>, Fail> {
    let mut items: Vec<RosterItem> = Vec::new();
    for row in rows {
        let Some(jid) = row.try_get::<Option<String>, _>("jid")? else {
            continue;
        };
        if items.last().is_none_or(|last| last.jid.as_str() != jid) {
            let subscription: String = row.try_get("subscription")?;
            items.push(
                RosterItem::from_stored(
                    &jid,
                    &subscription,
                    row.try_get("name")?,
                    row.try_get("ask")?,
                    row.try_get("approved")?,
                )
                .map_err(Fail::Corrupt)?,
            );
        }
        if let (Some(group), Some(item)) =
            (row.try_get::<Option<String>, _>("grp")?, items.last_mut())
        {
            item.groups.push(group);
        }
    }
    Ok(items)
}
