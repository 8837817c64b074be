//! vCard-temp (XEP-0054): anyone may read a user's vCard; only the user may set it.

use jabberfarm_proto::ns;
use jabberfarm_proto::stanza::{ErrorType, error_reply, iq_result};
use jabberfarm_proto::xml::{Element, parse_element};
use tracing::warn;

use crate::Slave;
use jabberfarm_store::im::VcardStore;

/// An IQ with a `<vCard xmlns='vcard-temp'/>` payload addressed to `user`'s bare JID.
pub async fn handle(slave: &Slave, iq: &Element, user: &str, from_owner: bool) -> Element {
    match iq.attr("type") {
        Some("get") => match slave.im.vcard(user).await {
            Ok(Some(xml)) => match parse_element(&xml, ns::CLIENT) {
                Ok(v) => iq_result(iq, Some(v)),
                Err(_) => iq_result(iq, Some(Element::new("vCard", ns::VCARD))),
            },
            Ok(None) => iq_result(iq, Some(Element::new("vCard", ns::VCARD))),
            Err(e) => backend_error(iq, &e),
        },
        Some("set") if from_owner => {
            let Some(v) = iq.child("vCard", ns::VCARD) else {
                return error_reply(iq, ErrorType::Modify, "bad-request", None, None, false);
            };
            let mut xml = String::new();
            v.write_to(&mut xml, ns::CLIENT);
            match slave.im.set_vcard(user, &xml).await {
                Ok(()) => iq_result(iq, None),
                Err(e) => backend_error(iq, &e),
            }
        }
        Some("set") => error_reply(
            iq,
            ErrorType::Auth,
            "forbidden",
            None,
            Some("only the owner may change a vCard"),
            false,
        ),
        _ => error_reply(iq, ErrorType::Modify, "bad-request", None, None, false),
    }
}

pub(crate) fn backend_error(iq: &Element, e: &dyn std::fmt::Display) -> Element {
    warn!("storage failure: {e}");
    error_reply(
        iq,
        ErrorType::Wait,
        "internal-server-error",
        None,
        Some("storage is unavailable; try again later"),
        false,
    )
}
