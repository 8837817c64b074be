//! Stanza errors (RFC 6120 §8.3): the type, the defined condition, and the reply built from
//! them.

use crate::ns;
use crate::xml::Element;

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

macro_rules! conditions {
    ($($variant:ident => $name:literal, $etype:ident, $code:literal;)*) => {
        /// The defined stanza error conditions (RFC 6120 §8.3.3).
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum ErrorCondition {
            $($variant,)*
        }

        impl ErrorCondition {
            /// Every condition, in RFC order.
            pub const ALL: &'static [ErrorCondition] = &[$(ErrorCondition::$variant,)*];

            /// The element name, e.g. `service-unavailable`.
            pub fn name(self) -> &'static str {
                match self {
                    $(ErrorCondition::$variant => $name,)*
                }
            }

            /// The condition named `name`, if it is a defined one.
            pub fn parse(name: &str) -> Option<ErrorCondition> {
                match name {
                    $($name => Some(ErrorCondition::$variant),)*
                    _ => None,
                }
            }

            /// The type RFC 6120 §8.3.3 gives the condition in its examples.
            pub fn default_type(self) -> ErrorType {
                match self {
                    $(ErrorCondition::$variant => ErrorType::$etype,)*
                }
            }

            /// The XEP-0086 legacy code, for old clients (iq:auth).
            pub fn legacy_code(self) -> &'static str {
                match self {
                    $(ErrorCondition::$variant => $code,)*
                }
            }
        }
    };
}

conditions! {
    BadRequest => "bad-request", Modify, "400";
    Conflict => "conflict", Cancel, "409";
    FeatureNotImplemented => "feature-not-implemented", Cancel, "501";
    Forbidden => "forbidden", Auth, "403";
    Gone => "gone", Cancel, "302";
    InternalServerError => "internal-server-error", Cancel, "500";
    ItemNotFound => "item-not-found", Cancel, "404";
    JidMalformed => "jid-malformed", Modify, "400";
    NotAcceptable => "not-acceptable", Modify, "406";
    NotAllowed => "not-allowed", Cancel, "405";
    NotAuthorized => "not-authorized", Auth, "401";
    PolicyViolation => "policy-violation", Modify, "406";
    RecipientUnavailable => "recipient-unavailable", Wait, "404";
    Redirect => "redirect", Modify, "302";
    RegistrationRequired => "registration-required", Auth, "407";
    RemoteServerNotFound => "remote-server-not-found", Cancel, "404";
    RemoteServerTimeout => "remote-server-timeout", Wait, "504";
    ResourceConstraint => "resource-constraint", Wait, "500";
    ServiceUnavailable => "service-unavailable", Cancel, "503";
    SubscriptionRequired => "subscription-required", Auth, "407";
    UndefinedCondition => "undefined-condition", Cancel, "500";
    UnexpectedRequest => "unexpected-request", Wait, "400";
}

/// A stanza error to send: built from a condition (with the type RFC 6120 gives it unless
/// [`StanzaError::typed`] says otherwise), then turned into the reply to a stanza.
///
/// ```
/// # use jabberfarm_proto::stanza::{ErrorCondition, StanzaError};
/// # use jabberfarm_proto::{ns, xml::Element};
/// let ping = Element::new("iq", ns::CLIENT).with_attr("type", "get").with_attr("id", "p1");
/// let reply = StanzaError::new(ErrorCondition::ServiceUnavailable).answer(&ping).unwrap();
/// assert_eq!(reply.attr("type"), Some("error"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StanzaError<'a> {
    pub etype: ErrorType,
    pub condition: ErrorCondition,
    /// The condition element's text content (only `<redirect/>` and `<gone/>` carry one).
    pub content: Option<&'a str>,
    /// The human-readable `<text/>`.
    pub text: Option<&'a str>,
    /// Add the XEP-0086 `code` attribute (iq:auth clients).
    pub legacy: bool,
}

impl<'a> StanzaError<'a> {
    pub fn new(condition: ErrorCondition) -> Self {
        StanzaError {
            etype: condition.default_type(),
            condition,
            content: None,
            text: None,
            legacy: false,
        }
    }

    /// For a stanza whose recipient's server (a farm node, or the slave a master relays to)
    /// cannot be reached now: `service-unavailable`, type `wait`.
    pub fn server_unreachable() -> Self {
        StanzaError::new(ErrorCondition::ServiceUnavailable)
            .typed(ErrorType::Wait)
            .text("the recipient's server is not reachable")
    }

    /// The same error with another type than the condition's usual one.
    pub fn typed(mut self, etype: ErrorType) -> Self {
        self.etype = etype;
        self
    }

    pub fn text(mut self, text: &'a str) -> Self {
        self.text = Some(text);
        self
    }

    pub fn content(mut self, content: &'a str) -> Self {
        self.content = Some(content);
        self
    }

    pub fn legacy(mut self) -> Self {
        self.legacy = true;
        self
    }

    /// The error reply to `stanza` (RFC 6120 §8.3.1): same kind and id, `to`/`from` swapped,
    /// type error, the condition with its optional text.
    pub fn reply_to(&self, stanza: &Element) -> Element {
        let mut err = Element::new("error", stanza.ns.clone());
        if self.legacy {
            err.set_attr("code", self.condition.legacy_code());
        }
        err.set_attr("type", self.etype.name());
        err = err.with_child(
            Element::new(self.condition.name(), ns::STANZAS).with_text(self.content.unwrap_or("")),
        );
        if let Some(t) = self.text {
            err = err.with_child(
                Element::new("text", ns::STANZAS)
                    .with_attr("xml:lang", "en")
                    .with_text(t),
            );
        }
        Element::new(stanza.name.clone(), stanza.ns.clone())
            .with_attr("type", "error")
            .with_opt_attr("id", stanza.attr("id"))
            .with_opt_attr("to", stanza.attr("from"))
            .with_opt_attr("from", stanza.attr("to"))
            .with_child(err)
    }

    /// The reply to `stanza`, unless it is itself an error or a result: those are never
    /// answered (RFC 6120 §8.3.1, no loops).
    pub fn answer(&self, stanza: &Element) -> Option<Element> {
        (!super::is_error_or_result(stanza)).then(|| self.reply_to(stanza))
    }
}

/// The condition of an error stanza, when it is a defined one.
pub fn condition_of(error_stanza: &Element) -> Option<ErrorCondition> {
    let err = error_stanza.child("error", &error_stanza.ns)?;
    err.children()
        .filter(|c| c.ns == ns::STANZAS)
        .find_map(|c| ErrorCondition::parse(&c.name))
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
        let e = StanzaError::new(ErrorCondition::ServiceUnavailable).reply_to(&iq);
        let mut s = String::new();
        e.write_to(&mut s, ns::CLIENT);
        assert_eq!(
            s,
            "<iq type='error' id='rg1' to='juliet@im.example.com/balcony' from='im.example.com'><error type='cancel'><service-unavailable xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></error></iq>"
        );
        assert_eq!(condition_of(&e), Some(ErrorCondition::ServiceUnavailable));
    }

    #[test]
    fn legacy_redirect_carries_code_302() {
        let iq = Element::new("iq", ns::CLIENT).with_attr("id", "a1");
        let e = StanzaError::new(ErrorCondition::Redirect)
            .content("127.0.0.1:5322")
            .text("log in at 127.0.0.1:5322")
            .legacy()
            .reply_to(&iq);
        let err = e.child("error", ns::CLIENT).unwrap();
        assert_eq!(err.attr("code"), Some("302"));
        assert_eq!(err.attr("type"), Some("modify"));
        assert_eq!(
            err.child("redirect", ns::STANZAS).unwrap().text(),
            "127.0.0.1:5322"
        );
    }

    #[test]
    fn errors_and_results_are_never_answered() {
        let e = StanzaError::new(ErrorCondition::BadRequest);
        for t in ["error", "result"] {
            let iq = Element::new("iq", ns::CLIENT).with_attr("type", t);
            assert_eq!(e.answer(&iq), None);
        }
        let msg = Element::new("message", ns::CLIENT).with_attr("type", "chat");
        assert_eq!(e.answer(&msg).unwrap().attr("type"), Some("error"));
    }

    #[test]
    fn every_condition_round_trips_by_name() {
        assert_eq!(ErrorCondition::ALL.len(), 22);
        for c in ErrorCondition::ALL {
            assert_eq!(ErrorCondition::parse(c.name()), Some(*c));
        }
        assert_eq!(ErrorCondition::parse("no-such-condition"), None);
    }
}
