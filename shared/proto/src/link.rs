//! Farm links without sockets (DESIGN.md D3): the frames, and the mutual handshake as two
//! state machines, [`Connector`] and [`Acceptor`]. `jabberfarm-net`'s farm runtime moves the
//! frames; every decision of the handshake is made here.
//!
//! A frame is a 4-byte big-endian length and one element of an implicit `jabber:server`
//! stream. The handshake (both sides prove they know the farm secret; the secret never crosses
//! the wire; routing tables must agree, or be of different epochs, one side catching up):
//!
//! ```text
//! connector                                         acceptor
//!   <hello node nonce fingerprint epoch [purpose]/> →
//!                        ← <hello node nonce fingerprint epoch proof/>   (or <refuse reason/>)
//!   <auth proof/>                             →
//!                                           ← <welcome/>           (or <refuse reason/>)
//! ```
//!
//! Tables: each side says the fingerprint of its routing table and the epoch of the topology
//! it came with (0: read from the config at start; each live change is one more). Equal
//! fingerprints link. Different fingerprints at the same epoch are two configs that disagree:
//! refused, no traffic until they agree. Different fingerprints at different epochs are a
//! change on its way: the link comes up and the master hands the newer topology over it
//! (`jabberfarm-net`'s farm runtime; docs/rebalancing.md).
//!
//! Proofs are HMAC-SHA-256 under a key derived from the secret, over a label (which side,
//! which purpose), both nonces and both names, so a proof is worth nothing in another
//! direction, for another purpose, or on another connection.

use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use crate::ns;
use crate::scram::{ScramHash, hmac};
use crate::xml::{Element, ParserLimits, StreamEvent, StreamParser};

pub mod outbox;

pub const LINK_NS: &str = "urn:jabberfarm:link:0";

/// Why a connection is opened: a link, one relayed client, or one admin request (the
/// `jabberfarm status` / `reload` commands, which know the farm secret from the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Link,
    Relay,
    Admin,
}

/// The name the admin commands give in their hello (no node may have it: node names start
/// with a letter or a digit).
pub const ADMIN_NAME: &str = "_admin";

impl Purpose {
    /// Proof labels differ by purpose: a proof for one is worth nothing for the other.
    fn label(self, side: &str) -> String {
        match self {
            Purpose::Link => side.to_owned(),
            Purpose::Relay => format!("relay-{side}"),
            Purpose::Admin => format!("admin-{side}"),
        }
    }

    /// Whether the connection carries traffic routed by the table (then the tables must
    /// agree); an admin request does not.
    fn routes(self) -> bool {
        self != Purpose::Admin
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

/// The routing table a node runs, as the handshake compares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Table<'a> {
    pub fingerprint: &'a str,
    pub epoch: u64,
}

/// The peer's [`Table`], learnt in the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerTable {
    pub fingerprint: String,
    pub epoch: u64,
}

impl Table<'_> {
    fn add_to(&self, hello: Element) -> Element {
        hello
            .with_attr("fingerprint", self.fingerprint)
            .with_attr("epoch", self.epoch.to_string())
    }

    /// Whether a connection for `purpose` to a peer with `theirs` may go on: tables that
    /// disagree at the same epoch may not route traffic (an admin request routes none).
    fn check(
        &self,
        me: &str,
        peer: &str,
        theirs: &PeerTable,
        purpose: Purpose,
    ) -> Result<(), Failure> {
        if theirs.fingerprint == self.fingerprint || theirs.epoch != self.epoch || !purpose.routes()
        {
            return Ok(());
        }
        let reason = format!(
            "routing table fingerprint {} on {me} differs from {} on {peer} at the same epoch {}",
            self.fingerprint, theirs.fingerprint, self.epoch
        );
        Err(Failure {
            refuse: Some(reason.clone()),
            alarm: None,
            reason,
        })
    }
}

impl PeerTable {
    fn of(hello: &Element) -> PeerTable {
        PeerTable {
            fingerprint: hello.attr("fingerprint").unwrap_or("").to_owned(),
            // Absent: a node from before epochs, which runs its config as read (0).
            epoch: hello
                .attr("epoch")
                .and_then(|e| e.parse().ok())
                .unwrap_or(0),
        }
    }
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
    /// Worth an alarm: `{what}: {reason}; no traffic until the configs agree`.
    fn alarm_as(mut self, what: &str) -> Failure {
        self.alarm = Some(format!(
            "{what}: {}; no traffic until the configs agree",
            self.reason
        ));
        self
    }

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
    table: Table<'a>,
    purpose: Purpose,
    nonce: String,
}

impl<'a> Connector<'a> {
    pub fn new(
        key: &'a [u8],
        me: &'a str,
        peer: &'a str,
        table: Table<'a>,
        purpose: Purpose,
        nonce: String,
    ) -> Connector<'a> {
        Connector {
            key,
            me,
            peer,
            table,
            purpose,
            nonce,
        }
    }

    /// What opens the handshake.
    pub fn hello(&self) -> Element {
        let hello = self.table.add_to(
            Element::new("hello", LINK_NS)
                .with_attr("node", self.me)
                .with_attr("nonce", &self.nonce),
        );
        match self.purpose {
            Purpose::Relay => hello.with_attr("purpose", "relay"),
            Purpose::Admin => hello.with_attr("purpose", "admin"),
            Purpose::Link => hello,
        }
    }

    /// The acceptor's answer to our hello: its proof is checked, then its table; the result is
    /// our `<auth/>` and the acceptor's table.
    pub fn on_hello(&self, hello: &Element) -> Result<(Element, PeerTable), Failure> {
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
        let theirs = PeerTable::of(hello);
        self.table
            .check(self.me, peer, &theirs, self.purpose)
            .map_err(|f| f.alarm_as(&format!("farm link to {peer}")))?;
        let label = self.purpose.label("connector");
        let ours = proof(self.key, &label, their_nonce, &self.nonce, peer, self.me);
        Ok((
            Element::new("auth", LINK_NS).with_attr("proof", ours),
            theirs,
        ))
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
    /// The connector's routing table.
    pub table: PeerTable,
    their_nonce: String,
}

/// The accepting side of one handshake.
pub struct Acceptor<'a> {
    key: &'a [u8],
    me: &'a str,
    table: Table<'a>,
    nonce: String,
}

impl<'a> Acceptor<'a> {
    pub fn new(key: &'a [u8], me: &'a str, table: Table<'a>, nonce: String) -> Acceptor<'a> {
        Acceptor {
            key,
            me,
            table,
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
            Some("admin") => Purpose::Admin,
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
                Purpose::Admin => format!("{} takes no admin requests", self.me),
            };
            return Err(Failure {
                refuse: Some(reason.clone()),
                reason,
                alarm: None,
            });
        }
        let label = purpose.label("acceptor");
        let ours = proof(self.key, &label, their_nonce, &self.nonce, peer, self.me);
        let answer = self
            .table
            .add_to(
                Element::new("hello", LINK_NS)
                    .with_attr("node", self.me)
                    .with_attr("nonce", &self.nonce),
            )
            .with_attr("proof", ours);
        let hello = Hello {
            peer: peer.to_owned(),
            purpose,
            table: PeerTable::of(hello),
            their_nonce: their_nonce.to_owned(),
        };
        Ok((hello, answer))
    }

    /// The connector's `<auth/>`: its proof is checked first, then (so that only a node that
    /// knows the secret learns about tables) the tables. The result is `<welcome/>`.
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
        self.table
            .check(self.me, peer, &hello.table, hello.purpose)
            .map_err(|f| f.alarm_as(&format!("farm link from {peer} refused")))?;
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

    fn table(fingerprint: &str) -> Table<'_> {
        Table {
            fingerprint,
            epoch: 0,
        }
    }

    fn handshake(
        connector_secret: &str,
        acceptor_secret: &str,
        fingerprints: (&str, &str),
        purpose: Purpose,
    ) -> Result<(), (String, Failure)> {
        handshake_at(
            connector_secret,
            acceptor_secret,
            (table(fingerprints.0), table(fingerprints.1)),
            purpose,
        )
    }

    fn handshake_at(
        connector_secret: &str,
        acceptor_secret: &str,
        tables: (Table<'_>, Table<'_>),
        purpose: Purpose,
    ) -> Result<(), (String, Failure)> {
        let (ck, ak) = (link_key(connector_secret), link_key(acceptor_secret));
        let c = Connector::new(&ck, "master", "slave1", tables.0, purpose, new_nonce());
        let a = Acceptor::new(&ak, "slave1", tables.1, new_nonce());
        let (hello, answer) = a
            .on_hello(&through_frames(&c.hello()), |peer, _| peer == "master")
            .map_err(|f| ("acceptor hello".to_owned(), f))?;
        assert_eq!((hello.peer.as_str(), hello.purpose), ("master", purpose));
        assert_eq!(
            hello.table,
            PeerTable {
                fingerprint: tables.0.fingerprint.to_owned(),
                epoch: tables.0.epoch
            }
        );
        let (auth, theirs) = c
            .on_hello(&through_frames(&answer))
            .map_err(|f| ("connector hello".to_owned(), f))?;
        assert_eq!(
            (theirs.fingerprint.as_str(), theirs.epoch),
            (tables.1.fingerprint, tables.1.epoch)
        );
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

    /// A change on its way: tables of different epochs link, so the newer can be handed over;
    /// the same epoch with different tables is still refused, whichever side sees it first.
    #[test]
    fn tables_of_different_epochs_link() {
        let at = |fingerprint, epoch| Table { fingerprint, epoch };
        for tables in [
            (at("aaaa", 3), at("bbbb", 2)),
            (at("aaaa", 0), at("bbbb", 1)),
        ] {
            assert_eq!(handshake_at("s", "s", tables, Purpose::Link), Ok(()));
        }
        let Err((_, f)) = handshake_at("s", "s", (at("aaaa", 2), at("bbbb", 2)), Purpose::Link)
        else {
            panic!("different tables at one epoch made a link");
        };
        assert!(f.reason.contains("same epoch 2"), "{f:?}");
        // An admin request routes nothing: any table will do, the secret still must match.
        let tables = (at("aaaa", 2), at("bbbb", 2));
        assert_eq!(handshake_at("s", "s", tables, Purpose::Admin), Ok(()));
        assert!(handshake_at("s", "x", tables, Purpose::Admin).is_err());
    }

    #[test]
    fn proofs_are_bound_to_direction_purpose_and_nonces() {
        let key = link_key("s");
        let c = Connector::new(
            &key,
            "master",
            "slave1",
            table("fp"),
            Purpose::Link,
            "n1".into(),
        );
        let a = Acceptor::new(&key, "slave1", table("fp"), "n2".into());
        let (hello, answer) = a
            .on_hello(&c.hello(), |_, _| true)
            .unwrap_or_else(|f| panic!("{f:?}"));
        // The acceptor's own proof sent back as the connector's is refused.
        let echo = Element::new("auth", LINK_NS).with_opt_attr("proof", answer.attr("proof"));
        assert!(a.on_auth(&hello, &echo).is_err());
        // A relay proof is no link proof.
        let relay = Connector::new(
            &key,
            "master",
            "slave1",
            table("fp"),
            Purpose::Relay,
            "n1".into(),
        );
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
