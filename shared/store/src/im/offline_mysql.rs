//! [`OfflineStore`] on MySQL/MariaDB: table `offline_messages`.

use crate::accounts::StoreError;

use super::mysql::{Fail, MysqlIm};
use super::offline::{OfflineMessage, OfflineStore, Stored};
use super::sqlite::to_i64;

impl OfflineStore for MysqlIm {
    async fn store(
        &self,
        user: &str,
        stanza_xml: &str,
        stamp_ms: i64,
        quota: usize,
    ) -> Result<Stored, StoreError> {
        self.run("storing an offline message", user, || async {
            // The user's row is locked: the count cannot change before the insert.
            let mut tx = self.write(user).await?;
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM offline_messages WHERE username = ?")
                    .bind(user)
                    .fetch_one(&mut *tx)
                    .await?;
            if n >= to_i64(quota) {
                return Ok(Stored::QuotaFull);
            }
            sqlx::query(
                "INSERT INTO offline_messages (username, stanza, stamp_ms) VALUES (?, ?, ?)",
            )
            .bind(user)
            .bind(stanza_xml)
            .bind(stamp_ms)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Stored::Stored)
        })
        .await
    }

    async fn peek(&self, user: &str, limit: usize) -> Result<Vec<OfflineMessage>, StoreError> {
        self.run("reading offline messages", user, || async {
            sqlx::query_as(
                "SELECT id, stanza AS stanza_xml, stamp_ms FROM offline_messages WHERE username = ? \
                 ORDER BY id LIMIT ?",
            )
            .bind(user)
            .bind(to_i64(limit))
            .fetch_all(&self.pool)
            .await
            .map_err(Fail::from)
        })
        .await
    }

    async fn delete_up_to(&self, user: &str, up_to: i64) -> Result<u64, StoreError> {
        self.run("deleting offline messages", user, || async {
            let mut tx = self.write(user).await?;
            let done = sqlx::query("DELETE FROM offline_messages WHERE username = ? AND id <= ?")
                .bind(user)
                .bind(up_to)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(done.rows_affected())
        })
        .await
    }

    async fn count(&self, user: &str) -> Result<usize, StoreError> {
        self.run("counting offline messages", user, || async {
            let n: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM offline_messages WHERE username = ?")
                    .bind(user)
                    .fetch_one(&self.pool)
                    .await?;
            usize::try_from(n).map_err(|_| Fail::Corrupt(format!("count {n}")))
        })
        .await
    }
}
