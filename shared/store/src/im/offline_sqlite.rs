//! [`OfflineStore`] on SQLite: table `offline_messages`.

use crate::accounts::StoreError;

use super::offline::{OfflineMessage, OfflineStore, Stored};
use super::sqlite::{SqliteIm, to_i64};

impl OfflineStore for SqliteIm {
    async fn store(
        &self,
        user: &str,
        stanza_xml: &str,
        stamp_ms: i64,
        quota: usize,
    ) -> Result<Stored, StoreError> {
        // One statement, so the count and the insert are atomic.
        let done = sqlx::query(
            "INSERT INTO offline_messages (username, stanza, stamp_ms) SELECT ?1, ?2, ?3 \
             WHERE (SELECT COUNT(*) FROM offline_messages WHERE username = ?1) < ?4",
        )
        .bind(user)
        .bind(stanza_xml)
        .bind(stamp_ms)
        .bind(to_i64(quota))
        .execute(&self.pool)
        .await
        .map_err(|e| self.error("storing an offline message", user, e))?;
        Ok(if done.rows_affected() == 0 {
            Stored::QuotaFull
        } else {
            Stored::Stored
        })
    }

    async fn peek(&self, user: &str, limit: usize) -> Result<Vec<OfflineMessage>, StoreError> {
        let err = |e| self.error("reading offline messages", user, e);
        let mut conn = self.reader(user, "reading offline messages").await?;
        sqlx::query_as(
            "SELECT id, stanza AS stanza_xml, stamp_ms FROM offline_messages WHERE username = ?1 \
             ORDER BY id LIMIT ?2",
        )
        .bind(user)
        .bind(to_i64(limit))
        .fetch_all(&mut *conn)
        .await
        .map_err(err)
    }

    async fn delete_up_to(&self, user: &str, up_to: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM offline_messages WHERE username = ?1 AND id <= ?2")
            .bind(user)
            .bind(up_to)
            .execute(&self.pool)
            .await
            .map_err(|e| self.error("deleting offline messages", user, e))?;
        Ok(done.rows_affected())
    }

    async fn count(&self, user: &str) -> Result<usize, StoreError> {
        let doing = "counting offline messages";
        let mut conn = self.reader(user, doing).await?;
        let n: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM offline_messages WHERE username = ?1")
                .bind(user)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| self.error(doing, user, e))?;
        usize::try_from(n).map_err(|_| self.corrupt(doing, user, format!("count {n}")))
    }
}
