//! Roster management (RFC 6121 §2): get (with versioning, §2.6), set, remove, and pushes to
//! every interested resource.

use jabberfarm_net::stream::new_id;
use jabberfarm_proto::ns;
use jabberfarm_proto::stanza::{ErrorCondition, PresenceType, StanzaError, iq_result};
use jabberfarm_proto::xml::Element;
use jabberfarm_store::accounts::StoreError;
use jid::BareJid;

use super::vcard::backend_error;
use super::{bare, push};
use crate::Slave;
use crate::router::Origin;
use jabberfarm_store::im::{RosterItem, RosterStore, Subscription};

/// Bounds on what a client may put in its roster.
const MAX_NAME: usize = 1024;
const MAX_GROUPS: usize = 64;
pub const MAX_ITEMS: usize = 2000;

/// `<item/>` for a roster item (RFC 6121 §2.1.2).
pub fn item_element(item: &RosterItem) -> Element {
    let mut e = Element::new("item", ns::ROSTER)
        .with_attr("jid", item.jid.as_str())
        .with_opt_attr("name", item.name.as_deref())
        .with_attr("subscription", item.subscription.as_str());
    if item.ask {
        e.set_attr("ask", "subscribe");
    }
    if item.approved {
        e.set_attr("approved", "true");
    }
    for g in &item.groups {
        e = e.with_child(Element::new("group", ns::ROSTER).with_text(g));
    }
    e
}

/// A roster get from the user's own session (`resource`): the roster, or nothing new since the
/// version the client has (§2.6.3); the session is interested in pushes from now on.
pub async fn get(
    slave: &Slave,
    iq: &Element,
    query: &Element,
    user: &str,
    resource: &str,
) -> Element {
    slave.sessions.set_interested(user, resource);
    match slave.im.roster(user).await {
        Ok((version, items)) => {
            let ver = version.to_string();
            // §2.6.3: an unchanged roster is an empty result; pushes follow for changes.
            if query.attr("ver") == Some(ver.as_str()) {
                return iq_result(iq, None);
            }
            let mut q = Element::new("query", ns::ROSTER).with_attr("ver", ver);
            for item in &items {
                q = q.with_child(item_element(item));
            }
            iq_result(iq, Some(q))
        }
        Err(e) => backend_error(iq, &e),
    }
}

/// §2.3 (add/update) and §2.5 (remove).
pub async fn set(slave: &Slave, iq: &Element, query: &Element, user: &str) -> Element {
    let items: Vec<&Element> = query
        .children()
        .filter(|c| c.is("item", ns::ROSTER))
        .collect();
    let bad = |text: &str| {
        StanzaError::new(ErrorCondition::BadRequest)
            .text(text)
            .reply_to(iq)
    };
    let [item] = items.as_slice() else {
        return bad("a roster set carries exactly one item");
    };
    let Some(jid) = item.attr("jid").and_then(|j| BareJid::new(j).ok()) else {
        return bad("the item needs a valid jid");
    };
    let contact = jid.as_str();
    let existing = match slave.im.item(user, &jid).await {
        Ok(i) => i,
        Err(e) => return backend_error(iq, &e),
    };
    if item.attr("subscription") == Some("remove") {
        let Some(old) = existing else {
            // §2.5.3
            return StanzaError::new(ErrorCondition::ItemNotFound).reply_to(iq);
        };
        match slave.im.remove_item(user, &jid).await {
            Ok(Some(ver)) => {
                let mut gone = RosterItem::new(jid.clone());
                gone.subscription = Subscription::None;
                push_item(slave, user, &gone, ver, true);
            }
            Ok(None) => {}
            Err(e) => return backend_error(iq, &e),
        }
        let _ = slave.im.remove_pending_in(user, &jid).await;
        // §2.5.2: cancel the subscriptions both ways.
        let from = bare(user, &slave.sessions.domain);
        if old.subscription.has_to() || old.ask {
            slave
                .route(
                    subscription(&from, contact, PresenceType::Unsubscribe),
                    Origin::Local,
                )
                .await;
        }
        if old.subscription.has_from() {
            slave
                .route(
                    subscription(&from, contact, PresenceType::Unsubscribed),
                    Origin::Local,
                )
                .await;
        }
        return iq_result(iq, None);
    }
    let name = item
        .attr("name")
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    if name.as_ref().is_some_and(|n| n.len() > MAX_NAME) {
        return StanzaError::new(ErrorCondition::NotAcceptable)
            .text("name too long")
            .reply_to(iq);
    }
    let mut groups: Vec<String> = Vec::new();
    for g in item.children().filter(|c| c.is("group", ns::ROSTER)) {
        let t = g.text();
        // §2.3.3: empty or duplicate groups are errors.
        if t.is_empty() || t.len() > MAX_NAME {
            return StanzaError::new(ErrorCondition::NotAcceptable)
                .text("empty or too long group")
                .reply_to(iq);
        }
        if groups.contains(&t) {
            return bad("duplicate group");
        }
        groups.push(t);
    }
    if groups.len() > MAX_GROUPS {
        return StanzaError::new(ErrorCondition::NotAcceptable)
            .text("too many groups")
            .reply_to(iq);
    }
    let mut new = match existing {
        Some(i) => i,
        None => {
            match slave.im.item_count(user).await {
                Ok(n) if n >= MAX_ITEMS => {
                    return StanzaError::new(ErrorCondition::ResourceConstraint)
                        .text("the roster is full")
                        .reply_to(iq);
                }
                Err(e) => return backend_error(iq, &e),
                _ => {}
            }
            RosterItem::new(jid.clone())
        }
    };
    // The client sets name and groups only; subscription state is the server's (§2.1.2.5).
    new.name = name;
    new.groups = groups;
    match store_item(slave, user, &new).await {
        Ok(ver) => {
            push_item(slave, user, &new, ver, false);
            iq_result(iq, None)
        }
        Err(e) => backend_error(iq, &e),
    }
}

/// A roster push of one item to every interested resource of `user` (§2.1.6).
pub fn push_item(slave: &Slave, user: &str, item: &RosterItem, version: u64, removed: bool) {
    let mut el = item_element(item);
    if removed {
        el.set_attr("subscription", "remove");
        el.remove_attr("ask");
        el.remove_attr("approved");
    }
    let domain = &slave.sessions.domain;
    for s in slave.sessions.interested(user) {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("type", "set")
            .with_attr("id", format!("push{}", new_id()))
            .with_attr("to", format!("{}/{}", bare(user, domain), s.resource))
            .with_child(
                Element::new("query", ns::ROSTER)
                    .with_attr("ver", version.to_string())
                    .with_child(el.clone()),
            );
        push(&s.tx, iq);
    }
}

/// A subscription-related presence from a bare JID to a bare JID.
pub fn subscription(from: &str, to: &str, kind: PresenceType) -> Element {
    Element::new("presence", ns::CLIENT)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", kind.name())
}

/// Writes a roster item, after telling [`crate::sessions`] (sessions that knew the roster to be empty
/// must read it again). Every roster write goes through here.
pub(crate) async fn store_item(
    slave: &Slave,
    user: &str,
    item: &RosterItem,
) -> Result<u64, StoreError> {
    slave.sessions.roster_changed(user);
    slave.im.put_item(user, item).await
}
