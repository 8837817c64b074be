//! Incremental parser for an unending `<stream:stream>`: bytes in, one top-level element at a
//! time out (RFC 6120 §4). Sans-IO: feed it whatever the socket gave.
//!
//! Restricted XML (RFC 6120 §11) is enforced by rxml; we map its errors to the stream error
//! RFC 6120 prescribes and add our own bounds: the size of one top-level element and the depth
//! of nesting, both configurable and tighter before authentication.

use rxml::error::EndOrError;
use rxml::{Event, Parse, Parser, WithOptions};

use super::stream_error::{Condition, StreamError};
use super::{Element, Node, intern};
use crate::ns;

/// Bounds for one stream (RFC 6120 §13.12: a server may limit stanza size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParserLimits {
    /// Largest top-level element, in bytes of input.
    pub max_stanza: usize,
    /// Deepest nesting inside a top-level element (the stanza itself is depth 1).
    pub max_depth: usize,
}

impl ParserLimits {
    pub const PRE_AUTH: ParserLimits = ParserLimits {
        max_stanza: 10 * 1024,
        max_depth: 32,
    };
    pub const POST_AUTH: ParserLimits = ParserLimits {
        max_stanza: 256 * 1024,
        max_depth: 64,
    };
}

/// The attributes of the peer's stream header (RFC 6120 §4.7).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamHeader {
    pub to: Option<String>,
    pub from: Option<String>,
    pub id: Option<String>,
    pub version: Option<String>,
    pub lang: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamEvent {
    /// The peer opened (or, after a restart, re-opened) the stream.
    Open(StreamHeader),
    /// One complete top-level element: a stanza or a negotiation element.
    Element(Element),
    /// The peer sent `</stream:stream>`.
    Close,
}

pub struct StreamParser {
    inner: Parser,
    limits: ParserLimits,
    /// Elements under construction; `stack[0]` is the top-level element.
    stack: Vec<Element>,
    /// Bytes of input consumed by the current top-level element.
    size: usize,
    opened: bool,
    failed: bool,
    /// Something other than whitespace arrived: the document has begun.
    begun: bool,
}

impl StreamParser {
    pub fn new(limits: ParserLimits) -> Self {
        // A single token (a name, an attribute value) can never exceed the stanza limit.
        let opts = rxml::Options {
            max_token_length: limits.max_stanza.max(64),
            ..Default::default()
        };
        StreamParser {
            inner: Parser::with_options(opts),
            limits,
            stack: Vec::new(),
            size: 0,
            opened: false,
            failed: false,
            begun: false,
        }
    }

    /// Change the bounds in the middle of a stream (the token length set at creation stays).
    pub fn set_limits(&mut self, limits: ParserLimits) {
        self.limits = limits;
    }

    /// Free the lexer's token buffers (rxml reserves `max_token_length` bytes for each, and
    /// keeps them): for a stream that waits for input, which an idle session does for hours.
    pub fn release_buffers(&mut self) {
        self.inner.release_temporaries();
    }

    pub fn limits(&self) -> ParserLimits {
        self.limits
    }

    /// Parse from `buf`, consuming what was used. `Ok(None)` means all of `buf` was taken and
    /// more input is needed; call again with the rest of `buf` after an event.
    pub fn parse(&mut self, buf: &mut &[u8]) -> Result<Option<StreamEvent>, StreamError> {
        if self.failed {
            return Err(StreamError::bare(Condition::NotWellFormed));
        }
        if !self.begun {
            // Whitespace before the header is what followed the previous stream's last
            // element (a restart after STARTTLS or SASL; go-sendxmpp writes a newline after
            // each element): RFC 6120 allows it between elements, XML not before the
            // declaration, so it is skipped here.
            let ws = buf
                .iter()
                .take_while(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
                .count();
            *buf = &buf[ws..];
            if buf.is_empty() {
                return Ok(None);
            }
            self.begun = true;
        }
        let r = self.parse_inner(buf);
        if r.is_err() {
            self.failed = true;
            self.stack.clear();
        }
        r
    }

    fn parse_inner(&mut self, buf: &mut &[u8]) -> Result<Option<StreamEvent>, StreamError> {
        loop {
            let ev = match self.inner.parse(buf, false) {
                Ok(Some(ev)) => ev,
                // The parser saw the end of the document: the stream element closed.
                Ok(None) => return Ok(Some(StreamEvent::Close)),
                Err(EndOrError::NeedMoreData) => return Ok(None),
                Err(EndOrError::Error(e)) => return Err(map_rxml_error(&e)),
            };
            if let Some(out) = self.handle(ev)? {
                return Ok(Some(out));
            }
        }
    }

    fn handle(&mut self, ev: Event) -> Result<Option<StreamEvent>, StreamError> {
        match ev {
            Event::XmlDeclaration(..) => Ok(None),
            Event::StartElement(m, (qns, name), attrs) => {
                if !self.opened {
                    if qns.as_str() != ns::STREAM || name.as_str() != "stream" {
                        return Err(StreamError::new(
                            Condition::InvalidNamespace,
                            "expected <stream:stream xmlns:stream='http://etherx.jabber.org/streams'>",
                        ));
                    }
                    self.opened = true;
                    let mut h = StreamHeader::default();
                    for ((ans, aname), value) in attrs.into_iter() {
                        let slot = match (ans.as_str(), aname.as_str()) {
                            ("", "to") => &mut h.to,
                            ("", "from") => &mut h.from,
                            ("", "id") => &mut h.id,
                            ("", "version") => &mut h.version,
                            (ns::XML, "lang") => &mut h.lang,
                            _ => continue,
                        };
                        *slot = Some(value);
                    }
                    return Ok(Some(StreamEvent::Open(h)));
                }
                if self.stack.is_empty() {
                    self.size = 0;
                }
                self.account(m.len())?;
                if self.stack.len() >= self.limits.max_depth {
                    return Err(StreamError::new(
                        Condition::PolicyViolation,
                        format!("elements nested deeper than {}", self.limits.max_depth),
                    ));
                }
                let mut el = Element::new(intern(name.as_str()), intern(qns.as_str()));
                el.attrs.reserve_exact(attrs.len());
                for ((ans, aname), value) in attrs.into_iter() {
                    let key = match ans.as_str() {
                        "" => intern(aname.as_str()),
                        ns::XML => intern(&format!("xml:{}", aname.as_str())),
                        other => format!("{{{other}}}{}", aname.as_str()).into(),
                    };
                    el.attrs.push((key, value));
                }
                self.stack.push(el);
                Ok(None)
            }
            Event::Text(m, text) => {
                if self.stack.is_empty() {
                    // Between stanzas only whitespace (keepalives) is meaningful.
                    if text.chars().all(|c| c.is_ascii_whitespace()) {
                        return Ok(None);
                    }
                    return Err(StreamError::new(
                        Condition::BadFormat,
                        "text outside of a stanza",
                    ));
                }
                self.account(m.len())?;
                if let Some(top) = self.stack.last_mut() {
                    match top.children.last_mut() {
                        Some(Node::Text(t)) => t.push_str(&text),
                        _ => top.children.push(Node::Text(text)),
                    }
                }
                Ok(None)
            }
            Event::EndElement(m) => {
                let Some(el) = self.stack.pop() else {
                    // The stream element itself closed.
                    return Ok(Some(StreamEvent::Close));
                };
                self.account(m.len())?;
                match self.stack.last_mut() {
                    Some(parent) => {
                        parent.children.push(Node::Element(el));
                        Ok(None)
                    }
                    None => Ok(Some(StreamEvent::Element(el))),
                }
            }
        }
    }

    fn account(&mut self, n: usize) -> Result<(), StreamError> {
        self.size += n;
        if self.size > self.limits.max_stanza {
            return Err(StreamError::new(
                Condition::PolicyViolation,
                format!("stanza larger than {} bytes", self.limits.max_stanza),
            ));
        }
        Ok(())
    }
}

/// RFC 6120 §11: which stream error a violation of the XML rules gets.
fn map_rxml_error(e: &rxml::Error) -> StreamError {
    use rxml::Error as E;
    let (condition, text) = match e {
        E::RestrictedXml("event too long") | E::RestrictedXml("long name or reference") => (
            Condition::PolicyViolation,
            "name, attribute value or text too long".to_owned(),
        ),
        E::RestrictedXml("only XML version 1.0 is allowed") => (
            Condition::UnsupportedVersion,
            "only XML 1.0 is supported (RFC 6120 §11.5)".to_owned(),
        ),
        E::RestrictedXml(what) => (
            Condition::RestrictedXml,
            format!("{what} are not allowed in XMPP (RFC 6120 §11.1)"),
        ),
        E::UndeclaredEntity => (
            Condition::RestrictedXml,
            "only the five predefined entities may be used (RFC 6120 §11.1)".to_owned(),
        ),
        E::InvalidUtf8Byte(_) => (
            Condition::UnsupportedEncoding,
            "the stream is not valid UTF-8 (RFC 6120 §11.6)".to_owned(),
        ),
        // `<!DOCTYPE` / `<!ENTITY`: a DTD (RFC 6120 §11.1); rxml knows only `<![CDATA[` and
        // `<!--` after `<!`.
        E::InvalidSyntax("malformed cdata or comment section start") => (
            Condition::RestrictedXml,
            "a document type declaration is not allowed in XMPP (RFC 6120 §11.1)".to_owned(),
        ),
        other => (Condition::NotWellFormed, other.to_string()),
    };
    StreamError::new(condition, text)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse_all(p: &mut StreamParser, mut data: &[u8]) -> Result<Vec<StreamEvent>, StreamError> {
        let mut out = Vec::new();
        while let Some(ev) = p.parse(&mut data)? {
            out.push(ev);
        }
        Ok(out)
    }

    const HEADER: &str = "<?xml version='1.0'?><stream:stream from='juliet@im.example.com' to='im.example.com' version='1.0' xml:lang='en' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

    #[test]
    fn rfc6120_stream_header_and_stanza() {
        // RFC 6120 §4.2 / §9.1.1 examples.
        let mut p = StreamParser::new(ParserLimits::POST_AUTH);
        let evs = parse_all(
            &mut p,
            format!("{HEADER}<message from='juliet@im.example.com/balcony' to='romeo@example.net' type='chat' xml:lang='en'><body>Art thou not Romeo, and a Montague?</body></message>  </stream:stream>").as_bytes(),
        )
        .unwrap();
        assert_eq!(evs.len(), 3);
        let StreamEvent::Open(h) = &evs[0] else {
            panic!("{evs:?}")
        };
        assert_eq!(h.to.as_deref(), Some("im.example.com"));
        assert_eq!(h.from.as_deref(), Some("juliet@im.example.com"));
        assert_eq!(h.version.as_deref(), Some("1.0"));
        assert_eq!(h.lang.as_deref(), Some("en"));
        let StreamEvent::Element(m) = &evs[1] else {
            panic!()
        };
        assert!(m.is("message", ns::CLIENT));
        assert_eq!(m.attr("xml:lang"), Some("en"));
        assert_eq!(
            m.child("body", ns::CLIENT).unwrap().text(),
            "Art thou not Romeo, and a Montague?"
        );
        assert_eq!(evs[2], StreamEvent::Close);
    }

    #[test]
    fn whitespace_left_over_from_the_previous_stream_is_skipped_before_the_header() {
        // After a restart the newline a client wrote after its last element (go-sendxmpp:
        // `</auth>` then `\n`) comes first, in one piece or byte by byte.
        let mut p = StreamParser::new(ParserLimits::POST_AUTH);
        let evs = parse_all(&mut p, format!("\n \r\n{HEADER}").as_bytes()).unwrap();
        assert!(matches!(evs.as_slice(), [StreamEvent::Open(_)]), "{evs:?}");
        let mut p = StreamParser::new(ParserLimits::POST_AUTH);
        assert_eq!(p.parse(&mut &b"\n"[..]).unwrap(), None);
        let evs = parse_all(&mut p, HEADER.as_bytes()).unwrap();
        assert!(matches!(evs.as_slice(), [StreamEvent::Open(_)]), "{evs:?}");
        // Anything else before the header is still not XML.
        let mut p = StreamParser::new(ParserLimits::POST_AUTH);
        assert!(parse_all(&mut p, format!("x{HEADER}").as_bytes()).is_err());
    }

    #[test]
    fn byte_at_a_time_gives_the_same_elements() {
        let doc = format!("{HEADER}<iq type='get' id='p1'><ping xmlns='urn:xmpp:ping'/></iq>");
        let mut p = StreamParser::new(ParserLimits::POST_AUTH);
        let mut evs = Vec::new();
        for b in doc.as_bytes() {
            let mut s = std::slice::from_ref(b);
            while let Some(ev) = p.parse(&mut s).unwrap() {
                evs.push(ev);
            }
        }
        assert_eq!(evs.len(), 2);
        let StreamEvent::Element(iq) = &evs[1] else {
            panic!()
        };
        assert!(iq.child("ping", ns::PING).is_some());
        // Round trip.
        let mut s = String::new();
        iq.write_to(&mut s, ns::CLIENT);
        // rxml keeps attributes sorted by name.
        assert_eq!(
            s,
            "<iq id='p1' type='get'><ping xmlns='urn:xmpp:ping'/></iq>"
        );
    }

    fn first_error(input: &str, limits: ParserLimits) -> StreamError {
        let mut p = StreamParser::new(limits);
        parse_all(&mut p, input.as_bytes()).expect_err("must fail")
    }

    #[test]
    fn restricted_xml_is_refused() {
        for (input, cond) in [
            (
                format!("{HEADER}<!-- a comment -->"),
                Condition::RestrictedXml,
            ),
            (
                format!("{HEADER}<?php echo 1; ?>"),
                Condition::RestrictedXml,
            ),
            (
                "<?xml version='1.0'?><!DOCTYPE stream [<!ENTITY x 'y'>]><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>".to_owned(),
                Condition::RestrictedXml,
            ),
            (
                format!("{HEADER}<message><body>&xxe;</body></message>"),
                Condition::RestrictedXml,
            ),
            (
                "<?xml version='1.1'?><stream:stream xmlns:stream='http://etherx.jabber.org/streams'>".to_owned(),
                Condition::UnsupportedVersion,
            ),
            (
                format!("{HEADER}<message><body>a</bodx></message>"),
                Condition::NotWellFormed,
            ),
        ] {
            let e = first_error(&input, ParserLimits::POST_AUTH);
            assert_eq!(e.condition, cond, "{input}: {e}");
        }
    }

    #[test]
    fn invalid_utf8_is_unsupported_encoding() {
        let mut data = HEADER.as_bytes().to_vec();
        data.extend_from_slice(b"<message><body>\xff\xfe</body></message>");
        let mut p = StreamParser::new(ParserLimits::POST_AUTH);
        let e = parse_all(&mut p, &data).expect_err("must fail");
        assert_eq!(e.condition, Condition::UnsupportedEncoding);
    }

    #[test]
    fn oversized_stanza_is_a_policy_violation() {
        let big = "x".repeat(11 * 1024);
        let e = first_error(
            &format!("{HEADER}<message><body>{big}</body></message>"),
            ParserLimits::PRE_AUTH,
        );
        assert_eq!(e.condition, Condition::PolicyViolation);
        // The same stanza is fine after authentication.
        let mut p = StreamParser::new(ParserLimits::POST_AUTH);
        let evs = parse_all(
            &mut p,
            format!("{HEADER}<message><body>{big}</body></message>").as_bytes(),
        )
        .unwrap();
        assert_eq!(evs.len(), 2);
    }

    #[test]
    fn deep_nesting_is_a_policy_violation() {
        let deep = "<a>".repeat(10_000);
        let e = first_error(&format!("{HEADER}<message>{deep}"), ParserLimits::POST_AUTH);
        assert_eq!(e.condition, Condition::PolicyViolation);
    }

    #[test]
    fn wrong_root_is_invalid_namespace() {
        let e = first_error("<stream xmlns='jabber:client'>", ParserLimits::PRE_AUTH);
        assert_eq!(e.condition, Condition::InvalidNamespace);
    }

    #[test]
    fn text_between_stanzas() {
        let mut p = StreamParser::new(ParserLimits::POST_AUTH);
        let evs = parse_all(&mut p, format!("{HEADER} \n\t ").as_bytes()).unwrap();
        assert_eq!(evs.len(), 1);
        let e = first_error(&format!("{HEADER}hello<iq/>"), ParserLimits::POST_AUTH);
        assert_eq!(e.condition, Condition::BadFormat);
    }
}

/// Parse one element from text (a stored stanza). Unprefixed elements get `default_ns`.
pub fn parse_element(xml: &str, default_ns: &str) -> Result<Element, StreamError> {
    let mut p = StreamParser::new(ParserLimits {
        max_stanza: xml.len() + 64,
        max_depth: ParserLimits::POST_AUTH.max_depth,
    });
    let header = format!(
        "<stream:stream xmlns='{default_ns}' xmlns:stream='{}'>",
        ns::STREAM
    );
    let mut h = header.as_bytes();
    p.parse(&mut h)?;
    let mut data = xml.as_bytes();
    match p.parse(&mut data)? {
        Some(StreamEvent::Element(el)) => Ok(el),
        _ => Err(StreamError::new(
            Condition::NotWellFormed,
            "not one complete element",
        )),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fragment_tests {
    use super::*;

    #[test]
    fn stored_stanza_round_trip() {
        let el = Element::new("message", ns::CLIENT)
            .with_attr("to", "a@b")
            .with_child(Element::new("body", ns::CLIENT).with_text("x < y"))
            .with_child(Element::new("delay", "urn:xmpp:delay").with_attr("stamp", "2026"));
        let mut s = String::new();
        el.write_to(&mut s, ns::CLIENT);
        assert_eq!(parse_element(&s, ns::CLIENT).unwrap(), el);
        assert!(parse_element("<a>", ns::CLIENT).is_err());
    }
}
