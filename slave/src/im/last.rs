//! Last activity (XEP-0012 §4): asked at a user's bare JID, the server answers for the user.
//! Who may see the user's presence (the user, or a contact with a `to`/`both` subscription)
//! learns `seconds='0'` while the user is online, else the seconds since the last logout with
//! the status text of that unavailable presence; anyone else gets `<forbidden/>`.

use jabberfarm_proto::ns;
use jabberfarm_proto::stanza::{ErrorCondition, StanzaError, iq_result};
use jabberfarm_proto::xml::Element;

use super::vcard::backend_error;
use crate::Slave;
use jabberfarm_store::im::LastStore;

/// A `jabber:iq:last` get addressed to `user`'s bare JID; `may_see` tells whether the sender
/// may see the user's presence.
pub async fn handle(slave: &Slave, iq: &Element, user: &str, may_see: bool) -> Element {
    if !may_see {
        return StanzaError::new(ErrorCondition::Forbidden).reply_to(iq);
    }
    if !slave.sessions.available(user).is_empty() {
        return iq_result(iq, Some(query(0, "")));
    }
    match slave.im.last_logout(user).await {
        Ok(Some(l)) => {
            let seconds = (super::now_ms() - l.stamp_ms).max(0) / 1000;
            iq_result(iq, Some(query(seconds as u64, &l.status)))
        }
        Ok(None) => StanzaError::new(ErrorCondition::ItemNotFound)
            .text("no logout recorded for this user")
            .reply_to(iq),
        Err(e) => backend_error(iq, &e),
    }
}

/// `<query xmlns='jabber:iq:last' seconds='…'>status</query>`.
pub fn query(seconds: u64, status: &str) -> Element {
    Element::new("query", ns::LAST)
        .with_attr("seconds", seconds.to_string())
        .with_text(status)
}
