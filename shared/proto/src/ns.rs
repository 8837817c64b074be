//! XML namespaces (RFC 6120, RFC 6121, XEPs).

pub const STREAM: &str = "http://etherx.jabber.org/streams";
pub const CLIENT: &str = "jabber:client";
pub const SERVER: &str = "jabber:server";
pub const STREAMS: &str = "urn:ietf:params:xml:ns:xmpp-streams";
pub const STANZAS: &str = "urn:ietf:params:xml:ns:xmpp-stanzas";
pub const TLS: &str = "urn:ietf:params:xml:ns:xmpp-tls";
pub const SASL: &str = "urn:ietf:params:xml:ns:xmpp-sasl";
pub const BIND: &str = "urn:ietf:params:xml:ns:xmpp-bind";
pub const SESSION: &str = "urn:ietf:params:xml:ns:xmpp-session";
pub const IQ_AUTH: &str = "jabber:iq:auth";
pub const IQ_AUTH_FEATURE: &str = "http://jabber.org/features/iq-auth";
pub const PING: &str = "urn:xmpp:ping";
pub const DISCO_INFO: &str = "http://jabber.org/protocol/disco#info";
pub const DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
pub const XML: &str = "http://www.w3.org/XML/1998/namespace";
pub const ROSTER: &str = "jabber:iq:roster";
pub const ROSTER_VER_FEATURE: &str = "urn:xmpp:features:rosterver";
pub const VCARD: &str = "vcard-temp";
pub const DELAY: &str = "urn:xmpp:delay";
pub const SM: &str = "urn:xmpp:sm:3";
pub const MSGOFFLINE: &str = "msgoffline";
pub const VERSION: &str = "jabber:iq:version";
pub const LAST: &str = "jabber:iq:last";
pub const DIALBACK: &str = "jabber:server:dialback";
pub const DIALBACK_FEATURE: &str = "urn:xmpp:features:dialback";
