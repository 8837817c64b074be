//! [`HeldStore`] on SQLite: table `held`.

use crate::accounts::StoreError;

use super::held::{Held, HeldMessage, HeldStore, HoldLimits};
use super::sqlite::{SqliteIm, to_i64};

impl HeldStore for SqliteIm {
    async fn hold(
        &self,
        holder: &str,
        node: &str,
        user: &str,
        stanza_xml: &str,
        stamp_ms: i64,
        limits: HoldLimits,
    ) -> Result<Held, StoreError> {
        // One statement, so the counts and the insert are atomic.
        let done = sqlx::query(
            "INSERT INTO held (holder, node, username, stanza, stamp_ms) \
             SELECT ?1, ?2, ?3, ?4, ?5 \
             WHERE (SELECT COUNT(*) FROM held WHERE holder = ?1 AND node = ?2) < ?6 \
             AND (SELECT COUNT(*) FROM held WHERE holder = ?1 AND node = ?2 AND username = ?3) < ?7",
        )
        .bind(holder)
        .bind(node)
        .bind(user)
        .bind(stanza_xml)
        .bind(stamp_ms)
        .bind(to_i64(limits.per_node))
        .bind(to_i64(limits.per_user))
        .execute(&self.pool)
        .await
        .map_err(|e| self.error("holding a message", user, e))?;
        Ok(if done.rows_affected() == 0 {
            Held::Full
        } else {
            Held::Held
        })
    }

    async fn held(
        &self,
        holder: &str,
        node: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<HeldMessage>, StoreError> {
        sqlx::query_as(
            "SELECT id, stanza AS stanza_xml FROM held WHERE holder = ?1 AND node = ?2 \
             AND id > ?3 ORDER BY id LIMIT ?4",
        )
        .bind(holder)
        .bind(node)
        .bind(after)
        .bind(to_i64(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.error("reading held messages", node, e))
    }

    async fn release_up_to(&self, holder: &str, node: &str, up_to: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM held WHERE holder = ?1 AND node = ?2 AND id <= ?3")
            .bind(holder)
            .bind(node)
            .bind(up_to)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error("releasing held messages", node, e))?;
        Ok(done.rows_affected())
    }

    async fn held_for(&self, holder: &str) -> Result<Vec<String>, StoreError> {
        sqlx::query_scalar("SELECT DISTINCT node FROM held WHERE holder = ?1 ORDER BY node")
            .bind(holder)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.error("listing held messages", holder, e))
    }
}
