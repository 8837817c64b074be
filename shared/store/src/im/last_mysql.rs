//! [`LastStore`] on MySQL/MariaDB: table `last_activity`.

use crate::accounts::StoreError;

use super::last::{LastLogout, LastStore};
use super::mysql::MysqlIm;

impl LastStore for MysqlIm {
    async fn last_logout(&self, user: &str) -> Result<Option<LastLogout>, StoreError> {
        self.run("reading the last logout", user, || async {
            let row: Option<(i64, String)> =
                sqlx::query_as("SELECT stamp_ms, status FROM last_activity WHERE username = ?")
                    .bind(user)
                    .fetch_optional(&self.pool)
                    .await?;
            Ok(row.map(|(stamp_ms, status)| LastLogout { stamp_ms, status }))
        })
        .await
    }

    async fn set_last_logout(&self, user: &str, logout: &LastLogout) -> Result<(), StoreError> {
        self.run("recording a logout", user, || async {
            // One statement: atomic without the user's lock.
            sqlx::query(
                "INSERT INTO last_activity (username, stamp_ms, status) VALUES (?, ?, ?) \
                 ON DUPLICATE KEY UPDATE stamp_ms = VALUES(stamp_ms), status = VALUES(status)",
            )
            .bind(user)
            .bind(logout.stamp_ms)
            .bind(&logout.status)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
        .await
    }
}
