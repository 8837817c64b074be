//! Stanzas, typed (RFC 6120 §8, RFC 6121): the three kinds; IQ type and payload as one value
//! ([`Iq`]); presence and message types; stanza errors ([`StanzaError`]) and results.
//!
//! Elements stay [`Element`]s on the wire and in queues; these types are how code decides
//! what a stanza is, instead of matching attribute strings.

mod error;
mod iq;
mod types;

pub use error::{ErrorCondition, ErrorType, StanzaError, condition_of};
pub use iq::{Iq, IqError, IqType, Payload};
pub use types::{MessageType, PresenceType};

use crate::ns;
use crate::xml::Element;

/// The three stanza kinds (RFC 6120 §8).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Message,
    Presence,
    Iq,
}

impl Kind {
    pub fn of(el: &Element) -> Option<Kind> {
        if el.ns != ns::CLIENT && el.ns != ns::SERVER {
            return None;
        }
        match &*el.name {
            "message" => Some(Kind::Message),
            "presence" => Some(Kind::Presence),
            "iq" => Some(Kind::Iq),
            _ => None,
        }
    }
}

/// Whether a stanza must never be answered with an error (RFC 6120 §8.3.1: errors and
/// results are not answered, to avoid loops).
pub fn is_error_or_result(el: &Element) -> bool {
    matches!(el.attr("type"), Some("error") | Some("result"))
}

/// Whether a stanza is worth holding for a recipient whose server is down, to deliver when it
/// is back: messages (stored offline there if the recipient is away by then) and subscription
/// requests and answers (RFC 6121 §3: the server keeps those). Presence broadcasts and IQs
/// keep their RFC semantics: a presence to a server that is gone is moot, an IQ gets its
/// error at once.
pub fn worth_holding(el: &Element) -> bool {
    match Kind::of(el) {
        Some(Kind::Message) => true,
        Some(Kind::Presence) => PresenceType::of(el).is_some_and(PresenceType::is_subscription),
        _ => false,
    }
}

/// An empty IQ result for `iq`, optionally carrying a payload.
pub fn iq_result(iq: &Element, payload: Option<Element>) -> Element {
    let mut r = Element::new("iq", iq.ns.clone())
        .with_attr("type", "result")
        .with_opt_attr("id", iq.attr("id"))
        .with_opt_attr("to", iq.attr("from"))
        .with_opt_attr("from", iq.attr("to"));
    if let Some(p) = payload {
        r = r.with_child(p);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_subscriptions_are_worth_holding() {
        let el = |name: &'static str, t: Option<&str>| {
            Element::new(name, ns::CLIENT).with_opt_attr("type", t)
        };
        assert!(worth_holding(&el("message", None)));
        assert!(worth_holding(&el("message", Some("chat"))));
        assert!(worth_holding(&el("presence", Some("subscribe"))));
        assert!(worth_holding(&el("presence", Some("unsubscribed"))));
        assert!(!worth_holding(&el("presence", None)));
        assert!(!worth_holding(&el("presence", Some("unavailable"))));
        assert!(!worth_holding(&el("iq", Some("get"))));
        assert!(!worth_holding(&Element::new("message", "urn:other")));
    }
}
