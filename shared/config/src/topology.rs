//! The farm's topology: the part of the config that live rebalancing changes while the farm
//! runs — the nodes and where they listen, the routing table and its fingerprint — with an
//! epoch that every change bumps.
//!
//! A node builds one [`SharedTopology`] at start and hands it to everything that asks "who owns
//! this user" or "is this one of our nodes": the master's redirector and s2s relay, the slave's
//! session table, the farm links (their handshake compares fingerprints) and the s2s edge (its
//! from-rewrite knows the internal names). Readers [`load`](SharedTopology::load) a snapshot
//! per decision and never keep it, so a [`replace`](SharedTopology::replace) is seen by the
//! next decision everywhere at once.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use jabberfarm_proto::routing::RoutingTable;

use crate::{FarmConfig, NodeConfig};

/// One version of the farm's shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// 0 for the topology a node starts with; each change is one more.
    pub epoch: u64,
    /// Who owns which user (DESIGN.md D2).
    pub table: RoutingTable,
    /// Every node, master first as in the config.
    pub nodes: Vec<NodeConfig>,
}

impl Topology {
    /// The topology a config describes, at epoch 0.
    pub fn of(cfg: &FarmConfig) -> Topology {
        Topology {
            epoch: 0,
            table: cfg.routing.clone(),
            nodes: cfg.nodes.clone(),
        }
    }

    /// The node that owns `localpart` (already normalised).
    pub fn owner(&self, localpart: &str) -> &str {
        self.table.owner(localpart)
    }

    /// The routing table's fingerprint: two nodes route alike iff theirs are equal.
    pub fn fingerprint(&self) -> &str {
        self.table.fingerprint()
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Whether `domain` is one of the farm's internal node names (DESIGN.md D5: rewritten to
    /// the public domain at the edge). Node names compare as domains do, without case.
    pub fn is_node(&self, domain: &str) -> bool {
        self.nodes
            .iter()
            .any(|n| n.name.eq_ignore_ascii_case(domain))
    }
}

/// The topology a node reads from everywhere: cheap to clone, one value behind it.
#[derive(Clone)]
pub struct SharedTopology(Arc<ArcSwap<Topology>>);

impl SharedTopology {
    pub fn new(topology: Topology) -> SharedTopology {
        SharedTopology(Arc::new(ArcSwap::from_pointee(topology)))
    }

    /// The current topology, for one decision.
    pub fn load(&self) -> Guard<Arc<Topology>> {
        self.0.load()
    }

    /// Make `next` the topology every reader sees from now on. Its epoch must be above the
    /// current one: a stale change is refused and the current epoch returned.
    pub fn replace(&self, next: Topology) -> Result<(), u64> {
        let current = self.0.load();
        if next.epoch <= current.epoch {
            return Err(current.epoch);
        }
        let next = Arc::new(next);
        let prev = self.0.compare_and_swap(&*current, next);
        if Arc::ptr_eq(&prev, &current) {
            Ok(())
        } else {
            // Another change won the race: refuse, and let the caller retry on top of it.
            Err(prev.epoch)
        }
    }
}

impl std::fmt::Debug for SharedTopology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedTopology")
            .field(&**self.load())
            .finish()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::{HEAD, NODES, parse};

    #[test]
    fn readers_see_a_replacement_at_their_next_load() {
        let cfg = parse(&format!("{HEAD}{NODES}")).expect("the sample farm loads");
        let shared = SharedTopology::new(Topology::of(&cfg));
        let reader = shared.clone();
        let before = reader.load();
        assert_eq!(before.epoch, 0);
        assert_eq!(before.fingerprint(), cfg.routing.fingerprint());
        assert!(before.is_node("SLAVE1"), "node names compare without case");
        assert!(!before.is_node("example.org"));

        let mut next = Topology::clone(&before);
        next.epoch = 1;
        next.nodes.retain(|n| n.name != "slave2");
        shared.replace(next).unwrap();
        // A snapshot taken before stays as it was; the next load sees the change.
        assert!(before.node("slave2").is_some());
        assert_eq!(reader.load().epoch, 1);
        assert!(reader.load().node("slave2").is_none());
    }

    #[test]
    fn a_stale_epoch_is_refused() {
        let cfg = parse(&format!("{HEAD}{NODES}")).expect("the sample farm loads");
        let shared = SharedTopology::new(Topology::of(&cfg));
        let mut next = Topology::of(&cfg);
        assert_eq!(shared.replace(next.clone()), Err(0));
        next.epoch = 5;
        shared.replace(next.clone()).unwrap();
        next.epoch = 4;
        assert_eq!(shared.replace(next), Err(5));
        assert_eq!(shared.load().epoch, 5);
    }
}
