//! vCard-temp (XEP-0054): one `<vCard/>` per user, kept as XML.

use std::future::Future;

use crate::accounts::StoreError;

/// Where vCards live. `user` is always a normalised localpart.
pub trait VcardStore: Send + Sync {
    /// The user's `<vCard/>` element as XML; `None` if never set.
    fn vcard(&self, user: &str) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    /// Sets or replaces it. The size limit is the caller's.
    fn set_vcard(
        &self,
        user: &str,
        xml: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
