//! Offline messages (XEP-0160): a `chat` or `normal` message for a user with no available
//! resource is kept (up to `limits.offline_quota` per user) and delivered, oldest first, with
//! a XEP-0203 `<delay/>`, when the user next sends initial presence with non-negative
//! priority.

use jabberfarm_net::receipt::Receipt;
use jabberfarm_proto::ns;
use jabberfarm_proto::stanza::{ErrorCondition, ErrorType, MessageType, StanzaError};
use jabberfarm_proto::xml::{Element, parse_element};
use jabberfarm_store::accounts::Existence;
use jid::FullJid;
use tracing::warn;

use crate::Slave;
use jabberfarm_store::im::{OfflineStore, Stored};

/// Messages taken per login; the rest stay for the next.
const DELIVER_MAX: usize = 1000;

/// Whether a message for a user with no available resource is kept (XEP-0160 §3: chat and
/// normal; headline, groupchat and error are not).
pub fn wants_storage(msg: &Element) -> bool {
    matches!(
        MessageType::of(msg),
        MessageType::Normal | MessageType::Chat
    ) && msg
        .children()
        .any(|c| c.name == "body" || c.name == "subject")
}

/// A message that [`wants_storage`], for local user `user` (at `resource`, if given): to the
/// sessions that take it, else into storage. Returns the error reply for the sender, if any.
///
/// Under the user's [`crate::sessions::Sessions::offline_lock`]: a resource that turns available
/// meanwhile waits until the message is stored, then finds it with the others; one that turned
/// available before gets it live. Either way exactly once.
pub async fn deliver_or_store(
    slave: &Slave,
    user: &str,
    resource: Option<&str>,
    msg: Element,
    receipt: Option<Receipt>,
) -> Option<Element> {
    let _order = slave.sessions.offline_lock(user).await;
    if slave.sessions.can_deliver_message(user, resource) {
        return slave.sessions.deliver_tracked(msg, user, resource, receipt);
    }
    // Safe once stored: the receipt goes when this returns.
    store(slave, user, msg).await
}

/// Keep `msg` for `user`. Returns the error reply for the sender, if any.
async fn store(slave: &Slave, user: &str, msg: Element) -> Option<Element> {
    // No enumeration through offline storage either: an unknown user is service-unavailable,
    // as for a user who is merely offline with storage full.
    let mut exists = match slave.store.exists(user).await {
        // LDAP bind mode: only a login shows that the account exists.
        Ok(Existence::Unknown) => slave.im.is_known(user).await,
        Ok(e) => Ok(e == Existence::Yes),
        Err(e) => Err(e),
    };
    // A user the routing table gave to this slave a moment ago: its data may still be on its
    // old slave (data on the slaves), and comes when asked.
    if matches!(exists, Ok(false)) && crate::handover::pull(slave, user).await {
        exists = Ok(true);
    }
    match exists {
        Ok(true) => {}
        Ok(false) => {
            return Some(StanzaError::new(ErrorCondition::ServiceUnavailable).reply_to(&msg));
        }
        Err(e) => {
            warn!(user, "account store unavailable: {e}");
            return Some(
                StanzaError::new(ErrorCondition::InternalServerError)
                    .typed(ErrorType::Wait)
                    .reply_to(&msg),
            );
        }
    }
    let mut xml = String::new();
    msg.write_to(&mut xml, ns::CLIENT);
    match slave
        .im
        .store(
            user,
            &xml,
            super::now_ms(),
            slave.config.limits.offline_quota,
        )
        .await
    {
        Ok(Stored::Stored) => None,
        Ok(Stored::QuotaFull) => Some(
            StanzaError::new(ErrorCondition::ServiceUnavailable)
                .typed(ErrorType::Wait)
                .text("the recipient's offline storage is full")
                .reply_to(&msg),
        ),
        Err(e) => {
            warn!(user, "cannot store an offline message: {e}");
            Some(
                StanzaError::new(ErrorCondition::InternalServerError)
                    .typed(ErrorType::Wait)
                    .reply_to(&msg),
            )
        }
    }
}

/// The user's stored messages, with `<delay/>`, addressed to `me`, and the last one's id.
/// Removed from storage, unless `keep` (a session with stream management): then they stay
/// until [`release`] once the client acknowledged them, and other resources logging in
/// meanwhile do not get them again ([`crate::sessions::Sessions::offline_handed`]; a session
/// that ends first gives them back with [`give_back`]). Under the user's offline lock, so two
/// resources logging in at once never both get them.
pub async fn take(
    slave: &Slave,
    user: &str,
    me: &FullJid,
    keep: bool,
) -> (Vec<Element>, Option<i64>) {
    let _order = slave.sessions.offline_lock(user).await;
    let msgs = match slave.im.peek(user, DELIVER_MAX).await {
        Ok(m) => m,
        Err(e) => {
            warn!(user, "offline messages unavailable: {e}");
            return (Vec::new(), None);
        }
    };
    let handed = slave.sessions.offline_handed(user);
    let msgs: Vec<_> = msgs.into_iter().filter(|m| Some(m.id) > handed).collect();
    let Some(last) = msgs.last().map(|m| m.id) else {
        return (Vec::new(), None);
    };
    let mut out = Vec::with_capacity(msgs.len());
    let domain = &slave.sessions.domain;
    for m in msgs {
        let Ok(mut el) = parse_element(&m.stanza_xml, ns::CLIENT) else {
            continue;
        };
        el.set_attr("to", me.to_string());
        // One stamp: a message stored again (a session that never acknowledged it) keeps the
        // time it was first stored.
        let stamped = el
            .children()
            .any(|c| c.is("delay", ns::DELAY) && c.attr("from") == Some(domain.as_str()));
        if !stamped {
            el = el.with_child(
                Element::new("delay", ns::DELAY)
                    .with_attr("from", domain)
                    .with_attr("stamp", rfc3339(m.stamp_ms))
                    .with_text("Offline storage"),
            );
        }
        out.push(el);
    }
    if keep {
        slave.sessions.set_offline_handed(user, Some(last));
    } else if let Err(e) = slave.im.delete_up_to(user, last).await {
        // The session writes them before reading anything else; deletion is last. A crash
        // in between delivers them again at the next login.
        warn!(user, "cannot delete delivered offline messages: {e}");
    }
    (out, Some(last))
}

/// The client acknowledged the offline messages up to id `up_to` it got: they go.
pub async fn release(slave: &Slave, user: &str, up_to: i64) {
    let _order = slave.sessions.offline_lock(user).await;
    if let Err(e) = slave.im.delete_up_to(user, up_to).await {
        warn!(user, "cannot delete delivered offline messages: {e}");
    }
    slave.sessions.set_offline_handed(user, None);
}

/// A session ended before its client acknowledged the offline messages it got: they are
/// still stored, and the next login gets them.
pub fn give_back(slave: &Slave, user: &str) {
    slave.sessions.set_offline_handed(user, None);
}

/// XEP-0082 date-time in UTC with milliseconds, from Unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if mo <= 2 { y + 1 } else { y };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}.{millis:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xep0082_stamps() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // XEP-0203's example instant: 2002-09-10T23:08:25Z
        assert_eq!(rfc3339(1_031_699_305_000), "2002-09-10T23:08:25.000Z");
        // Checked with Python: datetime.fromtimestamp(1795000000.123, timezone.utc)
        assert_eq!(rfc3339(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
    }
}
