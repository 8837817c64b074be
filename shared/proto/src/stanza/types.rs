//! Presence and message types (RFC 6121 §4.7.1, §5.2.2).

use crate::xml::Element;

/// A presence stanza's type; no `type` attribute is [`PresenceType::Available`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceType {
    Available,
    Unavailable,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
    Probe,
    Error,
}

impl PresenceType {
    /// `None` for a type RFC 6121 does not define.
    pub fn of(presence: &Element) -> Option<PresenceType> {
        Some(match presence.attr("type") {
            None => PresenceType::Available,
            Some("unavailable") => PresenceType::Unavailable,
            Some("subscribe") => PresenceType::Subscribe,
            Some("subscribed") => PresenceType::Subscribed,
            Some("unsubscribe") => PresenceType::Unsubscribe,
            Some("unsubscribed") => PresenceType::Unsubscribed,
            Some("probe") => PresenceType::Probe,
            Some("error") => PresenceType::Error,
            Some(_) => return None,
        })
    }

    /// The four that manage subscriptions (RFC 6121 §3).
    pub fn is_subscription(self) -> bool {
        matches!(
            self,
            PresenceType::Subscribe
                | PresenceType::Subscribed
                | PresenceType::Unsubscribe
                | PresenceType::Unsubscribed
        )
    }

    /// The `type` attribute's value (`available` for none).
    pub fn name(self) -> &'static str {
        match self {
            PresenceType::Available => "available",
            PresenceType::Unavailable => "unavailable",
            PresenceType::Subscribe => "subscribe",
            PresenceType::Subscribed => "subscribed",
            PresenceType::Unsubscribe => "unsubscribe",
            PresenceType::Unsubscribed => "unsubscribed",
            PresenceType::Probe => "probe",
            PresenceType::Error => "error",
        }
    }
}

/// A message's type; no `type` attribute is [`MessageType::Normal`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageType {
    Normal,
    Chat,
    Groupchat,
    Headline,
    Error,
}

impl MessageType {
    /// No type, and a type RFC 6121 does not define, are `normal` (§5.2.2: "the application
    /// does not understand the value … it MUST consider the message to be of type normal";
    /// Prosody and ejabberd do the same).
    pub fn of(message: &Element) -> MessageType {
        match message.attr("type") {
            Some("chat") => MessageType::Chat,
            Some("groupchat") => MessageType::Groupchat,
            Some("headline") => MessageType::Headline,
            Some("error") => MessageType::Error,
            _ => MessageType::Normal,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns;

    #[test]
    fn no_type_is_available_or_normal() {
        let p = Element::new("presence", ns::CLIENT);
        assert_eq!(PresenceType::of(&p), Some(PresenceType::Available));
        let m = Element::new("message", ns::CLIENT);
        assert_eq!(MessageType::of(&m), MessageType::Normal);
    }

    #[test]
    fn unknown_presence_types_are_none_and_unknown_message_types_normal() {
        let p = Element::new("presence", ns::CLIENT).with_attr("type", "invisible");
        assert_eq!(PresenceType::of(&p), None);
        let m = Element::new("message", ns::CLIENT).with_attr("type", "whisper");
        assert_eq!(MessageType::of(&m), MessageType::Normal);
        for t in ["subscribe", "subscribed", "unsubscribe", "unsubscribed"] {
            let p = Element::new("presence", ns::CLIENT).with_attr("type", t);
            let ty = PresenceType::of(&p).unwrap_or(PresenceType::Error);
            assert!(ty.is_subscription(), "{t}");
            assert_eq!(ty.name(), t);
        }
    }
}
