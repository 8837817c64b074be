//! Farm links without sockets (DESIGN.md D3): the frames, and the mutual handshake as two
//! state machines, [`Connector`] and [`Acceptor`]. `jabberfarm-net`'s farm runtime moves the
//! frames; every decision of the handshake is made here.
//!
//! A frame is a 4-byte big-endian length and one element of an implicit `jabber:server`
//! stream. The handshake (both sides prove they know the farm secret; the secret never crosses
//! the wire; routing-table fingerprints must agree):
//!
//! ```text
//! connector                                   acceptor
//!   <hello node nonce fingerprint [purpose]/> →
//!                        ← <hello node nonce fingerprint proof/>   (or <refuse reason/>)
//!   <auth proof/>                             →
//!                                           ← <welcome/>           (or <refuse reason/>)
//! ```
//!
//! Proofs are HMAC-SHA-256 under a key derived from the secret, over a label (which side,
//! which purpose), both nonces and both names, so a proof is worth nothing in another
//! direction, for another purpose, or on another connection.

use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use crate::ns;
use crate::scram::{ScramHash, hmac};
use crate::xml::{Element, ParserLimits, StreamEvent, StreamParser};

pub const LINK_NS: &str = "urn:jabberfarm:link:0";

/// Why a connection is opened: a link, or one relayed client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Link,
    Relay,
}

impl Purpose {
    /// Proof labels differ by purpose: a proof for one is worth nothing for the other.
    fn label(self, side: &str) -> String {
        match self {
            Purpose::Link => side.to_owned(),
            Purpose::Relay => format!("relay-{side}"),
        }
    }
}

/// The key proofs are made with, from the farm secret.
pub fn link_key(secret: &str) -> Vec<u8> {
    hmac(
        ScramHash::Sha256,
        b"jabberfarm farm link key",
        secret.as_bytes(),
    )
}

/// A fresh nonce for one handshake.
pub fn new_nonce() -> String {
    let bytes: [u8; 18] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn proof(key: &[u8], label: &str, n1: &str, n2: &str, a: &str, b: &str) -> String {
    let msg = format!("{label}\0{n1}\0{n2}\0{a}\0{b}");
    hex::encode(hmac(ScramHash::Sha256, key, msg.as_bytes()))
}

fn proof_matches(given: Option<&str>, expected: &str) -> bool {
    given.is_some_and(|g| {
        g.len() == expected.len() && bool::from(g.as_bytes().ct_eq(expected.as_bytes()))
    })
}

pub fn refuse(reason: &str) -> Element {
    Element::new("refuse", LINK_NS).with_attr("reason", reason)
}

/// The bytes of one frame's element (links carry elements in `jabber:server`).
pub fn frame_of(el: &Element) -> Vec<u8> {
    let mut s = String::with_capacity(256);
    el.write_to(&mut s, ns::SERVER);
    s.into_bytes()
}

/// Append `frame` to `buf` with its length in front.
pub fn push_frame(buf: &mut Vec<u8>, frame: &[u8]) {
    let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(frame);
}

/// The parser for a link's frames, elements up to `max_frame` bytes.
pub fn frame_parser(max_frame: usize) -> StreamParser {
    let mut parser = StreamParser::new(ParserLimits {
        max_stanza: max_frame,
        max_depth: ParserLimits::POST_AUTH.max_depth,
    });
    // Frames are elements of one implicit stream in jabber:server, with the prefixes a
    // server stream declares (`Element::write_to` writes a top-level dialback element with
    // `db:`).
    let mut header: &[u8] = b"<stream:stream xmlns='jabber:server' xmlns:stream='http://etherx.jabber.org/streams' xmlns:db='jabber:server:dialback'>";
    let _ = parser.parse(&mut header);
    parser
}

/// A frame must hold exactly one complete element.
pub fn parse_frame(parser: &mut StreamParser, frame: &[u8]) -> Result<Element, String> {
    let mut data = frame;
    match parser.parse(&mut data) {
        Ok(Some(StreamEvent::Element(el))) if data.is_empty() => Ok(el),
        Ok(Some(_)) => Err("more or other than one element".to_owned()),
        Ok(None) => Err("incomplete element".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}

/// A handshake that failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why, for the caller.
    pub reason: String,
    /// Tell the peer first: a `<refuse/>` ([`refuse`]) with this reason.
    pub refuse: Option<String>,
    /// Worth an error in the log (a wrong secret or table, a refusal), with this text; the
    /// rest is noise a port scanner makes.
    pub alarm: Option<String>,
}

impl Failure {
    fn quiet(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            refuse: None,
            alarm: None,
        }
    }
}

/// The connecting side of one handshake.
pub struct Connector<'a> {
    key: &'a [u8],
    me: &'a str,
    peer: &'a str,
    fingerprint: &'a str,
    purpose: Purpose,
    nonce: String,
}

impl<'a> Connector<'a> {
    pub fn new(
        key: &'a [u8],
        me: &'a str,
        peer: &'a str,
        fingerprint: &'a str,
        purpose: Purpose,
        nonce: String,
    ) -> Connector<'a> {
        Connector {
            key,
            me,
            peer,
            fingerprint,
            purpose,
            nonce,
        }
    }

    /// What opens the handshake.
    pub fn hello(&self) -> Element {
        let hello = Element::new("hello", LINK_NS)
            .with_attr("node", self.me)
            .with_attr("nonce", &self.nonce)
            .with_attr("fingerprint", self.fingerprint);
        match self.purpose {
            Purpose::Relay => hello.with_attr("purpose", "relay"),
            Purpose::Link => hello,
        }
    }

    /// The acceptor's answer to our hello: its proof is checked, then its fingerprint; the
    /// result is our `<auth/>`.
    pub fn on_hello(&self, hello: &Element) -> Result<Element, Failure> {
        let peer = self.peer;
        if hello.is("refuse", LINK_NS) {
            let reason = hello.attr("reason").unwrap_or("no reason given");
            return Err(Failure {
                reason: format!("refused: {reason}"),
                refuse: None,
                alarm: Some(format!("farm link refused by {peer}: {reason}")),
            });
        }
        if !hello.is("hello", LINK_NS) || hello.attr("node") != Some(peer) {
            return Err(Failure::quiet("unexpected answer to hello"));
        }
        let their_nonce = hello.attr("nonce").unwrap_or("");
        let label = self.purpose.label("acceptor");
        let expected = proof(self.key, &label, &self.nonce, their_nonce, self.me, peer);
        if !proof_matches(hello.attr("proof"), &expected) {
            let reason = "authentication failed: the farm secret differs";
            return Err(Failure {
                reason: reason.to_owned(),
                refuse: Some(reason.to_owned()),
                alarm: Some(format!(
                    "farm link to {peer}: it does not know the farm secret"
                )),
            });
        }
        let fp = hello.attr("fingerprint").unwrap_or("");
        if fp != self.fingerprint {
            let reason = format!(
                "routing table fingerprint {} on {} differs from {fp} on {peer}",
                self.fingerprint, self.me
            );
            return Err(Failure {
                refuse: Some(reason.clone()),
                alarm: Some(format!(
                    "farm link to {peer}: {reason}; no traffic until the configs agree"
                )),
                reason,
            });
        }
        let label = self.purpose.label("connector");
        let ours = proof(self.key, &label, their_nonce, &self.nonce, peer, self.me);
        Ok(Element::new("auth", LINK_NS).with_attr("proof", ours))
    }

    /// The acceptor's last word: `<welcome/>`, or why not.
    pub fn on_answer(&self, answer: &Element) -> Result<(), Failure> {
        if answer.is("welcome", LINK_NS) {
            return Ok(());
        }
        let reason = answer.attr("reason").unwrap_or("no reason given");
        Err(Failure {
            reason: format!("refused: {reason}"),
            refuse: None,
            alarm: Some(format!("farm link refused by {}: {reason}", self.peer)),
        })
    }
}

/// Who the connector says it is, from its hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub peer: String,
    pub purpose: Purpose,
    their_nonce: String,
    fingerprint: String,
}

/// The accepting side of one handshake.
pub struct Acceptor<'a> {
    key: &'a [u8],
    me: &'a str,
    fingerprint: &'a str,
    nonce: String,
}

impl<'a> Acceptor<'a> {
    pub fn new(key: &'a [u8], me: &'a str, fingerprint: &'a str, nonce: String) -> Acceptor<'a> {
        Acceptor {
            key,
            me,
            fingerprint,
            nonce,
        }
    }

    /// The connector's hello. `allowed(peer, purpose)`: may that node connect to us for that
    /// (links go from the name that sorts first; relays come from masters)? The result is our
    /// hello, with our proof.
    pub fn on_hello(
        &self,
        hello: &Element,
        allowed: impl Fn(&str, Purpose) -> bool,
    ) -> Result<(Hello, Element), Failure> {
        let (Some(peer), Some(their_nonce)) = (hello.attr("node"), hello.attr("nonce")) else {
            return Err(Failure::quiet("no hello"));
        };
        let purpose = match hello.attr("purpose") {
            None => Purpose::Link,
            Some("relay") => Purpose::Relay,
            Some(other) => {
                let reason = format!("unknown purpose {other:?}");
                return Err(Failure {
                    refuse: Some(reason.clone()),
                    reason,
                    alarm: None,
                });
            }
        };
        if !hello.is("hello", LINK_NS) || !allowed(peer, purpose) {
            let reason = match purpose {
                Purpose::Link => format!("{peer:?} is not a node that connects to {}", self.me),
                Purpose::Relay => format!("{} takes no clients relayed by {peer:?}", self.me),
            };
            return Err(Failure {
                refuse: Some(reason.clone()),
                reason,
                alarm: None,
            });
        }
        let label = purpose.label("acceptor");
        let ours = proof(self.key, &label, their_nonce, &self.nonce, peer, self.me);
        let answer = Element::new("hello", LINK_NS)
            .with_attr("node", self.me)
            .with_attr("nonce", &self.nonce)
            .with_attr("fingerprint", self.fingerprint)
            .with_attr("proof", ours);
        let hello = Hello {
            peer: peer.to_owned(),
            purpose,
            their_nonce: their_nonce.to_owned(),
            fingerprint: hello.attr("fingerprint").unwrap_or("").to_owned(),
        };
        Ok((hello, answer))
    }

    /// The connector's `<auth/>`: its proof is checked first, then (so that only a node that
    /// knows the secret learns about tables) the fingerprint. The result is `<welcome/>`.
    pub fn on_auth(&self, hello: &Hello, auth: &Element) -> Result<Element, Failure> {
        let peer = &hello.peer;
        if auth.is("refuse", LINK_NS) {
            let reason = auth.attr("reason").unwrap_or("no reason given");
            return Err(Failure {
                reason: format!("{peer} refused: {reason}"),
                refuse: None,
                alarm: Some(format!("farm link from {peer} refused by {peer}: {reason}")),
            });
        }
        let label = hello.purpose.label("connector");
        let expected = proof(
            self.key,
            &label,
            &self.nonce,
            &hello.their_nonce,
            self.me,
            peer,
        );
        if !auth.is("auth", LINK_NS) || !proof_matches(auth.attr("proof"), &expected) {
            return Err(Failure {
                reason: "wrong farm secret".to_owned(),
                refuse: Some("authentication failed: the farm secret differs".to_owned()),
                alarm: Some(format!("farm link from {peer} refused: wrong farm secret")),
            });
        }
        if hello.fingerprint != self.fingerprint {
            let reason = format!(
                "routing table fingerprint {} differs from {} on {}",
                hello.fingerprint, self.fingerprint, self.me
            );
            return Err(Failure {
                refuse: Some(reason.clone()),
                alarm: Some(format!(
                    "farm link from {peer} refused: {reason}; no traffic until the configs agree"
                )),
                reason,
            });
        }
        Ok(Element::new("welcome", LINK_NS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both sides, through every step; the elements cross as frames do.
    fn through_frames(el: &Element) -> Element {
        let mut buf = Vec::new();
        push_frame(&mut buf, &frame_of(el));
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        assert_eq!(len, buf.len() - 4);
        parse_frame(&mut frame_parser(4096), &buf[4..]).unwrap_or_else(|e| panic!("{e}"))
    }

    fn handshake(
        connector_secret: &str,
        acceptor_secret: &str,
        fingerprints: (&str, &str),
        purpose: Purpose,
    ) -> Result<(), (String, Failure)> {
        let (ck, ak) = (link_key(connector_secret), link_key(acceptor_secret));
        let c = Connector::new(
            &ck,
            "master",
            "slave1",
            fingerprints.0,
            purpose,
            new_nonce(),
        );
        let a = Acceptor::new(&ak, "slave1", fingerprints.1, new_nonce());
        let (hello, answer) = a
            .on_hello(&through_frames(&c.hello()), |peer, _| peer == "master")
            .map_err(|f| ("acceptor hello".to_owned(), f))?;
        assert_eq!((hello.peer.as_str(), hello.purpose), ("master", purpose));
        let auth = c
            .on_hello(&through_frames(&answer))
            .map_err(|f| ("connector hello".to_owned(), f))?;
        let welcome = a
            .on_auth(&hello, &through_frames(&auth))
            .map_err(|f| ("acceptor auth".to_owned(), f))?;
        c.on_answer(&through_frames(&welcome))
            .map_err(|f| ("connector answer".to_owned(), f))
    }

    #[test]
    fn the_same_secret_and_table_make_a_link() {
        assert_eq!(handshake("s", "s", ("fp", "fp"), Purpose::Link), Ok(()));
        assert_eq!(handshake("s", "s", ("fp", "fp"), Purpose::Relay), Ok(()));
    }

    #[test]
    fn a_wrong_secret_is_caught_by_the_connector_and_refused() {
        let Err((step, f)) = handshake("s", "other", ("fp", "fp"), Purpose::Link) else {
            panic!("a wrong secret made a link");
        };
        assert_eq!(step, "connector hello");
        assert!(f.reason.contains("secret"), "{f:?}");
        assert!(f.refuse.is_some() && f.alarm.is_some());
    }

    #[test]
    fn another_table_is_refused_with_both_fingerprints() {
        let Err((step, f)) = handshake("s", "s", ("aaaa", "bbbb"), Purpose::Link) else {
            panic!("different tables made a link");
        };
        assert_eq!(step, "connector hello");
        assert!(
            f.reason.contains("aaaa") && f.reason.contains("bbbb"),
            "{f:?}"
        );
    }

    #[test]
    fn proofs_are_bound_to_direction_purpose_and_nonces() {
        let key = link_key("s");
        let c = Connector::new(&key, "master", "slave1", "fp", Purpose::Link, "n1".into());
        let a = Acceptor::new(&key, "slave1", "fp", "n2".into());
        let (hello, answer) = a
            .on_hello(&c.hello(), |_, _| true)
            .unwrap_or_else(|f| panic!("{f:?}"));
        // The acceptor's own proof sent back as the connector's is refused.
        let echo = Element::new("auth", LINK_NS).with_opt_attr("proof", answer.attr("proof"));
        assert!(a.on_auth(&hello, &echo).is_err());
        // A relay proof is no link proof.
        let relay = Connector::new(&key, "master", "slave1", "fp", Purpose::Relay, "n1".into());
        assert!(relay.on_hello(&answer).is_err());
        // Who may connect is the caller's rule; the refusal says who and to whom.
        let Err(f) = a.on_hello(&c.hello(), |_, _| false) else {
            panic!("allowed anyway");
        };
        assert!(
            f.reason.contains("\"master\"") && f.reason.contains("slave1"),
            "{f:?}"
        );
    }

    #[test]
    fn a_frame_holds_exactly_one_element() {
        let mut p = frame_parser(4096);
        assert!(parse_frame(&mut p, b"<a/><b/>").is_err());
        let mut p = frame_parser(4096);
        assert!(parse_frame(&mut p, b"<a>").is_err());
    }
}
