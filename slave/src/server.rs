//! What the server itself answers: stanzas to the bare domain (XEP-0199 ping, XEP-0030
//! disco), and IQs to a user's bare JID that the server handles on the user's behalf.

use jabberfarm_shared::ns;
use jabberfarm_shared::stanza::{ErrorType, Kind, error_reply, iq_result, is_error_or_result};
use jabberfarm_shared::xml::Element;

use crate::Slave;
use crate::im;

/// Features in disco#info: exactly what this server supports.
pub const FEATURES: &[&str] = &[
    ns::DISCO_INFO,
    ns::DISCO_ITEMS,
    ns::PING,
    ns::IQ_AUTH,
    ns::VCARD,
    ns::MSGOFFLINE,
    ns::DELAY,
];

/// A stanza addressed to the bare domain. Returns the reply, if any.
pub fn handle(slave: &Slave, el: Element) -> Option<Element> {
    if Kind::of(&el) != Some(Kind::Iq) || is_error_or_result(&el) {
        // Messages and presence to the server itself are not for anyone (RFC 6121 §8.5.1 says
        // the server handles them; we have nothing to do with them yet).
        return None;
    }
    let _ = slave;
    let kind = el.attr("type").unwrap_or("");
    let Some(payload) = el.first_child() else {
        return Some(error_reply(
            &el,
            ErrorType::Modify,
            "bad-request",
            None,
            Some("an IQ needs exactly one payload"),
            false,
        ));
    };
    match (kind, &*payload.name, &*payload.ns) {
        ("get", "ping", ns::PING) => Some(iq_result(&el, None)),
        // RFC 3921 §3 session establishment: a no-op kept for old clients (RFC 6121 dropped it).
        ("set", "session", ns::SESSION) => Some(iq_result(&el, None)),
        ("get", "query", ns::DISCO_INFO) if payload.attr("node").is_none() => {
            let mut q = Element::new("query", ns::DISCO_INFO).with_child(
                Element::new("identity", ns::DISCO_INFO)
                    .with_attr("category", "server")
                    .with_attr("type", "im")
                    .with_attr("name", "jabberfarm"),
            );
            for f in FEATURES {
                q = q.with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
            }
            Some(iq_result(&el, Some(q)))
        }
        ("get", "query", ns::DISCO_ITEMS) => {
            Some(iq_result(&el, Some(Element::new("query", ns::DISCO_ITEMS))))
        }
        ("get" | "set", ..) => Some(error_reply(
            &el,
            ErrorType::Cancel,
            "service-unavailable",
            None,
            None,
            false,
        )),
        _ => Some(error_reply(
            &el,
            ErrorType::Modify,
            "bad-request",
            None,
            Some("IQ type must be get or set"),
            false,
        )),
    }
}

/// An IQ to local user `user`'s bare JID (RFC 6121 §8.5.2.1: the server answers for the
/// account): ping, roster (the user's own sessions only), vCard.
pub async fn handle_account_iq(slave: &Slave, el: Element, user: &str) -> Option<Element> {
    if is_error_or_result(&el) {
        return None;
    }
    let own = format!("{user}@{}", slave.router.domain);
    // The sender's resource when the sender is this very account.
    let own_resource = el
        .attr("from")
        .and_then(|f| f.strip_prefix(own.as_str()))
        .and_then(|r| r.strip_prefix('/'))
        .map(str::to_owned);
    let kind = el.attr("type");
    let Some(p) = el.first_child() else {
        return Some(error_reply(
            &el,
            ErrorType::Modify,
            "bad-request",
            None,
            None,
            false,
        ));
    };
    Some(match (kind, &*p.name, &*p.ns) {
        (Some("get"), "ping", ns::PING) => iq_result(&el, None),
        (Some("set"), "session", ns::SESSION) => iq_result(&el, None),
        (_, "query", ns::ROSTER) => match own_resource {
            Some(res) => im::roster::handle(slave, &el, user, &res).await,
            // RFC 6121 §2.1.5: nobody else may see or change the roster.
            None => error_reply(&el, ErrorType::Auth, "forbidden", None, None, false),
        },
        (_, "vCard", ns::VCARD) => {
            im::vcard::handle(slave, &el, user, own_resource.is_some()).await
        }
        _ => error_reply(
            &el,
            ErrorType::Cancel,
            "service-unavailable",
            None,
            None,
            false,
        ),
    })
}
