//! [`LastStore`] on SQLite: table `last_activity`.

use crate::accounts::StoreError;

use super::last::{LastLogout, LastStore};
use super::sqlite::SqliteIm;

impl LastStore for SqliteIm {
    async fn last_logout(&self, user: &str) -> Result<Option<LastLogout>, StoreError> {
        let doing = "reading the last logout";
        let mut conn = self.reader(user, doing).await?;
        let row: Option<(i64, String)> =
            sqlx::query_as("SELECT stamp_ms, status FROM last_activity WHERE username = ?1")
                .bind(user)
                .fetch_optional(&mut *conn)
                .await
                .map_err(|e| self.error(doing, user, e))?;
        Ok(row.map(|(stamp_ms, status)| LastLogout { stamp_ms, status }))
    }

    async fn set_last_logout(&self, user: &str, logout: &LastLogout) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO last_activity (username, stamp_ms, status) VALUES (?1, ?2, ?3) \
             ON CONFLICT (username) DO UPDATE SET stamp_ms = excluded.stamp_ms, \
             status = excluded.status",
        )
        .bind(user)
        .bind(logout.stamp_ms)
        .bind(&logout.status)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error("recording a logout", user, e))?;
        Ok(())
    }
}
