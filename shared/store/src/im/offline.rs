//! Offline messages (XEP-0160): kept while the user has no available resource, delivered
//! oldest first at the next initial presence, then deleted.

use std::future::Future;

use crate::accounts::StoreError;

/// Both backends read it with `SELECT id, stanza AS stanza_xml, stamp_ms`.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct OfflineMessage {
    /// Grows with every stored message, never reused: pass the last delivered one to
    /// [`OfflineStore::delete_up_to`].
    pub id: i64,
    pub stanza_xml: String,
    /// When it was stored, unix milliseconds (for the XEP-0203 `<delay/>`).
    pub stamp_ms: i64,
}

/// The outcome of [`OfflineStore::store`].
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored {
    Stored,
    /// The user already has the quota of messages; nothing was stored.
    QuotaFull,
}

/// Where offline messages live. `user` is always a normalised localpart.
pub trait OfflineStore: Send + Sync {
    /// Appends the message unless the user already has `quota` messages (then
    /// [`Stored::QuotaFull`] and nothing is stored). Atomic: concurrent calls never overshoot.
    fn store(
        &self,
        user: &str,
        stanza_xml: &str,
        stamp_ms: i64,
        quota: usize,
    ) -> impl Future<Output = Result<Stored, StoreError>> + Send;

    /// At most `limit` messages, oldest first, without deleting them.
    fn peek(
        &self,
        user: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OfflineMessage>, StoreError>> + Send;

    /// Deletes the user's messages with `id <= up_to` (once they were delivered); returns how
    /// many.
    fn delete_up_to(
        &self,
        user: &str,
        up_to: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    fn count(&self, user: &str) -> impl Future<Output = Result<usize, StoreError>> + Send;
}
