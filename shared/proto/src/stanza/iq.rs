//! IQs (RFC 6120 §8.2.3): the type and the payload as one value, checked once where a stanza
//! enters, matched by every handler.

use super::error::{ErrorCondition, condition_of};
use crate::ns;
use crate::xml::Element;

/// An IQ's `type` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqType {
    Get,
    Set,
    Result,
    Error,
}

impl IqType {
    pub fn of(iq: &Element) -> Option<IqType> {
        match iq.attr("type")? {
            "get" => Some(IqType::Get),
            "set" => Some(IqType::Set),
            "result" => Some(IqType::Result),
            "error" => Some(IqType::Error),
            _ => None,
        }
    }
}

/// A request's payload, by qualified name: those some node of the farm answers, and the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Payload<'a> {
    /// XEP-0199.
    Ping,
    /// RFC 3921 §3 session establishment, a no-op kept for old clients.
    Session,
    /// XEP-0030, with the `node` asked for.
    DiscoInfo {
        node: Option<&'a str>,
    },
    DiscoItems {
        node: Option<&'a str>,
    },
    /// XEP-0092.
    Version,
    /// XEP-0012.
    Last,
    /// RFC 6121 §2.
    Roster(&'a Element),
    /// XEP-0054.
    VCard(&'a Element),
    /// RFC 6120 §7.
    Bind(&'a Element),
    /// XEP-0078.
    Auth(&'a Element),
    /// Anything else, for the recipient to answer.
    Other(&'a Element),
}

impl<'a> Payload<'a> {
    pub fn of(el: &'a Element) -> Payload<'a> {
        match (&*el.name, &*el.ns) {
            ("ping", ns::PING) => Payload::Ping,
            ("session", ns::SESSION) => Payload::Session,
            ("query", ns::DISCO_INFO) => Payload::DiscoInfo {
                node: el.attr("node"),
            },
            ("query", ns::DISCO_ITEMS) => Payload::DiscoItems {
                node: el.attr("node"),
            },
            ("query", ns::VERSION) => Payload::Version,
            ("query", ns::LAST) => Payload::Last,
            ("query", ns::ROSTER) => Payload::Roster(el),
            ("vCard", ns::VCARD) => Payload::VCard(el),
            ("bind", ns::BIND) => Payload::Bind(el),
            ("query", ns::IQ_AUTH) => Payload::Auth(el),
            _ => Payload::Other(el),
        }
    }
}

/// An IQ that passed RFC 6120 §8.1.3 and §8.2.3: a request with its one payload, or an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Iq<'a> {
    Get(Payload<'a>),
    Set(Payload<'a>),
    /// A result, with its payload if it carries one.
    Result(Option<&'a Element>),
    /// An error, with its condition if it is a defined one.
    Error(Option<ErrorCondition>),
}

/// Why an element is not a valid IQ.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IqError {
    /// A result or error without `id`: it answers nothing we could find, and errors and results
    /// are never answered (no loops). Dropped.
    Drop,
    /// Answered with `bad-request` (type `modify`) and this text.
    BadRequest(&'static str),
}

impl<'a> Iq<'a> {
    /// The shape rules: `type` is one of the four (§8.2.3), `id` is there (§8.1.3), a get or
    /// set carries exactly one payload element (§8.2.3).
    pub fn parse(iq: &'a Element) -> Result<Iq<'a>, IqError> {
        let Some(kind) = IqType::of(iq) else {
            return Err(IqError::BadRequest(
                "an IQ's type is get, set, result or error",
            ));
        };
        let request = matches!(kind, IqType::Get | IqType::Set);
        if iq.attr("id").is_none() {
            return Err(if request {
                IqError::BadRequest("an IQ needs an id attribute")
            } else {
                IqError::Drop
            });
        }
        let mut children = iq.children();
        let first = children.next();
        if request && (first.is_none() || children.next().is_some()) {
            return Err(IqError::BadRequest(
                "a get or set IQ carries exactly one payload element",
            ));
        }
        Ok(match (kind, first) {
            (IqType::Get, Some(p)) => Iq::Get(Payload::of(p)),
            (IqType::Set, Some(p)) => Iq::Set(Payload::of(p)),
            (IqType::Result, p) => Iq::Result(p),
            _ => Iq::Error(condition_of(iq)),
        })
    }

    pub fn is_request(&self) -> bool {
        matches!(self, Iq::Get(_) | Iq::Set(_))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

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
        use IqError::*;
        let shape = |i: &Element| Iq::parse(i).map(|_| ());
        let bad = |i: &Element| matches!(Iq::parse(i), Err(BadRequest(_)));
        assert_eq!(
            Iq::parse(&iq(&[("type", "get"), ("id", "a")], 1)),
            Ok(Iq::Get(Payload::Ping))
        );
        assert_eq!(shape(&iq(&[("type", "set"), ("id", "")], 1)), Ok(()));
        // Results and errors may carry nothing, or more than one element (an error and the
        // request's payload).
        assert_eq!(
            Iq::parse(&iq(&[("type", "result"), ("id", "a")], 0)),
            Ok(Iq::Result(None))
        );
        assert_eq!(
            Iq::parse(&iq(&[("type", "error"), ("id", "a")], 2)),
            Ok(Iq::Error(None))
        );
        // No id.
        assert!(bad(&iq(&[("type", "get")], 1)));
        assert!(bad(&iq(&[("type", "set")], 1)));
        assert_eq!(shape(&iq(&[("type", "result")], 0)), Err(Drop));
        assert_eq!(shape(&iq(&[("type", "error")], 1)), Err(Drop));
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
    fn payloads_by_qualified_name() {
        let q = |name: &'static str, ns: &'static str| Element::new(name, ns);
        let info = q("query", ns::DISCO_INFO).with_attr("node", "n");
        assert_eq!(Payload::of(&info), Payload::DiscoInfo { node: Some("n") });
        let roster = q("query", ns::ROSTER);
        assert_eq!(Payload::of(&roster), Payload::Roster(&roster));
        // The right name in the wrong namespace is someone else's.
        let odd = q("query", "urn:example:other");
        assert_eq!(Payload::of(&odd), Payload::Other(&odd));
        let error = Element::new("iq", ns::CLIENT)
            .with_attr("type", "error")
            .with_attr("id", "e1")
            .with_child(
                Element::new("error", ns::CLIENT)
                    .with_child(Element::new("item-not-found", ns::STANZAS)),
            );
        assert_eq!(
            Iq::parse(&error),
            Ok(Iq::Error(Some(ErrorCondition::ItemNotFound)))
        );
    }
}
