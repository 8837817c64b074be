//! What a link keeps until its peer has it (issue 14): sequence numbers, acknowledgements and
//! the resume point after a reconnect, without sockets.
//!
//! Every frame a node sends to a peer, except heartbeats and the two elements below, has a
//! sequence number: 1, 2, 3 … from the sending process's start, never written on the wire (both
//! ends count). The sender keeps each frame in its [`Outbox`] until the peer acknowledges it;
//! the receiver counts what it took in its [`Inbox`].
//!
//! ```text
//! <a h='N'/>                               "every frame up to N is safe with me"
//! <sync incarnation='X' peer='Y' h='N' got='G' first='S'/>  first frame on every connection
//! ```
//!
//! A receiver acknowledges a frame once its stanza is safe (delivered, stored, or taken the
//! same way by the next node: the net crate's `receipt`), not when it reads it: a receiver
//! killed before that leaves the frame with its sender, which writes it to the restarted
//! process. So what the receiver has read (`got`) and what it acknowledges (`h`) differ.
//!
//! `incarnation` names the sending process (a random value per start); `peer` is the peer's
//! incarnation as the sender last saw it, `h` what the sender acknowledges of that
//! incarnation, `got` what it read of it (at least `h`; `h` when absent), and `first` the
//! sequence number of the oldest frame the sender still keeps. Both sides send a sync, read
//! the other's, and then:
//! - the sender drops what `h` acknowledges and writes from `got + 1` (keeping what lies
//!   between for a later `<a/>`) — unless the peer's sync
//!   names another incarnation than ours (the peer was restarted, or never heard of us), in
//!   which case it writes everything it keeps;
//! - the receiver counts on from what it had — unless the sender is a new incarnation, in which
//!   case it starts at `first - 1` (and the sender's old sessions are gone: [`SyncOutcome`]).
//!
//! So a frame is taken once by the peer process that receives it, in order, across any number
//! of reconnects. Frames a sender gives up on (the peer stayed away too long) are taken out of
//! the outbox by [`Outbox::expire`]; `first` tells the receiver to skip them.

use std::collections::VecDeque;
use std::time::Instant;

use super::{LINK_NS, push_frame};
use crate::xml::Element;

/// Whether `el` is one of the link's own sequence elements (not numbered, not routed).
pub fn is_sequence_element(el: &Element) -> bool {
    el.ns == LINK_NS && matches!(&*el.name, "a" | "sync")
}

/// `<a h='N'/>`.
pub fn ack(h: u64) -> Element {
    Element::new("a", LINK_NS).with_attr("h", h.to_string())
}

/// The `h` of an `<a/>`.
pub fn parse_ack(el: &Element) -> Option<u64> {
    if el.is("a", LINK_NS) {
        el.attr("h")?.parse().ok()
    } else {
        None
    }
}

/// What each side says first on a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sync {
    /// The sender's incarnation.
    pub incarnation: String,
    /// The receiver's incarnation as the sender knows it (empty: none yet).
    pub peer: String,
    /// Frames from `peer` the sender acknowledges (they are safe).
    pub h: u64,
    /// Frames the sender read from `peer` (at least `h`).
    pub got: u64,
    /// The oldest frame the sender still keeps for the receiver.
    pub first: u64,
}

impl Sync {
    pub fn to_element(&self) -> Element {
        Element::new("sync", LINK_NS)
            .with_attr("incarnation", &self.incarnation)
            .with_attr("peer", &self.peer)
            .with_attr("h", self.h.to_string())
            .with_attr("got", self.got.to_string())
            .with_attr("first", self.first.to_string())
    }

    pub fn from_element(el: &Element) -> Result<Sync, String> {
        if !el.is("sync", LINK_NS) {
            return Err(format!("expected <sync/>, got <{}/>", el.name));
        }
        let num = |name: &str| -> Result<u64, String> {
            el.attr(name)
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("<sync/> without a number in '{name}'"))
        };
        let incarnation = el.attr("incarnation").unwrap_or("");
        if incarnation.is_empty() {
            return Err("<sync/> without an incarnation".to_owned());
        }
        let h = num("h")?;
        // Older nodes acknowledge what they read.
        let got = if el.attr("got").is_some() {
            num("got")?.max(h)
        } else {
            h
        };
        Ok(Sync {
            incarnation: incarnation.to_owned(),
            peer: el.attr("peer").unwrap_or("").to_owned(),
            h,
            got,
            first: num("first")?.max(1),
        })
    }
}

/// A frame kept for the peer, with what its sender attached (dropped when the peer
/// acknowledges it).
struct Kept<T> {
    frame: Vec<u8>,
    since: Instant,
    tag: T,
}

/// The frames sent to one peer and not yet acknowledged, oldest first; bounded in frames and
/// bytes. Each may carry a tag `T`, dropped when the frame is acknowledged, given back when it
/// expires.
pub struct Outbox<T = ()> {
    /// The sequence number of `frames[0]` (everything before it is acknowledged or expired).
    first: u64,
    frames: VecDeque<Kept<T>>,
    bytes: usize,
    max_frames: usize,
    max_bytes: usize,
}

impl<T> Outbox<T> {
    pub fn new(max_frames: usize, max_bytes: usize) -> Outbox<T> {
        Outbox {
            first: 1,
            frames: VecDeque::new(),
            bytes: 0,
            max_frames: max_frames.max(1),
            max_bytes,
        }
    }

    /// Whether a frame of `len` bytes fits (one frame always fits into an empty outbox).
    pub fn has_room(&self, len: usize) -> bool {
        self.frames.is_empty()
            || (self.frames.len() < self.max_frames && self.bytes + len <= self.max_bytes)
    }

    /// Keep `frame` (and `tag`); its sequence number.
    pub fn push(&mut self, frame: Vec<u8>, now: Instant, tag: T) -> u64 {
        self.bytes += frame.len();
        self.frames.push_back(Kept {
            frame,
            since: now,
            tag,
        });
        self.end() - 1
    }

    /// The oldest frame kept (or the next one, when none is).
    pub fn first(&self) -> u64 {
        self.first
    }

    /// The sequence number the next frame will get.
    pub fn end(&self) -> u64 {
        self.first + self.frames.len() as u64
    }

    pub fn len(&self) -> usize {
        self.frames.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The peer took everything up to `h`: those frames go. How many went. An `h` beyond what
    /// was sent is a peer counting wrong: everything goes, and the caller should drop the link
    /// ([`Outbox::end`] tells).
    pub fn acked(&mut self, h: u64) -> usize {
        let mut n = 0;
        while self.first <= h {
            let Some(k) = self.frames.pop_front() else {
                break;
            };
            self.bytes -= k.frame.len();
            self.first += 1;
            n += 1;
        }
        n
    }

    /// Append the frames from sequence number `next` on to `buf` (length-prefixed), while
    /// `buf` is shorter than `limit`; the sequence number to write next.
    pub fn write_from(&self, next: u64, buf: &mut Vec<u8>, limit: usize) -> u64 {
        let mut next = next.max(self.first);
        while buf.len() < limit {
            let Some(k) = self.frames.get((next - self.first) as usize) else {
                break;
            };
            push_frame(buf, &k.frame);
            next += 1;
        }
        next
    }

    /// Takes out the frames kept since before `cutoff` (the oldest are at the front), with
    /// their tags: the caller tells their senders they were not delivered.
    pub fn expire(&mut self, cutoff: Instant) -> Vec<(Vec<u8>, T)> {
        let mut out = Vec::new();
        while self.frames.front().is_some_and(|k| k.since < cutoff) {
            if let Some(k) = self.frames.pop_front() {
                self.bytes -= k.frame.len();
                self.first += 1;
                out.push((k.frame, k.tag));
            }
        }
        out
    }

    /// When the oldest frame kept was queued.
    pub fn oldest(&self) -> Option<Instant> {
        self.frames.front().map(|k| k.since)
    }
}

/// What a node took from one peer.
#[derive(Debug, Default)]
pub struct Inbox {
    /// The peer's incarnation (empty: never synced).
    incarnation: String,
    /// The sequence number of the last frame taken from it.
    received: u64,
}

/// What a peer's sync means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Write from this sequence number on.
    pub resend_from: u64,
    /// The peer is another process than the last time: whatever it held (its sessions) is
    /// gone.
    pub restarted: bool,
    /// The peer is another process than the one we counted (or the first we hear of): our
    /// count of its frames starts again.
    pub fresh: bool,
}

impl Inbox {
    /// Our sync for this peer: who we are, who we think it is, what of it is safe with us
    /// (`safe`, at most what we took) and what we took.
    pub fn sync<T>(&self, incarnation: &str, outbox: &Outbox<T>, safe: u64) -> Sync {
        Sync {
            incarnation: incarnation.to_owned(),
            peer: self.incarnation.clone(),
            h: safe.min(self.received),
            got: self.received,
            first: outbox.first(),
        }
    }

    /// The peer's sync, read after ours was sent (`ours` is our incarnation): where our
    /// writing starts, and where our counting does.
    pub fn on_sync<T>(&mut self, ours: &str, theirs: &Sync, outbox: &mut Outbox<T>) -> SyncOutcome {
        let restarted = !self.incarnation.is_empty() && self.incarnation != theirs.incarnation;
        let fresh = self.incarnation != theirs.incarnation;
        if fresh {
            self.incarnation = theirs.incarnation.clone();
            self.received = theirs.first - 1;
        } else {
            // Frames it gave up on are skipped.
            self.received = self.received.max(theirs.first - 1);
        }
        let resend_from = if theirs.peer == ours {
            outbox.acked(theirs.h);
            outbox.first().max(theirs.got + 1)
        } else {
            outbox.first()
        };
        SyncOutcome {
            resend_from,
            restarted,
            fresh,
        }
    }

    /// One more frame taken; its sequence number.
    pub fn took(&mut self) -> u64 {
        self.received += 1;
        self.received
    }

    pub fn received(&self) -> u64 {
        self.received
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::link::{frame_parser, parse_frame};

    /// One end of a link: its incarnation, outbox and inbox.
    struct End {
        me: String,
        out: Outbox,
        inbox: Inbox,
        /// What this end took, in order.
        got: Vec<String>,
    }

    impl End {
        fn new(me: &str) -> End {
            End {
                me: me.to_owned(),
                out: Outbox::new(100, 1 << 20),
                inbox: Inbox::default(),
                got: Vec::new(),
            }
        }

        /// Its sync: everything it took is safe.
        fn sync(&self) -> Sync {
            self.inbox.sync(&self.me, &self.out, self.inbox.received())
        }

        fn send(&mut self, body: &str) {
            self.out.push(body.as_bytes().to_vec(), Instant::now(), ());
        }
    }

    /// A connection between `a` and `b`: both syncs, then `a` writes its outbox; `b` takes
    /// the first `deliver` frames of it (the rest is lost with the connection) and acks
    /// `acked` of those. The frames written.
    fn connect(a: &mut End, b: &mut End, deliver: usize, acked: usize) -> usize {
        let (sa, sb) = (a.sync(), b.sync());
        let sa = Sync::from_element(&sa.to_element()).unwrap();
        let sb = Sync::from_element(&sb.to_element()).unwrap();
        let from = a.inbox.on_sync(&a.me, &sb, &mut a.out).resend_from;
        b.inbox.on_sync(&b.me, &sa, &mut b.out);
        let mut buf = Vec::new();
        a.out.write_from(from, &mut buf, usize::MAX);
        let mut frames = Vec::new();
        let mut rest = &buf[..];
        while rest.len() >= 4 {
            let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
            frames.push(String::from_utf8(rest[4..4 + len].to_vec()).unwrap());
            rest = &rest[4 + len..];
        }
        let written = frames.len();
        for (i, f) in frames.into_iter().take(deliver).enumerate() {
            b.got.push(f);
            let h = b.inbox.took();
            if i + 1 == acked {
                a.out.acked(h);
            }
        }
        written
    }

    #[test]
    fn a_dropped_connection_loses_nothing_and_repeats_nothing() {
        let (mut a, mut b) = (End::new("A1"), End::new("B1"));
        for i in 0..10 {
            a.send(&format!("m{i}"));
        }
        // 6 arrive, 2 of them acknowledged, then the connection drops.
        assert_eq!(connect(&mut a, &mut b, 6, 2), 10);
        assert_eq!(a.out.len(), 8);
        a.send("m10");
        // The next connection resends from what b took, not from what a saw acknowledged.
        assert_eq!(connect(&mut a, &mut b, usize::MAX, 5), 5);
        let want: Vec<String> = (0..11).map(|i| format!("m{i}")).collect();
        assert_eq!(b.got, want);
    }

    #[test]
    fn a_restarted_receiver_gets_everything_still_kept() {
        let (mut a, mut b) = (End::new("A1"), End::new("B1"));
        for i in 0..5 {
            a.send(&format!("m{i}"));
        }
        connect(&mut a, &mut b, 5, 3);
        // b is killed: a new process, which knows nothing of a.
        let mut b2 = End::new("B2");
        let sb = b2.sync();
        let sa = a.sync();
        let back = b2.inbox.on_sync(&b2.me, &sa, &mut b2.out);
        assert!(!back.restarted, "b2 never knew a");
        let out = a.inbox.on_sync(&a.me, &sb, &mut a.out);
        assert_eq!(out.resend_from, 4, "the two unacknowledged frames go again");
        // And a notices b's restart when it had known b before.
        let mut a_in = Inbox::default();
        let first = a_in.on_sync("A1", &b.sync(), &mut Outbox::<()>::new(1, 1));
        assert!(first.fresh && !first.restarted);
        let again = a_in.on_sync("A1", &sb, &mut Outbox::<()>::new(1, 1));
        assert!(again.restarted && again.fresh);
    }

    #[test]
    fn frames_read_but_not_yet_safe_are_kept_and_not_written_again() {
        let (mut a, mut b) = (End::new("A1"), End::new("B1"));
        for i in 0..6 {
            a.send(&format!("m{i}"));
        }
        connect(&mut a, &mut b, 6, 0);
        // b read all six; only the first two are safe (delivered, stored) when the
        // connection drops.
        let sb = b.inbox.sync(&b.me, &b.out, 2);
        assert_eq!((sb.h, sb.got), (2, 6));
        let sb = Sync::from_element(&sb.to_element()).unwrap();
        let out = a.inbox.on_sync(&a.me, &sb, &mut a.out);
        assert_eq!(out.resend_from, 7, "nothing is read twice");
        assert_eq!(a.out.len(), 4, "m2..m5 are kept until b acknowledges them");
        assert_eq!(a.out.acked(6), 4);
        // A sync without `got` (an older node) acknowledges what it read.
        let old = Element::new("sync", LINK_NS)
            .with_attr("incarnation", "B0")
            .with_attr("h", "3")
            .with_attr("first", "1");
        assert_eq!(Sync::from_element(&old).unwrap().got, 3);
    }

    #[test]
    fn a_restarted_sender_is_counted_from_its_first_frame() {
        let (mut a, mut b) = (End::new("A1"), End::new("B1"));
        a.send("old");
        connect(&mut a, &mut b, 1, 1);
        let mut a2 = End::new("A2");
        a2.send("new");
        connect(&mut a2, &mut b, usize::MAX, 1);
        assert_eq!(b.got, ["old", "new"]);
    }

    #[test]
    fn expired_frames_are_skipped_by_the_receiver() {
        let (mut a, mut b) = (End::new("A1"), End::new("B1"));
        a.send("x0");
        connect(&mut a, &mut b, 1, 1);
        a.send("x1");
        a.send("x2");
        let gone = a
            .out
            .expire(Instant::now() + std::time::Duration::from_secs(1));
        assert_eq!(gone.len(), 2);
        assert_eq!((a.out.first(), a.out.bytes()), (4, 0));
        a.send("x3");
        connect(&mut a, &mut b, usize::MAX, 1);
        assert_eq!(b.got, ["x0", "x3"]);
        assert_eq!(b.inbox.received(), 4);
    }

    #[test]
    fn the_outbox_is_bounded_in_frames_and_bytes() {
        let mut o = Outbox::new(2, 10);
        assert!(o.has_room(100), "one frame always fits an empty outbox");
        o.push(vec![0; 6], Instant::now(), ());
        assert!(!o.has_room(5));
        assert!(o.has_room(4));
        o.push(vec![0; 4], Instant::now(), ());
        assert!(!o.has_room(0));
        assert_eq!(o.acked(1), 1);
        assert!(o.has_room(6));
        // An acknowledgement beyond what was sent drops everything, and says how much.
        assert_eq!(o.acked(99), 1);
        assert!(o.is_empty());
    }

    #[test]
    fn acks_and_syncs_cross_as_frames() {
        let mut p = frame_parser(4096);
        let el = parse_frame(&mut p, &crate::link::frame_of(&ack(42))).unwrap();
        assert!(is_sequence_element(&el));
        assert_eq!(parse_ack(&el), Some(42));
        assert!(Sync::from_element(&ack(1)).is_err());
        let no_incarnation = Element::new("sync", LINK_NS).with_attr("h", "1");
        assert!(Sync::from_element(&no_incarnation).is_err());
    }
}
