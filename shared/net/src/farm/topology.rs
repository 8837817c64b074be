//! The topology on the links (issue 13; docs/rebalancing.md). The master is the one that
//! changes it: a reload makes a new [`Topology`] with the next epoch, which the master hands to
//! every node whose link is up, and to every node that comes up later behind it. A node takes
//! what it can take live (its own role and listeners unchanged, the same master; slaves may
//! join and leave) and says so: `<topology-applied epoch/>`, or `<topology-refused epoch reason/>`,
//! which the master logs.
//!
//! A master that restarts starts at epoch 0 with the table of its file. On each link that comes
//! up it compares: at a higher epoch on the peer, its own topology — the file's table and nodes,
//! with the drains it keeps — is re-stamped above the peer's epoch and handed to everyone (the
//! same table too: what is in or out of service may have changed while it was down). So
//! epochs only grow, and the master's file is the truth.

use jabberfarm_config::Topology;
use jabberfarm_proto::link::{LINK_NS, PeerTable};
use jabberfarm_proto::xml::Element;
use tracing::{error, info, warn};

use super::{FarmLinks, LinkEvent};

/// The link-level elements this module handles; everything else on a link is for the node.
pub(super) fn is_control(el: &Element) -> bool {
    el.ns == LINK_NS
        && matches!(
            &*el.name,
            "topology" | "topology-applied" | "topology-refused"
        )
}

impl FarmLinks {
    /// Whether this node is the topology's master (the one that hands changes out).
    pub(super) fn is_master(&self) -> bool {
        self.topology
            .load()
            .master()
            .is_some_and(|m| m.name == self.me)
    }

    /// The master: make `next` this node's topology and hand it to every node whose link is up
    /// (the others get it when they come up). Its epoch must be above the current one.
    /// Returns how many nodes it was handed to.
    pub async fn publish(&self, next: Topology) -> Result<usize, String> {
        self.topology
            .replace(next)
            .map_err(|current| format!("epoch {current} is already in force"))?;
        self.sync_peers();
        Ok(self.hand_over_all().await)
    }

    async fn hand_over_all(&self) -> usize {
        let el = self.topology.load().to_element();
        let mut handed = 0;
        for node in self.up_nodes() {
            match self.send(&node, &el).await {
                Ok(()) => handed += 1,
                // It gets the topology when its link comes back.
                Err(e) => warn!(peer = %node, "topology not handed to {node}: {e}"),
            }
        }
        handed
    }

    /// The master, when a link comes up: bring the peer, or our own epoch count, up to date.
    pub(super) async fn reconcile(&self, peer: &str, theirs: &PeerTable) {
        let mine = Topology::clone(&self.topology.load());
        let same_table = theirs.fingerprint == mine.fingerprint();
        if theirs.epoch > mine.epoch || (theirs.epoch == mine.epoch && !same_table) {
            // Our topology (from our file) is the one in force; the peer's epoch is not below
            // ours, so ours goes above it, and to everyone. With the same table, the nodes may
            // still differ (a slave taken out of service or drained while we were down).
            let epoch = theirs.epoch + 1;
            info!(
                peer = %peer,
                "{peer} runs table {} at epoch {}; handing out ours, {}, as epoch {epoch}",
                theirs.fingerprint,
                theirs.epoch,
                mine.fingerprint()
            );
            self.restamp(mine, epoch);
            self.hand_over_all().await;
        } else if theirs.epoch < mine.epoch {
            // Behind: a node that missed a change, or one that joined with the new file (the
            // same table, but its epoch and node list are from its start).
            if let Err(e) = self.send(peer, &mine.to_element()).await {
                warn!(peer = %peer, "topology not handed to {peer}: {e}");
            }
        }
    }

    /// The current topology again, as `epoch` (a race lost to another change is fine: that
    /// one is newer).
    fn restamp(&self, mut topology: Topology, epoch: u64) {
        topology.epoch = epoch;
        let _ = self.topology.replace(topology);
    }

    /// A link-level element from `from` ([`is_control`]).
    pub(super) async fn on_control(&self, from: &str, el: &Element) {
        let epoch = el.attr("epoch").unwrap_or("?");
        match &*el.name {
            "topology" => self.on_topology(from, el).await,
            "topology-applied" => info!(peer = %from, "{from} runs topology epoch {epoch}"),
            "topology-refused" => error!(
                peer = %from,
                "{from} refused topology epoch {epoch}: {}; it keeps its table, and links \
                 with it stay out of step until its config is fixed and it restarts",
                el.attr("reason").unwrap_or("no reason given")
            ),
            _ => {}
        }
    }

    /// A topology handed over by `from`: taken if it comes from the master, is newer, and
    /// changes nothing this node cannot change live.
    async fn on_topology(&self, from: &str, el: &Element) {
        let current = Topology::clone(&self.topology.load());
        if current.master().is_none_or(|m| m.name != from) {
            warn!(peer = %from, "topology from {from}, which is not the master: ignored");
            return;
        }
        let answer = match Topology::from_element(el) {
            Err(e) => refused(el.attr("epoch").unwrap_or("?"), &format!("unreadable: {e}")),
            Ok(next) if next.epoch <= current.epoch => {
                // Ours is as new (handed over twice, or a restamp raced): nothing to do.
                applied(current.epoch)
            }
            Ok(next) => {
                let refusals = current.refusals(&next);
                if refusals.is_empty() {
                    let (epoch, from_fp) = (next.epoch, current.fingerprint().to_owned());
                    let to_fp = next.fingerprint().to_owned();
                    match self.topology.replace(next) {
                        Ok(()) => {
                            info!(
                                "topology epoch {epoch} from {from}: routing {from_fp} → {to_fp}"
                            );
                            self.sync_peers();
                            let _ = self.events.send(LinkEvent::Topology(epoch)).await;
                            applied(epoch)
                        }
                        Err(now) => applied(now),
                    }
                } else {
                    let reason = refusals.join("; ");
                    error!(
                        "topology epoch {} from {from} refused: {reason}",
                        next.epoch
                    );
                    refused(&next.epoch.to_string(), &reason)
                }
            }
        };
        if let Err(e) = self.send(from, &answer).await {
            warn!(peer = %from, "could not answer {from}'s topology: {e}");
        }
    }
}

fn applied(epoch: u64) -> Element {
    Element::new("topology-applied", LINK_NS).with_attr("epoch", epoch.to_string())
}

fn refused(epoch: &str, reason: &str) -> Element {
    Element::new("topology-refused", LINK_NS)
        .with_attr("epoch", epoch)
        .with_attr("reason", reason)
}
