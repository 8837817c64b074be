//! Stanza helpers: kinds, error replies (RFC 6120 §8.3), IQ results.

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

/// Error types (RFC 6120 §8.3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorType {
    Auth,
    Cancel,
    Continue,
    Modify,
    Wait,
}

impl ErrorType {
    pub fn name(self) -> &'static str {
        match self {
            ErrorType::Auth => "auth",
            ErrorType::Cancel => "cancel",
            ErrorType::Continue => "continue",
            ErrorType::Modify => "modify",
            ErrorType::Wait => "wait",
        }
    }
}

/// XEP-0086 legacy error codes, for old clients (iq:auth).
pub fn legacy_code(condition: &str) -> Option<&'static str> {
    Some(match condition {
        "redirect" | "gone" => "302",
        "bad-request" | "jid-malformed" => "400",
        "not-authorized" => "401",
        "forbidden" => "403",
        "item-not-found" | "recipient-unavailable" => "404",
        "not-allowed" => "405",
        "not-acceptable" | "policy-violation" => "406",
        "conflict" => "409",
        "internal-server-error" | "undefined-condition" => "500",
        "feature-not-implemented" => "501",
        "service-unavailable" | "resource-constraint" => "503",
        "remote-server-timeout" => "504",
        _ => return None,
    })
}

/// Whether a stanza must never be answered with an error (RFC 6120 §8.3.1: errors and
/// results are not answered, to avoid loops).
pub fn is_error_or_result(el: &Element) -> bool {
    matches!(el.attr("type"), Some("error") | Some("result"))
}

/// Build the error reply to `stanza` (RFC 6120 §8.3.1): same kind and id, `to`/`from`
/// swapped, type error, the condition with an optional text. `content` is the condition's
/// text content (only `<redirect/>`/`<gone/>` carry one). `legacy` adds the XEP-0086 code.
pub fn error_reply(
    stanza: &Element,
    etype: ErrorType,
    condition: &str,
    content: Option<&str>,
    text: Option<&str>,
    legacy: bool,
) -> Element {
    let mut reply = Element::new(stanza.name.clone(), stanza.ns.clone())
        .with_attr("type", "error")
        .with_opt_attr("id", stanza.attr("id"))
        .with_opt_attr("to", stanza.attr("from"))
        .with_opt_attr("from", stanza.attr("to"));
    let mut err = Element::new("error", stanza.ns.clone());
    if legacy && let Some(code) = legacy_code(condition) {
        err.set_attr("code", code);
    }
    err.set_attr("type", etype.name());
    err = err.with_child(
        Element::new(condition.to_owned(), ns::STANZAS).with_text(content.unwrap_or("")),
    );
    if let Some(t) = text {
        err = err.with_child(
            Element::new("text", ns::STANZAS)
                .with_attr("xml:lang", "en")
                .with_text(t),
        );
    }
    reply = reply.with_child(err);
    reply
}

/// What RFC 6120 §8.1.3 and §8.2.3 make of an IQ's shape, before anyone routes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqShape {
    Valid,
    /// A result or error without `id`: it answers nothing we could find, and errors and results
    /// are never answered (no loops). Dropped.
    Drop,
    /// Answered with `bad-request` (type `modify`) and this text.
    BadRequest(&'static str),
}

/// The shape rules for an IQ: `type` is one of the four (§8.2.3), `id` is there (§8.1.3), a get
/// or set carries exactly one payload element (§8.2.3).
pub fn iq_shape(iq: &Element) -> IqShape {
    let kind = iq.attr("type");
    if !matches!(kind, Some("get" | "set" | "result" | "error")) {
        return IqShape::BadRequest("an IQ's type is get, set, result or error");
    }
    let request = matches!(kind, Some("get" | "set"));
    if iq.attr("id").is_none() {
        return if request {
            IqShape::BadRequest("an IQ needs an id attribute")
        } else {
            IqShape::Drop
        };
    }
    if request && iq.children().count() != 1 {
        return IqShape::BadRequest("a get or set IQ carries exactly one payload element");
    }
    IqShape::Valid
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
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn error_reply_swaps_addresses_rfc6120_8_3_1() {
        let iq = Element::new("iq", ns::CLIENT)
            .with_attr("from", "juliet@im.example.com/balcony")
            .with_attr("to", "im.example.com")
            .with_attr("id", "rg1")
            .with_attr("type", "get");
        let e = error_reply(
            &iq,
            ErrorType::Cancel,
            "service-unavailable",
            None,
            None,
            false,
        );
        let mut s = String::new();
        e.write_to(&mut s, ns::CLIENT);
        assert_eq!(
            s,
            "<iq type='error' id='rg1' to='juliet@im.example.com/balcony' from='im.example.com'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
    }

    fn iq(attrs: &[(&'static str, &str)], payloads: usize) -> Element {
        let mut iq = Element::new("iq", ns::CLIENT);
        for (k, v) in attrs {
            iq.set_attr(*k, *v);
        }
        for _ in 0..payloads {
            iq = iq.with_child(Element::new("ping", ns::PING));
        }
        iq
    }

    #[test]
    fn iq_shapes_rfc6120_8_1_3_and_8_2_3() {
        use IqShape::*;
        let bad = |i: &Element| matches!(iq_shape(i), BadRequest(_));
        assert_eq!(iq_shape(&iq(&[("type", "get"), ("id", "a")], 1)), Valid);
        assert_eq!(iq_shape(&iq(&[("type", "set"), ("id", "")], 1)), Valid);
        // Results and errors may carry nothing, or more than one element (an error and the
        // request's payload).
        assert_eq!(iq_shape(&iq(&[("type", "result"), ("id", "a")], 0)), Valid);
        assert_eq!(iq_shape(&iq(&[("type", "error"), ("id", "a")], 2)), Valid);
        // No id.
        assert!(bad(&iq(&[("type", "get")], 1)));
        assert!(bad(&iq(&[("type", "set")], 1)));
        assert_eq!(iq_shape(&iq(&[("type", "result")], 0)), Drop);
        assert_eq!(iq_shape(&iq(&[("type", "error")], 1)), Drop);
        // Zero or two payloads in a request.
        assert!(bad(&iq(&[("type", "get"), ("id", "a")], 0)));
        assert!(bad(&iq(&[("type", "set"), ("id", "a")], 2)));
        // Text is not a payload.
        let text_only = iq(&[("type", "get"), ("id", "a")], 0).with_text("ping");
        assert!(bad(&text_only));
        // Unknown or missing type, with or without an id.
        assert!(bad(&iq(&[("type", "fetch"), ("id", "a")], 1)));
        assert!(bad(&iq(&[("type", "fetch")], 1)));
        assert!(bad(&iq(&[("id", "a")], 1)));
    }

    #[test]
    fn legacy_redirect_carries_code_302() {
        let iq = Element::new("iq", ns::CLIENT).with_attr("id", "a1");
        let e = error_reply(
            &iq,
            ErrorType::Modify,
            "redirect",
            Some("127.0.0.1:5322"),
            Some("log in at 127.0.0.1:5322"),
            true,
        );
        let err = e.child("error", ns::CLIENT).unwrap();
        assert_eq!(err.attr("code"), Some("302"));
        assert_eq!(err.attr("type"), Some("modify"));
        assert_eq!(
            err.child("redirect", ns::STANZAS).unwrap().text(),
            "127.0.0.1:5322"
        );
    }
}
