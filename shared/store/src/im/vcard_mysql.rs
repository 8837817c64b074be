//! [`VcardStore`] on MySQL/MariaDB: table `vcards`.

use crate::accounts::StoreError;

use super::mysql::MysqlIm;
use super::vcard::VcardStore;

impl VcardStore for MysqlIm {
    async fn vcard(&self, user: &str) -> Result<Option<String>, StoreError> {
        self.run("reading the vCard", user, || async {
            Ok(
                sqlx::query_scalar("SELECT xml FROM vcards WHERE username = ?")
                    .bind(user)
                    .fetch_optional(&self.pool)
                    .await?,
            )
        })
        .await
    }

    async fn set_vcard(&self, user: &str, xml: &str) -> Result<(), StoreError> {
        self.run("storing the vCard", user, || async {
            // Under the user's lock, so replace-by-delete-and-insert is atomic.
            let mut tx = self.write(user).await?;
            sqlx::query("DELETE FROM vcards WHERE username = ?")
                .bind(user)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO vcards (username, xml) VALUES (?, ?)")
                .bind(user)
                .bind(xml)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }
}
