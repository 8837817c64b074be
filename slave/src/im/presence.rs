//! Presence (RFC 6121 §4) and subscriptions (§3).
//!
//! Outbound (the sender's slave, [`outbound`]): broadcast to contacts with a `from`
//! subscription and to the user's other resources, probes on initial presence, directed
//! presence, and the user's side of the subscription state machine.
//! Inbound (the recipient's slave, [`inbound`]): the contact's side of the state machine,
//! answers to probes, delivery.

use jabberfarm_proto::ns;
use jabberfarm_proto::stanza::{ErrorCondition, PresenceType, StanzaError};
use jabberfarm_proto::xml::Element;
use jid::{BareJid, FullJid, Jid};
use tracing::warn;

use super::roster::{push_item, subscription};
use super::subscription::Inbound;
use super::{bare, push};
use crate::Slave;
use crate::router::Origin;
use crate::sessions::PresenceChange;
use jabberfarm_store::im::{LastLogout, LastStore, LoginState, RosterItem, RosterStore};

/// Inbound subscription requests kept per user until answered (RFC 6121 §3.1.3); one more,
/// from a new contact, is refused with `resource-constraint`.
pub const MAX_PENDING_IN: usize = 1000;
/// Full JIDs whose available presence one resource has seen and tracks (to tell it they are
/// gone when their node's link drops); beyond, presences are still delivered, not tracked.
pub const MAX_SEEN: usize = 4096;
/// Targets of directed presence one resource tracks (to send them unavailable when it goes);
/// one more directed available presence is refused with `resource-constraint`.
pub const MAX_DIRECTED: usize = 1000;

/// A presence stanza from a local session, already stamped with its full JID.
/// Returns stanzas for the session itself (offline messages, pending subscription requests)
/// after an initial presence. `keep_offline`: a session with stream management, which
/// deletes the offline messages it gets only once its client acknowledged them: they stay
/// stored, and the last one's id is written there ([`super::offline::take`]).
pub async fn outbound(
    slave: &Slave,
    me: &FullJid,
    user: &str,
    mut el: Element,
    keep_offline: Option<&mut Option<i64>>,
) -> Vec<Element> {
    let Some(kind) = PresenceType::of(&el) else {
        // Not presence RFC 6121 defines.
        return Vec::new();
    };
    let to = el.attr("to").map(str::to_owned);
    match (kind, to) {
        (PresenceType::Available | PresenceType::Unavailable, None) => {
            broadcast(slave, me, user, el, keep_offline).await
        }
        (PresenceType::Available | PresenceType::Unavailable, Some(to)) => {
            // Directed presence (§4.6): remembered so unavailable follows it.
            let noted = slave.sessions.note_directed(
                user,
                me.resource().as_str(),
                &to,
                kind == PresenceType::Available,
                MAX_DIRECTED,
            );
            if !noted {
                return vec![
                    StanzaError::new(ErrorCondition::ResourceConstraint)
                        .text("too many directed presences from this resource")
                        .reply_to(&el),
                ];
            }
            slave.route(el, Origin::Local).await;
            Vec::new()
        }
        (kind, Some(to)) if kind.is_subscription() => {
            let Ok(contact) = Jid::new(&to).map(|j| j.to_bare()) else {
                return Vec::new();
            };
            // §3.1.2: subscription stanzas go from bare JID to bare JID.
            let from = bare(user, &slave.sessions.domain);
            el.set_attr("from", &from);
            el.set_attr("to", contact.to_string());
            // An error for the sender (the roster is full) goes straight back to it.
            match subscription_out(slave, user, &from, &contact, kind, el).await {
                Some(mut e) => {
                    e.set_attr("to", me.to_string());
                    vec![e]
                }
                None => Vec::new(),
            }
        }
        // Clients do not probe (§4.3); anything else is not presence we know.
        _ => Vec::new(),
    }
}

/// §4.2 / §4.4 / §4.5: broadcast presence. Returns what goes to the session itself: its own
/// presence first (§4.2.2, §4.4.2: the user's available resources include the sender), then,
/// after initial presence, the other resources' presence, waiting subscription requests and
/// offline messages.
async fn broadcast(
    slave: &Slave,
    me: &FullJid,
    user: &str,
    el: Element,
    keep_offline: Option<&mut Option<i64>>,
) -> Vec<Element> {
    let available = el.attr("type").is_none();
    let resource = me.resource().as_str();
    let change = {
        // Messages decided for offline storage before this point are stored by now, so the
        // initial presence below finds them; from here on they are delivered live.
        let _order = slave.sessions.offline_lock(user).await;
        slave
            .sessions
            .set_presence(user, resource, available.then(|| el.clone()))
    };
    let initial = change == PresenceChange::Initial;
    if change == PresenceChange::Unavailable {
        record_logout(slave, user, &el).await;
    }
    let own_bare = bare(user, &slave.sessions.domain);
    let mut for_me = Vec::new();
    // Prosody does the same; clients (slixmpp, scansion scripts) wait for it.
    let mut echo = el.clone();
    echo.set_attr("to", me.to_string());
    for_me.push(echo);
    // After `set_presence`: whatever is stored from now on is delivered live instead.
    let stored = if initial {
        let mark = slave.sessions.roster_mark();
        let state = slave.im.login_state(user).await.ok().flatten();
        if state.as_ref().is_some_and(|s| !s.roster) {
            slave.sessions.note_roster_empty(user, resource, mark);
        }
        state
    } else {
        None
    };
    let has = |what: fn(&LoginState) -> bool| stored.as_ref().is_none_or(what);
    let known_empty = !initial && slave.sessions.roster_known_empty(user, resource);
    let roster = if !has(|s| s.roster) || known_empty {
        Vec::new()
    } else {
        match slave.im.roster(user).await {
            Ok((_, items)) => items,
            Err(e) => {
                warn!(
                    user,
                    "roster unavailable, presence goes to own resources only: {e}"
                );
                Vec::new()
            }
        }
    };
    for item in roster.iter().filter(|i| i.subscription.has_from()) {
        let mut p = el.clone();
        p.set_attr("to", item.jid.as_str());
        slave.route(p, Origin::Local).await;
    }
    if !available {
        for to in slave.sessions.take_directed(user, resource) {
            let mut p = el.clone();
            p.set_attr("to", to);
            slave.route(p, Origin::Local).await;
        }
    }
    // The user's other resources see it, and a new one sees theirs (§4.2.2).
    for s in slave.sessions.available(user) {
        if s.resource == resource {
            continue;
        }
        let mut p = el.clone();
        p.set_attr("to", format!("{own_bare}/{}", s.resource));
        push(&s.tx, p);
        if initial && let Some(mut theirs) = s.presence {
            theirs.set_attr("to", me.to_string());
            for_me.push(theirs);
        }
    }
    if initial {
        // §4.3: probe the contacts we are subscribed to.
        for item in roster.iter().filter(|i| i.subscription.has_to()) {
            let probe = Element::new("presence", ns::CLIENT)
                .with_attr("type", "probe")
                .with_attr("from", &own_bare)
                .with_attr("to", item.jid.as_str());
            slave.route(probe, Origin::Local).await;
        }
        // §3.1.3: subscription requests that waited for us.
        if has(|s| s.pending_in)
            && let Ok(pending) = slave.im.pending_in(user).await
        {
            for (_, xml) in pending {
                if let Ok(p) = jabberfarm_proto::xml::parse_element(&xml, ns::CLIENT) {
                    for_me.push(p);
                }
            }
        }
        if crate::sessions::priority_of(&el) >= 0 && has(|s| s.offline) {
            let (msgs, last) = super::offline::take(slave, user, me, keep_offline.is_some()).await;
            for_me.extend(msgs);
            if let Some(slot) = keep_offline {
                *slot = last;
            }
        }
    }
    for_me
}

/// XEP-0012 §4: when `user` logged out, with the status of the unavailable presence.
async fn record_logout(slave: &Slave, user: &str, unavailable: &Element) {
    let status = unavailable
        .children()
        .find(|c| c.name == "status")
        .map(|c| c.text())
        .unwrap_or_default();
    let logout = LastLogout {
        stamp_ms: super::now_ms(),
        status,
    };
    if let Err(e) = slave.im.set_last_logout(user, &logout).await {
        warn!(user, "cannot record the logout: {e}");
    }
}

/// The user's half of the subscription state machine (§3.1.2, §3.2.2, §3.3.2, §3.4). Returns
/// the error for the sender when the stanza is refused.
async fn subscription_out(
    slave: &Slave,
    user: &str,
    from: &str,
    contact: &BareJid,
    kind: PresenceType,
    el: Element,
) -> Option<Element> {
    let item = match slave.im.item(user, contact).await {
        Ok(i) => i,
        Err(e) => {
            warn!(user, "roster unavailable: {e}");
            return None;
        }
    };
    let had_item = item.is_some();
    if !had_item && matches!(kind, PresenceType::Subscribe | PresenceType::Subscribed) {
        // A new contact is a new roster item: the roster cap holds here as for roster sets.
        match slave.im.item_count(user).await {
            Ok(n) if n >= super::roster::MAX_ITEMS => {
                return Some(
                    StanzaError::new(ErrorCondition::ResourceConstraint)
                        .text("the roster is full")
                        .reply_to(&el),
                );
            }
            Ok(_) => {}
            Err(e) => {
                warn!(user, "roster unavailable: {e}");
                return None;
            }
        }
    }
    let mut item = item.unwrap_or_else(|| RosterItem::new(contact.clone()));
    let before = item.clone();
    let pending_in = match kind {
        PresenceType::Subscribed | PresenceType::Unsubscribed => slave
            .im
            .remove_pending_in(user, contact)
            .await
            .unwrap_or(false),
        _ => false,
    };
    let forward = super::subscription::outbound(&mut item, kind, pending_in)?;
    let removal = matches!(kind, PresenceType::Unsubscribe | PresenceType::Unsubscribed);
    if item != before || (!had_item && !removal) {
        match super::roster::store_item(slave, user, &item).await {
            Ok(ver) => push_item(slave, user, &item, ver, false),
            Err(e) => warn!(user, "roster unavailable: {e}"),
        }
    }
    if forward {
        slave.route(el, Origin::Local).await;
    }
    match kind {
        // §3.1.5: once subscribed, the contact gets our current presence.
        PresenceType::Subscribed if forward => {
            for s in slave.sessions.available(user) {
                if let Some(mut p) = s.presence {
                    p.set_attr("to", contact.as_str());
                    slave.route(p, Origin::Local).await;
                }
            }
        }
        // §3.2.2: and on cancelling, unavailable from each resource.
        PresenceType::Unsubscribed => {
            for s in slave.sessions.available(user) {
                let p = Element::new("presence", ns::CLIENT)
                    .with_attr("type", "unavailable")
                    .with_attr("from", format!("{from}/{}", s.resource))
                    .with_attr("to", contact.as_str());
                slave.route(p, Origin::Local).await;
            }
        }
        _ => {}
    }
    None
}

/// A presence stanza for local user `user` (any origin). Returns the error/answer to route
/// back, if any; delivers what is to be delivered.
pub async fn inbound(
    slave: &Slave,
    el: Element,
    user: &str,
    resource: Option<&str>,
) -> Option<Element> {
    let kind = PresenceType::of(&el);
    let from = el.attr("from").and_then(|f| Jid::new(f).ok())?;
    let contact = from.to_bare();
    match kind {
        Some(kind) if kind.is_subscription() => {
            subscription_in(slave, el.clone(), user, &contact, kind).await;
            None
        }
        Some(PresenceType::Probe) => {
            probe(slave, user, &contact, &from).await;
            None
        }
        _ => slave.sessions.deliver_local(el, user, resource),
    }
}

/// The contact's half of the state machine (§3.1.3, §3.1.6, §3.2.3, §3.3.3).
async fn subscription_in(
    slave: &Slave,
    el: Element,
    user: &str,
    contact: &BareJid,
    kind: PresenceType,
) {
    let item = match slave.im.item(user, contact).await {
        Ok(i) => i,
        Err(e) => {
            warn!(user, "roster unavailable: {e}");
            return;
        }
    };
    let own = bare(user, &slave.sessions.domain);
    let deliver = |el: Element| slave.sessions.deliver_subscription(user, el);
    let mut item = item;
    let effect = super::subscription::inbound(item.as_mut(), kind);
    let store = async |i: Option<RosterItem>| {
        if let Some(i) = i
            && let Ok(ver) = super::roster::store_item(slave, user, &i).await
        {
            push_item(slave, user, &i, ver, false);
        }
    };
    match effect {
        Inbound::AnswerSubscribed => {
            // Already subscribed: answer for the user (§3.1.3).
            slave
                .route(
                    subscription(&own, contact.as_str(), PresenceType::Subscribed),
                    Origin::Local,
                )
                .await;
        }
        Inbound::PreApproved => {
            store(item).await;
            slave
                .route(
                    subscription(&own, contact.as_str(), PresenceType::Subscribed),
                    Origin::Local,
                )
                .await;
            for s in slave.sessions.available(user) {
                if let Some(mut p) = s.presence {
                    p.set_attr("to", contact.as_str());
                    slave.route(p, Origin::Local).await;
                }
            }
        }
        Inbound::Request => {
            // Kept until answered, delivered now to whoever is online (§3.1.3).
            let mut xml = String::new();
            el.write_to(&mut xml, ns::CLIENT);
            match slave
                .im
                .add_pending_in(user, contact, &xml, MAX_PENDING_IN)
                .await
            {
                Ok(true) => {}
                Ok(false) => {
                    // Bounded like the roster: the requester learns it, the user gets nothing.
                    let e = StanzaError::new(ErrorCondition::ResourceConstraint)
                        .text("too many subscription requests are waiting for this user")
                        .reply_to(&el);
                    slave.route(e, Origin::Local).await;
                    return;
                }
                Err(e) => warn!(user, "cannot keep a subscription request: {e}"),
            }
            deliver(el);
        }
        Inbound::Changed => {
            store(item).await;
            deliver(el);
        }
        Inbound::Withdrawn => {
            let _ = slave.im.remove_pending_in(user, contact).await;
        }
        Inbound::Ignore => {}
    }
}

/// §4.3.2: answer a probe with the last presence of each available resource, or unavailable.
async fn probe(slave: &Slave, user: &str, contact: &BareJid, from: &Jid) {
    let subscribed =
        matches!(slave.im.item(user, contact).await, Ok(Some(i)) if i.subscription.has_from());
    if !subscribed {
        return;
    }
    let to = from.to_string();
    let available = slave.sessions.available(user);
    if available.is_empty() {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", bare(user, &slave.sessions.domain))
            .with_attr("to", &to);
        slave.route(p, Origin::Local).await;
        return;
    }
    for s in available {
        if let Some(mut p) = s.presence {
            p.set_attr("to", &to);
            slave.route(p, Origin::Local).await;
        }
    }
}

/// The session of `me` ended (closed, dropped, replaced): if it was available, everyone who
/// saw it gets unavailable (§4.5.2).
pub async fn gone(slave: &Slave, me: &FullJid, user: &str) {
    let was_available = slave
        .sessions
        .available(user)
        .iter()
        .any(|s| s.resource == me.resource().as_str());
    if was_available {
        let p = Element::new("presence", ns::CLIENT)
            .with_attr("type", "unavailable")
            .with_attr("from", me.to_string());
        let _ = broadcast(slave, me, user, p, None).await;
    }
}

/// A peer node is lost (`LinkEvent::Lost`): local sessions are told that the contacts they
/// saw there are gone.
pub fn node_down(slave: &Slave, node: &str) {
    for (tx, to, gone) in slave.sessions.forget_seen_on(node) {
        for from in gone {
            let p = Element::new("presence", ns::CLIENT)
                .with_attr("type", "unavailable")
                .with_attr("from", from)
                .with_attr("to", &to);
            push(&tx, p);
        }
    }
}
