//! Messages a node holds for a farm node that is down (issue 14): kept in the holding node's
//! store (its own file, or the central database, where `holder` keeps each node's apart),
//! written to the node in order when its link is back, then deleted.

use std::future::Future;

use crate::accounts::StoreError;

/// Both backends read it with `SELECT id, stanza AS stanza_xml`.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct HeldMessage {
    /// Grows with every held message: pass the last one written to [`HeldStore::release_up_to`].
    pub id: i64,
    pub stanza_xml: String,
}

/// Bounds of what one node holds for another.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldLimits {
    /// For the node, over all its users.
    pub per_node: usize,
    /// For one recipient.
    pub per_user: usize,
}

/// The outcome of [`HeldStore::hold`].
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Held {
    Held,
    /// A bound of [`HoldLimits`] is reached; nothing was held.
    Full,
}

pub trait HeldStore: Send + Sync {
    /// Appends `stanza_xml` (for `user` on `node`) to what `holder` holds, unless a bound is
    /// reached.
    fn hold(
        &self,
        holder: &str,
        node: &str,
        user: &str,
        stanza_xml: &str,
        stamp_ms: i64,
        limits: HoldLimits,
    ) -> impl Future<Output = Result<Held, StoreError>> + Send;

    /// At most `limit` of what `holder` holds for `node` after id `after` (0: from the
    /// start), oldest first.
    fn held(
        &self,
        holder: &str,
        node: &str,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<HeldMessage>, StoreError>> + Send;

    /// Deletes what `holder` holds for `node` up to id `up_to` (written to the node); how many.
    fn release_up_to(
        &self,
        holder: &str,
        node: &str,
        up_to: i64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The nodes `holder` holds something for, sorted.
    fn held_for(
        &self,
        holder: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;
}
