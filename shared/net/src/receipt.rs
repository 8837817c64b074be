//! Receipts (issue 14): a stanza taken from a client or from a farm link counts as handled —
//! the client's XEP-0198 `h`, the link's `<a h/>` — only once it is safe: written to its
//! recipient's connection, stored (offline storage, held messages), answered with an error,
//! or taken the same way by the next node. Then a node that dies (kill -9) loses nothing a
//! sender was told it had: the sender still keeps what was not acknowledged, and sends it
//! again (a link to the restarted node) or knows it was not taken (a client).
//!
//! A [`Ledger`] numbers what one source sent (1, 2, 3 …, as the source counts). What needs
//! waiting for gets a [`Receipt`], which travels with the stanza (into a session's queue, a
//! link's outbox, a write to the store) and is dropped when the stanza is safe; everything
//! else is safe at once. [`Ledger::done`] is the count to acknowledge: everything up to the
//! oldest receipt still out. A receipt out for longer than the ledger's patience (a recipient
//! whose connection takes nothing) no longer holds the count back — an acknowledgement that
//! never comes would stop the whole source, and a link carries every user's traffic.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::warn;

/// How long a receipt may hold its ledger's count back by default.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// What one source sent, and which of it is not safe yet.
#[derive(Debug)]
pub struct Ledger {
    inner: Mutex<Inner>,
    patience: Duration,
    /// For the log: what the ledger counts (a client's JID, a peer's name).
    name: String,
}

#[derive(Debug, Default)]
struct Inner {
    /// The number of the last stanza taken.
    taken: u64,
    /// Receipts out, oldest first (their numbers increase).
    out: VecDeque<Slot>,
}

#[derive(Debug)]
struct Slot {
    seq: u64,
    since: Instant,
    /// Safe already; kept while an older receipt is still out.
    done: bool,
}

/// One stanza that is not safe yet: safe when the last clone is dropped. Cloned when the
/// stanza goes to several places (a message for a bare JID written to each resource).
#[derive(Clone, Debug)]
pub struct Receipt(#[allow(dead_code)] Arc<Held>);

#[derive(Debug)]
struct Held {
    ledger: Arc<Ledger>,
    seq: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.ledger.settle(self.seq);
    }
}

impl Ledger {
    /// A ledger whose count starts after `taken` stanzas.
    pub fn new(name: impl Into<String>, taken: u64, patience: Duration) -> Arc<Ledger> {
        Arc::new(Ledger {
            inner: Mutex::new(Inner {
                taken,
                out: VecDeque::new(),
            }),
            patience,
            name: name.into(),
        })
    }

    fn inner(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One more stanza taken, safe at once.
    pub fn took(&self) -> u64 {
        let mut i = self.inner();
        i.taken += 1;
        i.taken
    }

    /// One more stanza taken: safe when its receipt is dropped.
    pub fn track(self: &Arc<Self>) -> Receipt {
        let seq = {
            let mut i = self.inner();
            i.taken += 1;
            let seq = i.taken;
            i.out.push_back(Slot {
                seq,
                since: Instant::now(),
                done: false,
            });
            seq
        };
        Receipt(Arc::new(Held {
            ledger: self.clone(),
            seq,
        }))
    }

    /// Stanzas the source says it skipped (a link's frames that expired at the sender): the
    /// count goes on after `n`.
    pub fn skip_to(&self, n: u64) {
        let mut i = self.inner();
        i.taken = i.taken.max(n);
    }

    /// The number of the last stanza taken.
    pub fn taken(&self) -> u64 {
        self.inner().taken
    }

    /// What may be acknowledged: every stanza before the oldest receipt still out (one out
    /// longer than the patience does not count, and is logged).
    pub fn done(&self) -> u64 {
        let mut i = self.inner();
        let mut overdue = 0;
        while let Some(front) = i.out.front() {
            if !front.done && front.since.elapsed() < self.patience {
                break;
            }
            overdue += usize::from(!front.done);
            i.out.pop_front();
        }
        let done = i.out.front().map_or(i.taken, |s| s.seq - 1);
        drop(i);
        if overdue > 0 {
            warn!(
                source = %self.name,
                "{overdue} stanza(s) from {} not delivered or stored within {} s: acknowledged anyway",
                self.name,
                self.patience.as_secs()
            );
        }
        done
    }

    /// Receipts out (safe or not, behind an older one).
    pub fn out(&self) -> usize {
        self.inner().out.len()
    }

    fn settle(&self, seq: u64) {
        let mut i = self.inner();
        if let Ok(at) = i.out.binary_search_by_key(&seq, |s| s.seq) {
            i.out[at].done = true;
            while i.out.front().is_some_and(|s| s.done) {
                i.out.pop_front();
            }
        }
        // Not found: it was given up on (overdue) already.
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_count_stops_at_the_oldest_receipt_out() {
        let l = Ledger::new("test", 0, PATIENCE);
        assert_eq!(l.took(), 1);
        let r2 = l.track();
        let r3 = l.track();
        assert_eq!(l.took(), 4);
        assert_eq!(l.done(), 1, "2 is not safe yet");
        drop(r3);
        assert_eq!(l.done(), 1, "3 is safe but 2 is not");
        let again = r2.clone();
        drop(r2);
        assert_eq!(l.done(), 1, "a clone is still out");
        drop(again);
        assert_eq!(l.done(), 4);
        assert_eq!(l.out(), 0);
        l.skip_to(10);
        assert_eq!(l.done(), 10);
        assert_eq!(l.took(), 11);
    }

    #[test]
    fn a_receipt_out_too_long_stops_holding_the_count_back() {
        let l = Ledger::new("test", 5, Duration::from_millis(20));
        let stuck = l.track();
        l.took();
        assert_eq!(l.done(), 5);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(l.done(), 7, "given up on");
        drop(stuck);
        assert_eq!(l.done(), 7, "settling it later changes nothing");
    }
}
