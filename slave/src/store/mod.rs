//! Per-user IM storage (DESIGN.md D6): one trait per feature, one file per backend next to it.
//!
//! - [`roster`]: [`RosterStore`], rosters with versions (RFC 6121 §2) and the inbound
//!   subscription requests awaiting an answer (§3.1.3).
//! - [`offline`]: [`OfflineStore`], messages kept for users with no available resource
//!   (XEP-0160).
//! - [`vcard`]: [`VcardStore`], vCard-temp (XEP-0054).
//! - [`sqlite`]: [`SqliteIm`], the embedded backend (`roster_sqlite.rs`, `offline_sqlite.rs`,
//!   `vcard_sqlite.rs`), in the same file as the node's accounts.
//!
//! [`ImStore`] is the configured backend, a closed enum that implements every trait by
//! delegation. The traits take and return plain strings (normalised localparts, bare JIDs,
//! stanza XML), so a central backend can implement them too. Every failure of the backend is
//! [`StoreError::Unavailable`].

pub mod offline;
mod offline_sqlite;
pub mod roster;
mod roster_sqlite;
pub mod sqlite;
pub mod vcard;
mod vcard_sqlite;

#[cfg(test)]
mod tests;

use jabberfarm_shared::auth::{AccountStore, StoreError};

pub use offline::{OfflineMessage, OfflineStore, Stored};
pub use roster::{RosterItem, RosterStore, Subscription};
pub use sqlite::SqliteIm;
pub use vcard::VcardStore;

/// The configured IM backend. MySQL/MariaDB comes later as another variant.
#[derive(Clone, Debug)]
pub enum ImStore {
    Sqlite(SqliteIm),
}

impl ImStore {
    /// The IM store that lives beside `accounts`: the same SQLite file (and pool), whose schema
    /// the account store has already migrated.
    pub fn for_accounts(accounts: &AccountStore) -> ImStore {
        match accounts {
            AccountStore::Sqlite(store) => Self::Sqlite(SqliteIm::new(store.pool().clone())),
        }
    }

    /// Removes everything kept for `user` (when the account is deleted), atomically. Not an
    /// error if there was nothing.
    pub async fn delete_user(&self, user: &str) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.delete_user(user).await,
        }
    }
}

impl RosterStore for ImStore {
    async fn roster(&self, user: &str) -> Result<(u64, Vec<RosterItem>), StoreError> {
        match self {
            Self::Sqlite(s) => s.roster(user).await,
        }
    }

    async fn item(&self, user: &str, contact: &str) -> Result<Option<RosterItem>, StoreError> {
        match self {
            Self::Sqlite(s) => s.item(user, contact).await,
        }
    }

    async fn put_item(&self, user: &str, item: &RosterItem) -> Result<u64, StoreError> {
        match self {
            Self::Sqlite(s) => s.put_item(user, item).await,
        }
    }

    async fn remove_item(&self, user: &str, contact: &str) -> Result<Option<u64>, StoreError> {
        match self {
            Self::Sqlite(s) => s.remove_item(user, contact).await,
        }
    }

    async fn version(&self, user: &str) -> Result<u64, StoreError> {
        match self {
            Self::Sqlite(s) => s.version(user).await,
        }
    }

    async fn add_pending_in(
        &self,
        user: &str,
        contact: &str,
        stanza_xml: &str,
    ) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.add_pending_in(user, contact, stanza_xml).await,
        }
    }

    async fn remove_pending_in(&self, user: &str, contact: &str) -> Result<bool, StoreError> {
        match self {
            Self::Sqlite(s) => s.remove_pending_in(user, contact).await,
        }
    }

    async fn pending_in(&self, user: &str) -> Result<Vec<(String, String)>, StoreError> {
        match self {
            Self::Sqlite(s) => s.pending_in(user).await,
        }
    }
}

impl OfflineStore for ImStore {
    async fn store(
        &self,
        user: &str,
        stanza_xml: &str,
        stamp_ms: i64,
        quota: usize,
    ) -> Result<Stored, StoreError> {
        match self {
            Self::Sqlite(s) => s.store(user, stanza_xml, stamp_ms, quota).await,
        }
    }

    async fn peek(&self, user: &str, limit: usize) -> Result<Vec<OfflineMessage>, StoreError> {
        match self {
            Self::Sqlite(s) => s.peek(user, limit).await,
        }
    }

    async fn delete_up_to(&self, user: &str, up_to: i64) -> Result<u64, StoreError> {
        match self {
            Self::Sqlite(s) => s.delete_up_to(user, up_to).await,
        }
    }

    async fn count(&self, user: &str) -> Result<usize, StoreError> {
        match self {
            Self::Sqlite(s) => s.count(user).await,
        }
    }
}

impl VcardStore for ImStore {
    async fn vcard(&self, user: &str) -> Result<Option<String>, StoreError> {
        match self {
            Self::Sqlite(s) => s.vcard(user).await,
        }
    }

    async fn set_vcard(&self, user: &str, xml: &str) -> Result<(), StoreError> {
        match self {
            Self::Sqlite(s) => s.set_vcard(user, xml).await,
        }
    }
}
