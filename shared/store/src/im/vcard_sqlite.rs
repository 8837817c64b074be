//! [`VcardStore`] on SQLite: table `vcards`.

use crate::accounts::StoreError;

use super::sqlite::SqliteIm;
use super::vcard::VcardStore;

impl VcardStore for SqliteIm {
    async fn vcard(&self, user: &str) -> Result<Option<String>, StoreError> {
        let mut conn = self.reader(user, "reading the vCard").await?;
        sqlx::query_scalar("SELECT xml FROM vcards WHERE username = ?1")
            .bind(user)
            .fetch_optional(&mut *conn)
            .await
            .map_err(|e| self.error("reading the vCard", user, e))
    }

    async fn set_vcard(&self, user: &str, xml: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO vcards (username, xml) VALUES (?1, ?2) \
             ON CONFLICT (username) DO UPDATE SET xml = excluded.xml",
        )
        .bind(user)
        .bind(xml)
        .execute(&self.pool)
        .await
        .map_err(|e| self.error("storing the vCard", user, e))?;
        Ok(())
    }
}
