//! XEP-0198 stream management, without sockets: the stanzas sent to the client that it has
//! not acknowledged yet (`h` counted modulo 2^32), and the elements.
//!
//! The session keeps every stanza it writes ([`Acks::sent`]) until the client's `<a h/>`
//! covers it; we ask with `<r/>` after a write when no request of ours is open
//! ([`Acks::should_ask`]). What is still kept when the session ends goes to the user's other
//! resources or offline storage (the slave's `session.rs`), not to the floor. Our own `h` —
//! what the client sent that is safe with us — is the count of the net crate's `receipt`
//! ledger.

use std::collections::VecDeque;

use crate::ns;
use crate::stanza::ErrorCondition;
use crate::xml::Element;

pub const NS: &str = ns::SM;

/// The counts and the unacknowledged stanzas of one session.
#[derive(Debug)]
pub struct Acks<T> {
    /// The client's last `h`: stanzas of ours it handled.
    acked: u32,
    /// Sent after `acked`, oldest first.
    unacked: VecDeque<T>,
    /// An `<r/>` of ours is not answered yet.
    asked: bool,
    max_unacked: usize,
}

/// An `<a h/>` that acknowledges more than was sent (XEP-0198 §4: a stream error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooHigh {
    pub h: u32,
    pub sent: u32,
}

impl<T> Acks<T> {
    pub fn new(max_unacked: usize) -> Acks<T> {
        Acks {
            acked: 0,
            unacked: VecDeque::new(),
            asked: false,
            max_unacked: max_unacked.max(1),
        }
    }

    /// One more stanza written to the client, kept until it is acknowledged. False when more
    /// than the bound are now unacknowledged (the client does not acknowledge: the caller
    /// ends the session).
    pub fn sent(&mut self, stanza: T) -> bool {
        self.unacked.push_back(stanza);
        self.unacked.len() <= self.max_unacked
    }

    /// The client's `<a h/>`: what it covers is released; how many.
    pub fn on_ack(&mut self, h: u32) -> Result<usize, TooHigh> {
        let n = h.wrapping_sub(self.acked) as usize;
        if n > self.unacked.len() {
            return Err(TooHigh {
                h,
                sent: self.acked.wrapping_add(self.unacked.len() as u32),
            });
        }
        self.unacked.drain(..n);
        self.acked = h;
        self.asked = false;
        Ok(n)
    }

    /// Whether to ask for an acknowledgement now (something is unacknowledged and no request
    /// of ours is open); asking is then taken as done.
    pub fn should_ask(&mut self) -> bool {
        if self.asked || self.unacked.is_empty() {
            return false;
        }
        self.asked = true;
        true
    }

    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// The client's last `h`.
    pub fn acked(&self) -> u32 {
        self.acked
    }

    /// Stanzas sent so far (modulo 2^32): the `h` that will acknowledge the last one.
    pub fn total(&self) -> u32 {
        self.acked.wrapping_add(self.unacked.len() as u32)
    }

    /// Whether the client's `h` covers the stanza that `total` was after it was sent.
    pub fn covers(&self, total: u32) -> bool {
        total.wrapping_sub(self.acked) == 0 || self.acked.wrapping_sub(total) < 1 << 31
    }

    /// What is kept, oldest first (written again after a resumption).
    pub fn kept(&self) -> impl Iterator<Item = &T> {
        self.unacked.iter()
    }

    /// [`Self::kept`], to change: the newest are at the back.
    pub fn kept_mut(&mut self) -> impl DoubleEndedIterator<Item = &mut T> {
        self.unacked.iter_mut()
    }

    /// What the client never acknowledged, oldest first.
    pub fn take_unacked(&mut self) -> VecDeque<T> {
        std::mem::take(&mut self.unacked)
    }
}

/// `<enabled/>`; with `Some((id, max))`, resumable by that id for `max` seconds.
pub fn enabled(resume: Option<(&str, u64)>) -> Element {
    let el = Element::new("enabled", NS);
    match resume {
        Some((id, max)) => el
            .with_attr("id", id)
            .with_attr("resume", "true")
            .with_attr("max", max.to_string()),
        None => el,
    }
}

/// `<resumed previd h/>`.
pub fn resumed(previd: &str, h: u32) -> Element {
    Element::new("resumed", NS)
        .with_attr("previd", previd)
        .with_attr("h", h.to_string())
}

/// Whether an `<enable/>` asks for resumption (`resume` is an xs:boolean).
pub fn wants_resume(enable: &Element) -> bool {
    matches!(enable.attr("resume"), Some("true" | "1"))
}

/// `<failed><condition/></failed>`.
pub fn failed(condition: ErrorCondition) -> Element {
    Element::new("failed", NS).with_child(Element::new(condition.name(), ns::STANZAS))
}

/// `<a h/>`.
pub fn answer(h: u32) -> Element {
    Element::new("a", NS).with_attr("h", h.to_string())
}

/// `<r/>`.
pub fn request() -> Element {
    Element::new("r", NS)
}

/// The `h` of an `<a/>` or `<resumed/>`/`<resume/>`.
pub fn h_of(el: &Element) -> Option<u32> {
    el.attr("h")?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_stanzas_are_released_in_order() {
        let mut a = Acks::new(10);
        for i in 0..5 {
            assert!(a.sent(i));
        }
        assert!(a.should_ask());
        assert!(!a.should_ask(), "one request at a time");
        assert_eq!(a.on_ack(3), Ok(3));
        assert_eq!(a.unacked(), 2);
        assert!(a.should_ask(), "answered: the next write asks again");
        assert_eq!(a.on_ack(3), Ok(0), "the same h again releases nothing");
        assert_eq!(a.on_ack(9), Err(TooHigh { h: 9, sent: 5 }));
        assert_eq!(a.take_unacked(), [3, 4]);
    }

    #[test]
    fn counts_wrap_at_two_to_the_32() {
        let mut a: Acks<u8> = Acks::new(10);
        a.acked = u32::MAX - 1;
        a.sent(1);
        a.sent(2);
        a.sent(3);
        assert_eq!(a.on_ack(0), Ok(2));
        assert_eq!(a.take_unacked(), [3]);
    }

    #[test]
    fn covering_counts_across_the_wrap() {
        let mut a = Acks::new(10);
        a.acked = u32::MAX - 1;
        a.sent(1);
        a.sent(2);
        let last = a.total();
        assert_eq!(last, 0);
        assert!(!a.covers(last));
        assert_eq!(a.on_ack(u32::MAX), Ok(1));
        assert!(!a.covers(last));
        assert_eq!(a.on_ack(0), Ok(1));
        assert!(a.covers(last) && a.covers(u32::MAX - 5));
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut a = Acks::new(2);
        assert!(a.sent(()) && a.sent(()));
        assert!(!a.sent(()));
    }

    #[test]
    fn elements_are_xep_0198s() {
        let mut s = String::new();
        failed(ErrorCondition::UnexpectedRequest).write_to(&mut s, ns::CLIENT);
        assert_eq!(
            s,
            "<failed xmlns='urn:xmpp:sm:3'><unexpected-request xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/></failed>"
        );
        assert_eq!(h_of(&answer(7)), Some(7));
    }
}
