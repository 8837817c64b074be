//! A small element tree for stanzas: name, namespace, attributes, children.
//!
//! Attributes without a namespace are keyed by their local name; `xml:lang` and friends by
//! `xml:NAME`; attributes in any other namespace in Clark notation, `{NS}NAME`.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::ns;

/// Element and attribute names and namespaces: the usual ones are static strings, so parsing
/// or cloning a stanza allocates only for its values and its unusual names.
pub type Name = Cow<'static, str>;

/// Names and namespaces a stanza carries most: [`intern`] returns the static copy.
const COMMON: &[&str] = &[
    ns::CLIENT,
    ns::SERVER,
    ns::STREAM,
    ns::STREAMS,
    ns::STANZAS,
    ns::SASL,
    ns::BIND,
    ns::SESSION,
    ns::PING,
    ns::ROSTER,
    ns::DELAY,
    ns::DIALBACK,
    ns::DISCO_INFO,
    ns::DISCO_ITEMS,
    ns::VCARD,
    "http://jabber.org/protocol/chatstates",
    "urn:xmpp:receipts",
    "message",
    "presence",
    "iq",
    "body",
    "subject",
    "thread",
    "show",
    "status",
    "priority",
    "error",
    "query",
    "item",
    "group",
    "ping",
    "delay",
    "active",
    "composing",
    "paused",
    "request",
    "received",
    "to",
    "from",
    "type",
    "id",
    "xml:lang",
    "jid",
    "name",
    "subscription",
    "ask",
    "stamp",
    "ver",
];

/// `s` as a [`Name`]: the static copy when it is a usual name, else an owned one.
pub fn intern(s: &str) -> Name {
    match COMMON.iter().find(|c| **c == s) {
        Some(c) => Cow::Borrowed(c),
        None => Cow::Owned(s.to_owned()),
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    Element(Element),
    Text(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Element {
    pub name: Name,
    pub ns: Name,
    pub attrs: Vec<(Name, String)>,
    pub children: Vec<Node>,
}

impl Element {
    pub fn new(name: impl Into<Name>, ns: impl Into<Name>) -> Self {
        Element {
            name: name.into(),
            ns: ns.into(),
            attrs: Vec::new(),
            children: Vec::new(),
        }
    }

    /// Builder: add an attribute.
    pub fn with_attr(mut self, name: impl Into<Name>, value: impl Into<String>) -> Self {
        self.set_attr(name, value);
        self
    }

    /// Builder: add an attribute when the value is present.
    pub fn with_opt_attr(self, name: &'static str, value: Option<impl Into<String>>) -> Self {
        match value {
            Some(v) => self.with_attr(name, v),
            None => self,
        }
    }

    /// Builder: append a child element.
    pub fn with_child(mut self, child: Element) -> Self {
        self.children.push(Node::Element(child));
        self
    }

    /// Builder: append text.
    pub fn with_text(mut self, text: impl Into<String>) -> Self {
        let text = text.into();
        if !text.is_empty() {
            self.children.push(Node::Text(text));
        }
        self
    }

    pub fn is(&self, name: &str, ns: &str) -> bool {
        self.name == name && self.ns == ns
    }

    pub fn attr(&self, name: &str) -> Option<&str> {
        self.attrs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn set_attr(&mut self, name: impl Into<Name>, value: impl Into<String>) {
        let name = name.into();
        let value = value.into();
        match self.attrs.iter_mut().find(|(k, _)| *k == name) {
            Some(slot) => slot.1 = value,
            None => self.attrs.push((name, value)),
        }
    }

    pub fn remove_attr(&mut self, name: &str) -> Option<String> {
        let pos = self.attrs.iter().position(|(k, _)| k == name)?;
        Some(self.attrs.remove(pos).1)
    }

    /// Child elements, in document order.
    pub fn children(&self) -> impl Iterator<Item = &Element> {
        self.children.iter().filter_map(|n| match n {
            Node::Element(e) => Some(e),
            Node::Text(_) => None,
        })
    }

    pub fn child(&self, name: &str, ns: &str) -> Option<&Element> {
        self.children().find(|e| e.is(name, ns))
    }

    /// The first child element, if any (the payload of an IQ).
    pub fn first_child(&self) -> Option<&Element> {
        self.children().next()
    }

    /// Concatenated direct text content.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for n in &self.children {
            if let Node::Text(t) = n {
                out.push_str(t);
            }
        }
        out
    }

    /// Serialize into `out`. `parent_ns` is the default namespace in scope, so a stanza in the
    /// stream's own namespace carries no `xmlns`. Elements in the streams namespace use the
    /// `stream:` prefix the stream header declares.
    pub fn write_to(&self, out: &mut String, parent_ns: &str) {
        self.write_node(out, parent_ns, true);
    }

    fn write_node(&self, out: &mut String, parent_ns: &str, top: bool) {
        // Namespaces written with a prefix: `stream:` (every stream header and the farm
        // links' implicit one declare it, RFC 6120 §4.8.5); `db:` for a top-level dialback
        // element on a server stream, whose header declares it (XEP-0220) — deeper down, in a
        // stanza that may travel over a farm link or to a client, a dialback element gets a
        // default namespace like any other; and `xml:`, bound everywhere and never to be
        // declared as a default namespace (Namespaces in XML §3).
        let prefix = match &*self.ns {
            ns::STREAM => Some("stream:"),
            ns::DIALBACK if top && parent_ns == ns::SERVER => Some("db:"),
            ns::XML => Some("xml:"),
            _ => None,
        };
        let stream_prefixed = prefix.is_some();
        out.push('<');
        if let Some(p) = prefix {
            out.push_str(p);
        }
        out.push_str(&self.name);
        let inner_ns = if stream_prefixed {
            parent_ns
        } else {
            if self.ns != parent_ns {
                out.push_str(" xmlns='");
                escape_attr_into(out, &self.ns);
                out.push('\'');
            }
            &self.ns
        };
        let mut extra_prefix = 0;
        for (k, v) in &self.attrs {
            out.push(' ');
            if let Some(rest) = k.strip_prefix('{') {
                // Clark notation: declare a prefix for this attribute's namespace. The name
                // is after the last brace: a namespace URI may hold `}`, a name may not.
                let (ans, local) = rest.rsplit_once('}').unwrap_or(("", rest));
                extra_prefix += 1;
                let _ = write!(out, "xmlns:a{extra_prefix}='");
                escape_attr_into(out, ans);
                let _ = write!(out, "' a{extra_prefix}:{local}='");
            } else {
                out.push_str(k);
                out.push_str("='");
            }
            escape_attr_into(out, v);
            out.push('\'');
        }
        if self.children.is_empty() {
            out.push_str("/>");
            return;
        }
        out.push('>');
        for n in &self.children {
            match n {
                Node::Element(e) => e.write_node(out, inner_ns, false),
                Node::Text(t) => escape_text_into(out, t),
            }
        }
        out.push_str("</");
        if let Some(p) = prefix {
            out.push_str(p);
        }
        out.push_str(&self.name);
        out.push('>');
    }

    /// Serialize as a standalone document fragment (its namespace declared).
    pub fn to_xml(&self) -> String {
        let mut s = String::new();
        self.write_to(&mut s, "");
        s
    }

    /// Rough heap footprint, for queue accounting.
    pub fn weight(&self) -> usize {
        let mut w = self.name.len() + self.ns.len() + 32;
        for (k, v) in &self.attrs {
            w += k.len() + v.len() + 16;
        }
        for n in &self.children {
            w += match n {
                Node::Element(e) => e.weight(),
                Node::Text(t) => t.len() + 8,
            };
        }
        w
    }
}

/// Escape text for use in character data or a single-quoted attribute value. Whitespace is
/// left as it is: [`escape_attr_into`] and [`escape_text_into`] keep what a reader would change.
pub fn escape_into(out: &mut String, s: &str) {
    escape_with(out, s, |_| None);
}

/// Escape an attribute value so that it reads back the same: tab, newline and carriage
/// return as character references, which a reader's attribute-value normalization would
/// otherwise turn into spaces (XML 1.0 §3.3.3).
pub fn escape_attr_into(out: &mut String, s: &str) {
    escape_with(out, s, |b| match b {
        b'\t' => Some("&#9;"),
        b'\n' => Some("&#10;"),
        b'\r' => Some("&#13;"),
        _ => None,
    });
}

/// Escape character data so that it reads back the same: a carriage return as a character
/// reference, which a reader's end-of-line handling would otherwise turn into a newline
/// (XML 1.0 §2.11).
pub fn escape_text_into(out: &mut String, s: &str) {
    escape_with(out, s, |b| (b == b'\r').then_some("&#13;"));
}

fn escape_with(out: &mut String, s: &str, more: impl Fn(u8) -> Option<&'static str>) {
    let mut last = 0;
    for (i, b) in s.bytes().enumerate() {
        let rep = match b {
            b'<' => "&lt;",
            b'>' => "&gt;",
            b'&' => "&amp;",
            b'\'' => "&apos;",
            b'"' => "&quot;",
            _ => match more(b) {
                Some(r) => r,
                None => continue,
            },
        };
        out.push_str(&s[last..i]);
        out.push_str(rep);
        last = i + 1;
    }
    out.push_str(&s[last..]);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// What a peer sent, read as a stanza, written for the next hop and read there again:
    /// the same element (the fuzzer's round-trip property, `docs/fuzzing.md`).
    fn hop(xml: &str, stream_ns: &str) -> (Element, Element) {
        let first = crate::xml::parse_element(xml, stream_ns).unwrap();
        let mut written = String::new();
        first.write_to(&mut written, stream_ns);
        let again = crate::xml::parse_element(&written, stream_ns)
            .unwrap_or_else(|e| panic!("{written}: {e}"));
        (first, again)
    }

    #[test]
    fn what_the_fuzzer_found_reads_back_the_same_on_the_next_hop() {
        for (xml, stream_ns) in [
            // F1: a dialback element inside a stanza, on a link (no `db:` declared there).
            (
                "<message to='a@localhost'><y xmlns='jabber:server:dialback'/></message>",
                ns::SERVER,
            ),
            (
                "<message to='b@localhost'><x xmlns='jabber:server'><y xmlns='jabber:server:dialback'/></x></message>",
                ns::CLIENT,
            ),
            // F2: an attribute namespace holding a brace.
            (
                "<message to='b@localhost' xmlns:x='urn:a}b' x:y='v'/>",
                ns::CLIENT,
            ),
            // F3: an element in the xml: namespace.
            ("<message to='b@localhost'><xml:x/></message>", ns::CLIENT),
            ("<xml:a/>", ns::SERVER),
            // F4: whitespace as character references in attributes, namespaces (attribute
            // values too), a carriage return in text.
            (
                "<message to='b@localhost'><x xmlns='urn:a&#9;b' xmlns:p='urn:c&#10;d' p:q='r'/></message>",
                ns::CLIENT,
            ),
            (
                "<message id='a&#9;b&#10;c&#13;d'><body>a&#13;b&#9;c</body></message>",
                ns::CLIENT,
            ),
        ] {
            let (first, again) = hop(xml, stream_ns);
            assert_eq!(first, again, "{xml}");
        }
        let (f4, _) = hop("<m id='a&#9;b'><body>x&#13;y</body></m>", ns::CLIENT);
        assert_eq!(f4.attr("id"), Some("a\tb"));
        assert_eq!(
            f4.child("body", ns::CLIENT).map(|b| b.text()).as_deref(),
            Some("x\ry")
        );
    }

    #[test]
    fn serializes_with_inherited_namespace() {
        let e = Element::new("message", ns::CLIENT)
            .with_attr("to", "juliet@example.com")
            .with_attr("type", "chat")
            .with_child(Element::new("body", ns::CLIENT).with_text("Art thou <there>? & 'so'"));
        assert_eq!(
            {
                let mut s = String::new();
                e.write_to(&mut s, ns::CLIENT);
                s
            },
            "<message to='juliet@example.com' type='chat'><body>Art thou &lt;there&gt;? &amp; &apos;so&apos;</body></message>"
        );
        assert_eq!(
            Element::new("ping", ns::PING).to_xml(),
            "<ping xmlns='urn:xmpp:ping'/>"
        );
    }

    #[test]
    fn stream_namespace_uses_prefix() {
        let f = Element::new("features", ns::STREAM).with_child(Element::new("starttls", ns::TLS));
        let mut s = String::new();
        f.write_to(&mut s, ns::CLIENT);
        assert_eq!(
            s,
            "<stream:features><starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/></stream:features>"
        );
    }

    #[test]
    fn attribute_helpers() {
        let mut e = Element::new("iq", ns::CLIENT).with_attr("id", "1");
        e.set_attr("id", "2");
        e.set_attr("type", "get");
        assert_eq!(e.attr("id"), Some("2"));
        assert_eq!(e.remove_attr("type").as_deref(), Some("get"));
        assert_eq!(e.attr("type"), None);
    }
}
