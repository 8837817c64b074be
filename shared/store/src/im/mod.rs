//! Per-user IM storage (DESIGN.md D6): one trait per feature, one file per backend next to it.
//!
//! - [`roster`]: [`RosterStore`], rosters with versions (RFC 6121 §2) and the inbound
//!   subscription requests awaiting an answer (§3.1.3).
//! - [`offline`]: [`OfflineStore`], messages kept for users with no available resource
//!   (XEP-0160).
//! - [`vcard`]: [`VcardStore`], vCard-temp (XEP-0054).
//! - [`last`]: [`LastStore`], each user's last logout (XEP-0012).
//! - [`held`]: [`HeldStore`], messages a node holds for a farm node that is down.
//! - [`sqlite`]: [`SqliteIm`], the embedded backend (`roster_sqlite.rs`, `offline_sqlite.rs`,
//!   `vcard_sqlite.rs`, `last_sqlite.rs`), in the same file as the node's accounts.
//! - [`mysql`]: [`MysqlIm`], the central backend (`roster_mysql.rs`, `offline_mysql.rs`,
//!   `vcard_mysql.rs`, `last_mysql.rs`), in the farm's MySQL/MariaDB database: every slave sees
//!   the same data.
//!
//! [`ImStore`] is the configured backend, a closed enum that implements every trait by
//! delegation. The traits take and return plain strings (normalised localparts, bare JIDs,
//! stanza XML), so a central backend can implement them too. Every failure of the backend is
//! [`StoreError::Unavailable`].

pub mod held;
mod held_mysql;
mod held_sqlite;
pub mod last;
mod last_mysql;
mod last_sqlite;
pub mod mysql;
pub mod offline;
mod offline_mysql;
mod offline_sqlite;
pub mod roster;
mod roster_mysql;
mod roster_sqlite;
pub mod sqlite;
pub mod vcard;
mod vcard_mysql;
mod vcard_sqlite;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use crate::accounts::{AccountStore, ImDatabase, StoreError};
use jid::BareJid;

pub use held::{Held, HeldMessage, HeldStore, HoldLimits};
pub use last::{LastLogout, LastStore};
pub use mysql::MysqlIm;
pub use offline::{OfflineMessage, OfflineStore, Stored};
pub use roster::{RosterItem, RosterStore, Subscription};
pub use sqlite::SqliteIm;
pub use vcard::VcardStore;

/// Which of a user's IM tables have rows (see [`ImStore::login_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginState {
    pub roster: bool,
    pub pending_in: bool,
    pub offline: bool,
}

/// What one user keeps in the IM store: what moves with the user when a routing change gives
/// it to another slave and its data lives on the slaves (`jabberfarm plan`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holding {
    pub roster_items: u64,
    /// Subscription requests waiting for the user's answer.
    pub pending_in: u64,
    pub offline_messages: u64,
    pub vcard: bool,
    /// The stored text of all of it (JIDs and names, stanzas, the vCard), in bytes.
    pub bytes: u64,
}

/// The configured IM backend: the database beside the accounts
/// ([`AccountStore::im_database`]).
#[derive(Clone, Debug)]
pub enum ImStore {
    Sqlite(SqliteIm),
    Mysql(MysqlIm),
}

/// `each!(self, s => s.method(..).await)`: the same call on whichever backend this is.
macro_rules! each {
    ($store:expr, $s:ident => $call:expr) => {
        match $store {
            ImStore::Sqlite($s) => $call,
            ImStore::Mysql($s) => $call,
        }
    };
}

impl ImStore {
    /// The IM store that lives beside `accounts`: the same database (and pool), whose schema
    /// the account store has already migrated; for LDAP accounts, the database that
    /// `storage.ldap.data` names.
    pub fn for_accounts(accounts: &AccountStore) -> ImStore {
        match accounts.im_database() {
            ImDatabase::Sqlite(store) => {
                Self::Sqlite(SqliteIm::new(store.pool().clone(), store.readers().clone()))
            }
            ImDatabase::Mysql(store) => Self::Mysql(MysqlIm::new(&store)),
        }
    }

    /// What `user` has stored, in one query where the backend has one (SQLite: one round trip
    /// to a reader's worker thread): most logins find nothing, and skip the three reads.
    /// `None` when the backend cannot tell cheaply; read everything then.
    pub async fn login_state(&self, user: &str) -> Result<Option<LoginState>, StoreError> {
        match self {
            ImStore::Sqlite(s) => s.login_state(user).await.map(Some),
            ImStore::Mysql(_) => Ok(None),
        }
    }

    /// Records that `user` logged in, for account backends that cannot look users up
    /// ([`AccountStore::looks_up_users`]).
    pub async fn mark_known(&self, user: &str, now_ms: i64) -> Result<(), StoreError> {
        each!(self, s => s.mark_known(user, now_ms).await)
    }

    /// Every user who has logged in ([`Self::mark_known`]), sorted.
    pub async fn known_users(&self) -> Result<Vec<String>, StoreError> {
        each!(self, s => s.known_users().await)
    }

    /// What each user keeps, when the data lives in this node's own file (SQLite): what a
    /// routing change would copy. `None` for the central database: nothing is copied.
    pub async fn holdings(&self) -> Result<Option<BTreeMap<String, Holding>>, StoreError> {
        match self {
            ImStore::Sqlite(s) => s.holdings().await.map(Some),
            ImStore::Mysql(_) => Ok(None),
        }
    }

    /// Whether `user` has logged in on this farm before (see [`Self::mark_known`]).
    pub async fn is_known(&self, user: &str) -> Result<bool, StoreError> {
        each!(self, s => s.is_known(user).await)
    }

    /// Removes everything kept for `user` (when the account is deleted), atomically. Not an
    /// error if there was nothing.
    pub async fn delete_user(&self, user: &str) -> Result<(), StoreError> {
        each!(self, s => s.delete_user(user).await)
    }
}

impl RosterStore for ImStore {
    async fn roster(&self, user: &str) -> Result<(u64, Vec<RosterItem>), StoreError> {
        each!(self, s => s.roster(user).await)
    }

    async fn item(&self, user: &str, contact: &BareJid) -> Result<Option<RosterItem>, StoreError> {
        each!(self, s => s.item(user, contact).await)
    }

    async fn item_count(&self, user: &str) -> Result<usize, StoreError> {
        each!(self, s => s.item_count(user).await)
    }

    async fn put_item(&self, user: &str, item: &RosterItem) -> Result<u64, StoreError> {
        each!(self, s => s.put_item(user, item).await)
    }

    async fn remove_item(&self, user: &str, contact: &BareJid) -> Result<Option<u64>, StoreError> {
        each!(self, s => s.remove_item(user, contact).await)
    }

    async fn version(&self, user: &str) -> Result<u64, StoreError> {
        each!(self, s => s.version(user).await)
    }

    async fn add_pending_in(
        &self,
        user: &str,
        contact: &BareJid,
        stanza_xml: &str,
        max: usize,
    ) -> Result<bool, StoreError> {
        each!(self, s => s.add_pending_in(user, contact, stanza_xml, max).await)
    }

    async fn remove_pending_in(&self, user: &str, contact: &BareJid) -> Result<bool, StoreError> {
        each!(self, s => s.remove_pending_in(user, contact).await)
    }

    async fn pending_in(&self, user: &str) -> Result<Vec<(String, String)>, StoreError> {
        each!(self, s => s.pending_in(user).await)
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
        each!(self, s => s.store(user, stanza_xml, stamp_ms, quota).await)
    }

    async fn peek(&self, user: &str, limit: usize) -> Result<Vec<OfflineMessage>, StoreError> {
        each!(self, s => s.peek(user, limit).await)
    }

    async fn delete_up_to(&self, user: &str, up_to: i64) -> Result<u64, StoreError> {
        each!(self, s => s.delete_up_to(user, up_to).await)
    }

    async fn count(&self, user: &str) -> Result<usize, StoreError> {
        each!(self, s => s.count(user).await)
    }
}

impl VcardStore for ImStore {
    async fn vcard(&self, user: &str) -> Result<Option<String>, StoreError> {
        each!(self, s => s.vcard(user).await)
    }

    async fn set_vcard(&self, user: &str, xml: &str) -> Result<(), StoreError> {
        each!(self, s => s.set_vcard(user, xml).await)
    }
}

impl HeldStore for ImStore {
    async fn hold(
        &self,
        holder: &str,
        node: &str,
        user: &str,
        stanza_xml: &str,
        stamp_ms: i64,
        limits: HoldLimits,
    ) -> Result<Held, StoreError> {
        each!(self, s => s.hold(holder, node, user, stanza_xml, stamp_ms, limits).await)
    }

    async fn held(
        &self,
        holder: &str,
        node: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<HeldMessage>, StoreError> {
        each!(self, s => s.held(holder, node, after, limit).await)
    }

    async fn release_up_to(&self, holder: &str, node: &str, up_to: i64) -> Result<u64, StoreError> {
        each!(self, s => s.release_up_to(holder, node, up_to).await)
    }

    async fn held_for(&self, holder: &str) -> Result<Vec<String>, StoreError> {
        each!(self, s => s.held_for(holder).await)
    }
}

impl LastStore for ImStore {
    async fn last_logout(&self, user: &str) -> Result<Option<LastLogout>, StoreError> {
        each!(self, s => s.last_logout(user).await)
    }

    async fn set_last_logout(&self, user: &str, logout: &LastLogout) -> Result<(), StoreError> {
        each!(self, s => s.set_last_logout(user, logout).await)
    }
}
