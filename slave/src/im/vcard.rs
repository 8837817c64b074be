//! vCard-temp (XEP-0054): anyone may read a user's vCard; only the user may set it.

use jabberfarm_proto::ns;
use jabberfarm_proto::stanza::{ErrorCondition, ErrorType, StanzaError, iq_result};
use jabberfarm_proto::xml::{Element, parse_element};
use tracing::warn;

use crate::Slave;
use jabberfarm_store::im::VcardStore;

/// A vCard get addressed to `user`'s bare JID: anyone may read it.
pub async fn get(slave: &Slave, iq: &Element, user: &str) -> Element {
    match slave.im.vcard(user).await {
        Ok(Some(xml)) => match parse_element(&xml, ns::CLIENT) {
            Ok(v) => iq_result(iq, Some(v)),
            Err(_) => iq_result(iq, Some(Element::new("vCard", ns::VCARD))),
        },
        Ok(None) => iq_result(iq, Some(Element::new("vCard", ns::VCARD))),
        Err(e) => backend_error(iq, &e),
    }
}

/// A vCard set addressed to `user`'s bare JID: only from the user.
pub async fn set(
    slave: &Slave,
    iq: &Element,
    vcard: &Element,
    user: &str,
    from_owner: bool,
) -> Element {
    if !from_owner {
        return StanzaError::new(ErrorCondition::Forbidden)
            .text("only the owner may change a vCard")
            .reply_to(iq);
    }
    let mut xml = String::new();
    vcard.write_to(&mut xml, ns::CLIENT);
    match slave.im.set_vcard(user, &xml).await {
        Ok(()) => iq_result(iq, None),
        Err(e) => backend_error(iq, &e),
    }
}

pub(crate) fn backend_error(iq: &Element, e: &dyn std::fmt::Display) -> Element {
    warn!("storage failure: {e}");
    StanzaError::new(ErrorCondition::InternalServerError)
        .typed(ErrorType::Wait)
        .text("storage is unavailable; try again later")
        .reply_to(iq)
}
