//! Stream errors (RFC 6120 §4.9): the condition, an optional text, serialization.

use super::Element;
use crate::ns;

/// The defined stream error conditions we send (RFC 6120 §4.9.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Condition {
    BadFormat,
    Conflict,
    ConnectionTimeout,
    HostUnknown,
    ImproperAddressing,
    InternalServerError,
    InvalidFrom,
    InvalidNamespace,
    InvalidXml,
    NotAuthorized,
    NotWellFormed,
    PolicyViolation,
    RemoteConnectionFailed,
    Reset,
    ResourceConstraint,
    RestrictedXml,
    SeeOtherHost,
    SystemShutdown,
    UndefinedCondition,
    UnsupportedEncoding,
    UnsupportedStanzaType,
    UnsupportedVersion,
}

impl Condition {
    pub fn name(self) -> &'static str {
        match self {
            Condition::BadFormat => "bad-format",
            Condition::Conflict => "conflict",
            Condition::ConnectionTimeout => "connection-timeout",
            Condition::HostUnknown => "host-unknown",
            Condition::ImproperAddressing => "improper-addressing",
            Condition::InternalServerError => "internal-server-error",
            Condition::InvalidFrom => "invalid-from",
            Condition::InvalidNamespace => "invalid-namespace",
            Condition::InvalidXml => "invalid-xml",
            Condition::NotAuthorized => "not-authorized",
            Condition::NotWellFormed => "not-well-formed",
            Condition::PolicyViolation => "policy-violation",
            Condition::RemoteConnectionFailed => "remote-connection-failed",
            Condition::Reset => "reset",
            Condition::ResourceConstraint => "resource-constraint",
            Condition::RestrictedXml => "restricted-xml",
            Condition::SeeOtherHost => "see-other-host",
            Condition::SystemShutdown => "system-shutdown",
            Condition::UndefinedCondition => "undefined-condition",
            Condition::UnsupportedEncoding => "unsupported-encoding",
            Condition::UnsupportedStanzaType => "unsupported-stanza-type",
            Condition::UnsupportedVersion => "unsupported-version",
        }
    }
}

/// A stream error to send before closing the stream.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("stream error <{}/>{}", .condition.name(), .text.as_deref().map(|t| format!(": {t}")).unwrap_or_default())]
pub struct StreamError {
    pub condition: Condition,
    /// Human-readable explanation (`<text/>`); for see-other-host, the condition's own content
    /// is carried in `other_host`.
    pub text: Option<String>,
    /// `HOST:PORT` for `<see-other-host/>`.
    pub other_host: Option<String>,
}

impl StreamError {
    pub fn new(condition: Condition, text: impl Into<String>) -> Self {
        StreamError {
            condition,
            text: Some(text.into()),
            other_host: None,
        }
    }

    pub fn bare(condition: Condition) -> Self {
        StreamError {
            condition,
            text: None,
            other_host: None,
        }
    }

    /// RFC 6120 §4.9.3.19: the client should reconnect to `host_port`.
    pub fn see_other_host(host_port: impl Into<String>) -> Self {
        StreamError {
            condition: Condition::SeeOtherHost,
            text: None,
            other_host: Some(host_port.into()),
        }
    }

    pub fn to_element(&self) -> Element {
        let cond = Element::new(self.condition.name(), ns::STREAMS)
            .with_text(self.other_host.clone().unwrap_or_default());
        let mut e = Element::new("error", ns::STREAM).with_child(cond);
        if let Some(t) = &self.text {
            e = e.with_child(
                Element::new("text", ns::STREAMS)
                    .with_attr("xml:lang", "en")
                    .with_text(t.clone()),
            );
        }
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn see_other_host_serializes_as_rfc6120_example() {
        // RFC 6120 §4.9.3.19
        let e = StreamError::see_other_host("[2001:db8::ea7:ed]:9090");
        let mut s = String::new();
        e.to_element().write_to(&mut s, ns::CLIENT);
        assert_eq!(
            s,
            "<stream:error><see-other-host xmlns='urn:ietf:params:xml:ns:xmpp-streams'>[2001:db8::ea7:ed]:9090</see-other-host></stream:error>"
        );
    }

    #[test]
    fn text_is_included() {
        let e = StreamError::new(Condition::PolicyViolation, "stanza too large");
        let mut s = String::new();
        e.to_element().write_to(&mut s, ns::CLIENT);
        assert!(s.contains("<policy-violation xmlns='urn:ietf:params:xml:ns:xmpp-streams'/>"));
        assert!(s.contains(">stanza too large</text>"));
    }
}
