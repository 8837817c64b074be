//! Last activity (XEP-0012 §4): when each user last logged out, with the status text of that
//! unavailable presence.

use std::future::Future;

use crate::accounts::StoreError;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastLogout {
    /// Unix milliseconds.
    pub stamp_ms: i64,
    /// The `<status/>` of the unavailable presence; empty for none.
    pub status: String,
}

/// Where last logouts live. `user` is always a normalised localpart.
pub trait LastStore: Send + Sync {
    /// The user's last logout; `None` if none was recorded.
    fn last_logout(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Option<LastLogout>, StoreError>> + Send;

    /// Records a logout, replacing the one before.
    fn set_last_logout(
        &self,
        user: &str,
        logout: &LastLogout,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
