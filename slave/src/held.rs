//! Messages and subscription requests held for a farm node that is down (issue 14): kept in
//! this slave's store (`jabberfarm_store::im::HeldStore`), written to the node in order when
//! its link is back, then deleted once the node acknowledged them. While a node has anything held, what comes for it is held
//! too, so nothing overtakes what waits. A held stanza goes to its recipient's owner at the
//! time it is written (a routing change meanwhile sends it elsewhere).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jabberfarm_net::farm::SendError;
use jabberfarm_net::receipt::{Ledger, PATIENCE, Receipt};
use jabberfarm_proto::ns;
use jabberfarm_proto::stanza::{ErrorCondition, ErrorType, StanzaError};
use jabberfarm_proto::xml::{Element, parse_element};
use jabberfarm_store::im::{Held, HeldStore, HoldLimits};
use jid::Jid;
use tracing::{info, warn};

use crate::Slave;
use crate::router::Origin;
use crate::sessions::Destination;

/// Held stanzas read at once when a node's link is back…
const DRAIN_BATCH: usize = 64;
/// …and batches written before the oldest is acknowledged by the node.
const DRAIN_AHEAD: usize = 16;

/// Which nodes this slave holds something for.
pub struct Holding {
    /// Locked while a stanza is held and while a drain decides it is done: a stanza held
    /// meanwhile is never left behind.
    nodes: tokio::sync::Mutex<HashSet<String>>,
    /// Nodes whose held stanzas are being written now.
    draining: Mutex<HashSet<String>>,
    /// Asks for a drain (of a node whose link is up) where one can be started.
    wake: tokio::sync::mpsc::Sender<String>,
}

impl Holding {
    /// `nodes`: those with stanzas held from before a restart. The receiver gets the nodes
    /// to drain ([`Slave::drain`]).
    pub fn new(nodes: Vec<String>) -> (Holding, tokio::sync::mpsc::Receiver<String>) {
        let (wake, rx) = tokio::sync::mpsc::channel(64);
        let holding = Holding {
            nodes: tokio::sync::Mutex::new(nodes.into_iter().collect()),
            draining: Mutex::default(),
            wake,
        };
        (holding, rx)
    }
}

impl Slave {
    /// Whether a stanza worth holding for `node` is to be held rather than sent: its link is
    /// down, or older ones are still held.
    pub(crate) async fn holds_for(&self, node: &str) -> bool {
        !self.links.is_up(node) || self.holding.nodes.lock().await.contains(node)
    }

    /// Keep `el` (for `user` of `node`) until the node's link is back; the error for its
    /// sender when it cannot be kept.
    pub(crate) async fn hold(&self, node: &str, user: &str, el: &Element) -> Option<Element> {
        let mut xml = String::new();
        el.write_to(&mut xml, ns::CLIENT);
        let limits = HoldLimits {
            per_node: self.config.farm.held_per_node,
            per_user: self.config.farm.held_per_user,
        };
        let me = self.links.me();
        let mut nodes = self.holding.nodes.lock().await;
        let held = self
            .im
            .hold(me, node, user, &xml, crate::im::now_ms(), limits)
            .await;
        match held {
            Ok(Held::Held) => {
                if nodes.insert(node.to_owned()) {
                    info!(
                        peer = node,
                        "{node} is down: holding messages for its users"
                    );
                }
                drop(nodes);
                if self.links.is_up(node) {
                    // Full: a drain is asked for already.
                    let _ = self.holding.wake.try_send(node.to_owned());
                }
                None
            }
            Ok(Held::Full) => StanzaError::new(ErrorCondition::ResourceConstraint)
                .typed(ErrorType::Wait)
                .text("the recipient's server is down and holds as much as it may for it")
                .answer(el),
            Err(e) => {
                warn!(peer = node, user, "cannot hold a message for {node}: {e}");
                StanzaError::new(ErrorCondition::InternalServerError)
                    .typed(ErrorType::Wait)
                    .text("the recipient's server is not reachable")
                    .answer(el)
            }
        }
    }

    /// Start writing what is held for `node` (its link is up), unless that runs already or
    /// nothing is held for it.
    pub(crate) fn drain(self: &Arc<Self>, node: &str) {
        let started = self
            .holding
            .draining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_owned());
        if started {
            let (me, node) = (self.clone(), node.to_owned());
            self.tasks.spawn(async move {
                if me.holding.nodes.lock().await.contains(&node) {
                    me.drain_now(&node).await;
                }
                me.holding
                    .draining
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&node);
            });
        }
    }

    /// Writes what is held for `node`, oldest first, in batches read one after the other
    /// while the node's acknowledgements come back: a batch's rows are deleted once the node
    /// acknowledged all of it (it is safe there; a node killed meanwhile gets it again from
    /// the link when it is back), at most [`DRAIN_AHEAD`] batches ahead of that.
    async fn drain_now(self: &Arc<Self>, node: &str) {
        let me = self.links.me().to_owned();
        let mut written = 0u64;
        // The last row written, and the batches written and not yet released.
        let mut after = 0i64;
        let mut unsafe_yet: std::collections::VecDeque<(i64, Arc<Ledger>)> = Default::default();
        loop {
            if !self.release_safe(node, &mut unsafe_yet, DRAIN_AHEAD).await {
                return;
            }
            let rows = match self.im.held(&me, node, after, DRAIN_BATCH).await {
                Ok(rows) => rows,
                Err(e) => return warn!(peer = node, "cannot read what is held for {node}: {e}"),
            };
            if rows.is_empty() {
                if !unsafe_yet.is_empty() {
                    if !self.release_safe(node, &mut unsafe_yet, 0).await {
                        return;
                    }
                    continue;
                }
                let mut nodes = self.holding.nodes.lock().await;
                // Under the lock: what was held since the read is written first.
                if matches!(self.im.held(&me, node, 0, 1).await, Ok(r) if r.is_empty()) {
                    nodes.remove(node);
                    if written > 0 {
                        info!(
                            peer = node,
                            written,
                            "what was held for {node} is written (to it, or to the slaves serving its users)"
                        );
                    }
                    return;
                }
                continue;
            }
            let batch = Ledger::new(format!("what was held for {node}"), 0, PATIENCE);
            let mut down = false;
            for row in rows {
                if let Ok(el) = parse_element(&row.stanza_xml, ns::CLIENT) {
                    if !self.write_held(node, el, batch.track()).await {
                        // The link dropped again: the next link-up goes on from here.
                        down = true;
                        break;
                    }
                    written += 1;
                } else {
                    warn!(
                        peer = node,
                        id = row.id,
                        "an unreadable held stanza is dropped"
                    );
                }
                after = row.id;
            }
            unsafe_yet.push_back((after, batch));
            // A failed node's users are served elsewhere (failover): its rows go there.
            let elsewhere = self.links.fails_over() && self.links.is_failed(node);
            if down || (!self.links.is_up(node) && !elsewhere) {
                // What was written is kept by the link (and held again if it never goes):
                // released once safe or given up on, so a later drain does not write it twice.
                if self.release_safe(node, &mut unsafe_yet, 0).await && self.links.is_up(node) {
                    // Back meanwhile (its link-up found this drain running).
                    continue;
                }
                return;
            }
        }
    }

    /// Deletes the rows of the oldest batches in `unsafe_yet` that are safe at `node`, waiting
    /// until at most `ahead` are left (bounded: a ledger stops waiting for a receipt after its
    /// patience). False when the store fails.
    async fn release_safe(
        &self,
        node: &str,
        unsafe_yet: &mut std::collections::VecDeque<(i64, Arc<Ledger>)>,
        ahead: usize,
    ) -> bool {
        loop {
            let mut last = None;
            while let Some((id, batch)) = unsafe_yet.front() {
                if batch.done() < batch.taken() {
                    break;
                }
                last = Some(*id);
                unsafe_yet.pop_front();
            }
            if let Some(last) = last
                && let Err(e) = self.im.release_up_to(self.links.me(), node, last).await
            {
                warn!(
                    peer = node,
                    "cannot release what was written to {node}: {e}"
                );
                return false;
            }
            if unsafe_yet.len() <= ahead {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One held stanza, to its recipient's owner now; false when `node`'s link is down.
    /// `receipt` goes when it is safe.
    async fn write_held(self: &Arc<Self>, node: &str, el: Element, receipt: Receipt) -> bool {
        let owner = match el.attr("to").map(Jid::new) {
            Some(Ok(to)) => match self.sessions.destination(&to) {
                Destination::Node(n) => Some(n),
                _ => None,
            },
            _ => None,
        };
        if owner.as_deref() != Some(node) {
            // The table changed while it was held.
            self.route_with(el, Origin::Local, Some(receipt)).await;
            return true;
        }
        loop {
            match self.links.send_tracked(node, &el, receipt.clone()).await {
                Ok(()) => return true,
                // The link writes the backlog first: wait for room.
                Err(SendError::Full) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => return false,
            }
        }
    }
}
