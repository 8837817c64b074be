//! Instant messaging on a slave (RFC 6121 and friends), one feature per file:
//!
//! - [`roster`]: roster get/set/remove, pushes, versioning (RFC 6121 §2).
//! - [`presence`]: broadcast, probes, directed presence and subscription stanzas (RFC 6121
//!   §3, §4), for contacts on this slave, on other slaves, and later remote ones.
//! - [`subscription`]: the subscription state machine (RFC 6121 §3, Appendix A) as pure
//!   functions that [`presence`] applies.
//! - [`offline`]: messages kept while a user has no available resource (XEP-0160), delivered
//!   with `<delay/>` (XEP-0203) at the next initial presence.
//! - [`vcard`]: vCard-temp (XEP-0054).
//! - [`last`]: last activity of a user (XEP-0012 §4), from the logouts [`presence`] records.
//!
//! Stanzas between users always pass through the owning slave's [`crate::router`]: the
//! sender's slave does the outbound half of a rule, the recipient's slave the inbound half.

pub mod last;
pub mod offline;
pub mod presence;
pub mod roster;
pub mod subscription;
pub mod vcard;

use jabberfarm_proto::xml::Element;

use crate::sessions::Outgoing;

/// Send to one session's queue; a full queue drops it (the session is hopelessly behind).
pub(crate) fn push(tx: &tokio::sync::mpsc::Sender<Outgoing>, el: Element) {
    let _ = tx.try_send(Outgoing::stanza(el));
}

/// `user@domain` for a normalised localpart.
pub(crate) fn bare(user: &str, domain: &str) -> String {
    format!("{user}@{domain}")
}

/// Now, in unix milliseconds (0 before 1970).
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
