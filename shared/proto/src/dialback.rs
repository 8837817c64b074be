//! Server-to-server (RFC 6120, XEP-0220 dialback, XEP-0185 keys) as the farm does it
//! (DESIGN.md D4, D5):
//!
//! - [`dialback_key`]: every node computes the same key from the farm secret, so the master
//!   verifies keys that a slave handed out without any shared per-stream state.
//! - [`rewrite_internal`]: the from-rewrite at the edge: no internal node name leaves the farm.
//! - [`set_stanza_ns`]: `jabber:client` ↔ `jabber:server` when a stanza changes stream kind.
//! - [`domain_of`]: the domain part of a JID string.
//!
//! Resolution and the outbound streams are runtime: `jabberfarm_net::s2s`.

use subtle::ConstantTimeEq;

use crate::scram::{ScramHash, h, hmac};
use crate::xml::{Element, Node, intern};

/// XEP-0185 §3: `HMAC-SHA256(hex(SHA256(secret)), receiving ' ' originating ' ' stream_id)`,
/// hex-encoded.
pub fn dialback_key(secret: &str, receiving: &str, originating: &str, stream_id: &str) -> String {
    let key = hex::encode(h(ScramHash::Sha256, secret.as_bytes()));
    let msg = format!("{receiving} {originating} {stream_id}");
    hex::encode(hmac(ScramHash::Sha256, key.as_bytes(), msg.as_bytes()))
}

/// Compare a presented key with the expected one in constant time.
pub fn key_matches(given: &str, expected: &str) -> bool {
    given.len() == expected.len() && bool::from(given.as_bytes().ct_eq(expected.as_bytes()))
}

/// DESIGN.md D5: any address whose domain is an internal node name becomes the public domain,
/// in `from`, `to` and in payloads that echo an address (`jid`, `from`, `to` attributes of
/// nested elements, such as a bounce's original stanza). `internal` tells whether a domain is
/// one of the farm's node names (the topology's `is_node`).
pub fn rewrite_internal(el: &mut Element, internal: &dyn Fn(&str) -> bool, public: &str) {
    for (k, v) in el.attrs.iter_mut() {
        if matches!(&**k, "from" | "to" | "jid")
            && let Some(new) = rewrite_address(v, internal, public)
        {
            *v = new;
        }
    }
    for n in el.children.iter_mut() {
        if let Node::Element(c) = n {
            rewrite_internal(c, internal, public);
        }
    }
}

fn rewrite_address(addr: &str, internal: &dyn Fn(&str) -> bool, public: &str) -> Option<String> {
    let (local, rest) = match addr.split_once('@') {
        Some((l, r)) => (Some(l), r),
        None => (None, addr),
    };
    let (domain, resource) = match rest.split_once('/') {
        Some((d, r)) => (d, Some(r)),
        None => (rest, None),
    };
    if !internal(domain) {
        return None;
    }
    let mut out = String::with_capacity(addr.len() + public.len());
    if let Some(l) = local {
        out.push_str(l);
        out.push('@');
    }
    out.push_str(public);
    if let Some(r) = resource {
        out.push('/');
        out.push_str(r);
    }
    Some(out)
}

/// Move a stanza and everything inside it that shares its stream namespace from `from_ns` to
/// `to_ns` (a `jabber:client` stanza going out on a `jabber:server` stream and back).
pub fn set_stanza_ns(el: &mut Element, from_ns: &str, to_ns: &str) {
    if el.ns == from_ns {
        el.ns = intern(to_ns);
        for n in el.children.iter_mut() {
            if let Node::Element(c) = n {
                set_stanza_ns(c, from_ns, to_ns);
            }
        }
    }
}

/// The domain part of a JID string.
pub fn domain_of(jid: &str) -> &str {
    let rest = jid.split_once('@').map_or(jid, |(_, r)| r);
    rest.split_once('/').map_or(rest, |(d, _)| d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ns;

    #[test]
    fn xep0185_key() {
        // XEP-0185's inputs; the value was computed independently with Python's hashlib/hmac:
        // hmac.new(sha256(secret).hexdigest().encode(), b"example.net example.com D60000229F",
        //          sha256).hexdigest()
        assert_eq!(
            dialback_key(
                "s3cr3tf0rd14lb4ck",
                "example.net",
                "example.com",
                "D60000229F"
            ),
            "008c689ff366b50c63d69a3e2d2c0e0e1f8404b0118eb688a0102c87cb691bdc"
        );
        // Receiving and originating are not interchangeable.
        assert_ne!(
            dialback_key("s", "a", "b", "id"),
            dialback_key("s", "b", "a", "id")
        );
        assert!(key_matches("ab", "ab"));
        assert!(!key_matches("ab", "ac"));
        assert!(!key_matches("ab", "abc"));
    }

    #[test]
    fn internal_names_never_leave() {
        let is_internal = |d: &str| {
            ["slave1", "master"]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(d))
        };
        let mut bounce = Element::new("message", ns::SERVER)
            .with_attr("from", "alice@slave1/phone")
            .with_attr("to", "bob@remote.test")
            .with_attr("type", "error")
            .with_child(
                Element::new("forwarded", "urn:xmpp:forward:0").with_child(
                    Element::new("message", ns::SERVER)
                        .with_attr("from", "slave1")
                        .with_attr("to", "carol@MASTER"),
                ),
            )
            .with_child(Element::new("item", "x").with_attr("jid", "dave@slave1"));
        rewrite_internal(&mut bounce, &is_internal, "example.net");
        let xml = bounce.to_xml();
        assert!(
            !xml.contains("slave1") && !xml.to_lowercase().contains("@master"),
            "{xml}"
        );
        assert_eq!(bounce.attr("from"), Some("alice@example.net/phone"));
        assert_eq!(bounce.attr("to"), Some("bob@remote.test"));
        assert!(xml.contains("from='example.net'") && xml.contains("to='carol@example.net'"));
        assert!(xml.contains("jid='dave@example.net'"));
        // Other domains and the public one are untouched.
        let mut m = Element::new("message", ns::SERVER).with_attr("from", "x@slave10.example");
        rewrite_internal(&mut m, &is_internal, "example.net");
        assert_eq!(m.attr("from"), Some("x@slave10.example"));
    }

    #[test]
    fn namespace_moves_with_the_stanza() {
        let mut m = Element::new("message", ns::CLIENT)
            .with_child(Element::new("body", ns::CLIENT).with_text("hi"))
            .with_child(Element::new("delay", ns::DELAY));
        set_stanza_ns(&mut m, ns::CLIENT, ns::SERVER);
        let mut s = String::new();
        m.write_to(&mut s, ns::SERVER);
        assert_eq!(
            s,
            "<message><body>hi</body><delay xmlns='urn:xmpp:delay'/></message>"
        );
        assert_eq!(domain_of("a@b.c/d@e"), "b.c");
        assert_eq!(domain_of("b.c"), "b.c");
    }

    #[test]
    fn dialback_elements_use_the_db_prefix() {
        let r = Element::new("result", ns::DIALBACK)
            .with_attr("from", "example.net")
            .with_attr("to", "remote.test")
            .with_text("abc");
        let mut s = String::new();
        r.write_to(&mut s, ns::SERVER);
        assert_eq!(
            s,
            "<db:result from='example.net' to='remote.test'>abc</db:result>"
        );
    }
}
