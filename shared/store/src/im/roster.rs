//! The roster (RFC 6121 §2) and the inbound subscription requests awaiting an answer (§3.1.3).

use std::future::Future;

use jid::BareJid;

use crate::accounts::StoreError;

/// The subscription state of a roster item (RFC 6121 §2.1.2.5), from the user's side: `to`
/// means the user receives the contact's presence, `from` that the contact receives the user's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Subscription {
    #[default]
    None,
    To,
    From,
    Both,
}

impl Subscription {
    /// The state with the two directions given.
    pub fn from_parts(to: bool, from: bool) -> Self {
        match (to, from) {
            (false, false) => Self::None,
            (true, false) => Self::To,
            (false, true) => Self::From,
            (true, true) => Self::Both,
        }
    }

    /// The user receives the contact's presence (`to` or `both`).
    pub fn has_to(self) -> bool {
        matches!(self, Self::To | Self::Both)
    }

    /// The contact receives the user's presence (`from` or `both`).
    pub fn has_from(self) -> bool {
        matches!(self, Self::From | Self::Both)
    }

    /// The value of the `subscription` attribute.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::To => "to",
            Self::From => "from",
            Self::Both => "both",
        }
    }

    /// The inverse of [`Self::as_str`]; `None` for anything else (`remove` is not a state).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "none" => Some(Self::None),
            "to" => Some(Self::To),
            "from" => Some(Self::From),
            "both" => Some(Self::Both),
            _ => None,
        }
    }
}

/// One contact on a user's roster (RFC 6121 §2.1.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RosterItem {
    /// The contact: a bare JID, so normalised and never a full JID.
    pub jid: BareJid,
    pub name: Option<String>,
    pub subscription: Subscription,
    /// An outbound subscription request is pending (`ask='subscribe'`, RFC 6121 §2.1.2.2).
    pub ask: bool,
    /// The contact's inbound subscription is pre-approved (RFC 6121 §3.4).
    pub approved: bool,
    /// In the order given; a repeated name is kept once.
    pub groups: Vec<String>,
}

impl RosterItem {
    /// An item with no name, no groups and subscription `none`.
    pub fn new(jid: BareJid) -> Self {
        Self {
            jid,
            name: None,
            subscription: Subscription::None,
            ask: false,
            approved: false,
            groups: Vec::new(),
        }
    }

    /// Binds `jid, name, subscription, ask, approved`, in that order, to the next parameters
    /// of a statement of either backend.
    pub(crate) fn bind<'q, DB: sqlx::Database>(
        &self,
        query: sqlx::query::Query<'q, DB, DB::Arguments>,
    ) -> sqlx::query::Query<'q, DB, DB::Arguments>
    where
        for<'t> &'t str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> Option<&'t str>: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
        for<'t> bool: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    {
        query
            .bind(self.jid.as_str())
            .bind(self.name.as_deref())
            .bind(self.subscription.as_str())
            .bind(self.ask)
            .bind(self.approved)
    }

    /// The groups as stored: a repeated name once, numbered in order from 0 (`position`).
    pub(crate) fn stored_groups(&self) -> impl Iterator<Item = (i32, &str)> {
        let mut seen = std::collections::HashSet::new();
        (0..).zip(
            self.groups
                .iter()
                .map(String::as_str)
                .filter(move |g| seen.insert(*g)),
        )
    }

    /// An item as a backend stored it (groups added by the caller). The error says what in
    /// the row is not a roster item: a JID that does not parse, an unknown subscription.
    pub(crate) fn from_stored(
        jid: &str,
        subscription: &str,
        name: Option<String>,
        ask: bool,
        approved: bool,
    ) -> Result<Self, String> {
        let parsed = BareJid::new(jid).map_err(|e| format!("item {jid:?} is not a JID: {e}"))?;
        let subscription = Subscription::parse(subscription)
            .ok_or_else(|| format!("item {jid:?} has subscription {subscription:?}"))?;
        Ok(Self {
            name,
            subscription,
            ask,
            approved,
            ..Self::new(parsed)
        })
    }
}

/// Where rosters live. `user` is always a normalised localpart; a contact is a bare JID (the
/// type: stringprep applied, never a full JID).
/// The futures are `Send`, so callers can spawn them.
pub trait RosterStore: Send + Sync {
    /// The roster version and every item, sorted by JID (byte order). Version 0 for a user
    /// who has never had a roster item.
    fn roster(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<(u64, Vec<RosterItem>), StoreError>> + Send;

    fn item(
        &self,
        user: &str,
        contact: &BareJid,
    ) -> impl Future<Output = Result<Option<RosterItem>, StoreError>> + Send;

    /// Inserts or replaces the item with `item.jid`, atomically bumping the user's roster
    /// version (RFC 6121 §2.6); returns the new version.
    fn put_item(
        &self,
        user: &str,
        item: &RosterItem,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Removes the item and bumps the version; returns the new version, or `None` (and no
    /// bump) if there was no such item.
    fn remove_item(
        &self,
        user: &str,
        contact: &BareJid,
    ) -> impl Future<Output = Result<Option<u64>, StoreError>> + Send;

    /// The current roster version (0 if the user never had a roster item).
    fn version(&self, user: &str) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// How many items the user's roster has (for the roster cap, without loading them).
    fn item_count(&self, user: &str) -> impl Future<Output = Result<usize, StoreError>> + Send;

    /// Keeps an inbound subscription request from `contact` (RFC 6121 §3.1.3) with its stanza,
    /// to deliver again at the next login. A new request from the same contact replaces the
    /// old one and counts as the newest. `Ok(false)`, and nothing kept, when the user has
    /// `max` requests from other contacts already.
    fn add_pending_in(
        &self,
        user: &str,
        contact: &BareJid,
        stanza_xml: &str,
        max: usize,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Forgets the request from `contact`; `false` if there was none.
    fn remove_pending_in(
        &self,
        user: &str,
        contact: &BareJid,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// `(contact, stanza_xml)` of every pending request, oldest first.
    fn pending_in(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Vec<(String, String)>, StoreError>> + Send;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn subscription_names_and_parts() {
        for (s, name, to, from) in [
            (Subscription::None, "none", false, false),
            (Subscription::To, "to", true, false),
            (Subscription::From, "from", false, true),
            (Subscription::Both, "both", true, true),
        ] {
            assert_eq!(s.as_str(), name);
            assert_eq!(Subscription::parse(name), Some(s));
            assert_eq!((s.has_to(), s.has_from()), (to, from));
            assert_eq!(Subscription::from_parts(to, from), s);
        }
        for bad in ["remove", "Both", "", "none "] {
            assert_eq!(Subscription::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn stored_rows_that_are_not_items_are_named() {
        let item = RosterItem::from_stored("romeo@example.net", "to", None, true, false).unwrap();
        assert_eq!(item.jid.as_str(), "romeo@example.net");
        assert_eq!((item.subscription, item.ask), (Subscription::To, true));

        let err = RosterItem::from_stored("@example.net", "to", None, false, false).unwrap_err();
        assert!(err.contains("\"@example.net\" is not a JID"), "{err}");
        let err =
            RosterItem::from_stored("romeo@example.net", "maybe", None, false, false).unwrap_err();
        assert!(err.contains("has subscription \"maybe\""), "{err}");
    }
}
