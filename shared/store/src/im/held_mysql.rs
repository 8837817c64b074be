//! [`HeldStore`] on MySQL/MariaDB: table `held`.

use crate::accounts::StoreError;

use super::held::{Held, HeldMessage, HeldStore, HoldLimits};
use super::mysql::MysqlIm;
use super::sqlite::to_i64;

impl HeldStore for MysqlIm {
    async fn hold(
        &self,
        holder: &str,
        node: &str,
        user: &str,
        stanza_xml: &str,
        stamp_ms: i64,
        limits: HoldLimits,
    ) -> Result<Held, StoreError> {
        self.run("holding a message", user, || async {
            // One holder writes its own rows (one node's router): the counts do not race
            // with another writer's insert.
            let (per_node, per_user): (i64, i64) = sqlx::query_as(
                "SELECT COUNT(*), CAST(COALESCE(SUM(username = ?), 0) AS SIGNED) FROM held \
                 WHERE holder = ? AND node = ?",
            )
            .bind(user)
            .bind(holder)
            .bind(node)
            .fetch_one(&self.pool)
            .await?;
            if per_node >= to_i64(limits.per_node) || per_user >= to_i64(limits.per_user) {
                return Ok(Held::Full);
            }
            sqlx::query(
                "INSERT INTO held (holder, node, username, stanza, stamp_ms) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(holder)
            .bind(node)
            .bind(user)
            .bind(stanza_xml)
            .bind(stamp_ms)
            .execute(&self.pool)
            .await?;
            Ok(Held::Held)
        })
        .await
    }

    async fn held(
        &self,
        holder: &str,
        node: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<HeldMessage>, StoreError> {
        self.run("reading held messages", node, || async {
            sqlx::query_as(
                "SELECT id, stanza AS stanza_xml FROM held WHERE holder = ? AND node = ? \
                 AND id > ? ORDER BY id LIMIT ?",
            )
            .bind(holder)
            .bind(node)
            .bind(after)
            .bind(to_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(Into::into)
        })
        .await
    }

    async fn release_up_to(&self, holder: &str, node: &str, up_to: i64) -> Result<u64, StoreError> {
        self.run("releasing held messages", node, || async {
            let done = sqlx::query("DELETE FROM held WHERE holder = ? AND node = ? AND id <= ?")
                .bind(holder)
                .bind(node)
                .bind(up_to)
                .execute(&self.pool)
                .await?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn held_for(&self, holder: &str) -> Result<Vec<String>, StoreError> {
        self.run("listing held messages", holder, || async {
            let nodes: Vec<Vec<u8>> =
                sqlx::query_scalar("SELECT DISTINCT node FROM held WHERE holder = ? ORDER BY node")
                    .bind(holder)
                    .fetch_all(&self.pool)
                    .await?;
            Ok(nodes
                .into_iter()
                .map(|n| String::from_utf8_lossy(&n).into_owned())
                .collect())
        })
        .await
    }
}
