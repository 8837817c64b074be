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

/// What a farm running `current` cannot take from `next` without a restart, each said with
/// the reason; empty when `next` can be applied live (docs/rebalancing.md). Routing (ranges,
/// weights, `other`), nodes added or removed, `advertise` and the `[rebalance]` rate change
/// live; the domain, the secret, where data lives, which node is the master and a running
/// node's own role and listening addresses do not.
pub fn live_change_refusals(current: &FarmConfig, next: &FarmConfig) -> Vec<String> {
    let mut refused = Vec::new();
    if current.domain != next.domain {
        refused.push(format!(
            "domain {} → {}: a farm serves one domain for its life (every JID, roster and \
             certificate names it); set up a new farm",
            current.domain, next.domain
        ));
    }
    if current.secret != next.secret {
        refused.push(
            "secret: the farm links authenticate with it, so nodes with the old and the new \
             one could not talk; change it with a restart of every node"
                .to_owned(),
        );
    }
    if current.storage != next.storage {
        refused.push(
            "storage: where accounts and IM data live cannot change under running nodes; \
             migrate the data, then restart"
                .to_owned(),
        );
    }
    let master = |c: &FarmConfig| c.master().name.clone();
    if master(current) != master(next) {
        refused.push(format!(
            "the master {} → {}: the master is where every login and every remote domain \
             comes in; change it with a restart",
            master(current),
            master(next)
        ));
    }
    for old in &current.nodes {
        let Some(new) = next.nodes.iter().find(|n| n.name == old.name) else {
            continue;
        };
        let mut changed: Vec<String> = Vec::new();
        if old.role != new.role {
            changed.push(format!("role {:?} → {:?}", old.role, new.role));
        }
        let addr = |a: Option<std::net::SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
        for (key, a, b) in [
            ("c2s", Some(old.c2s), Some(new.c2s)),
            ("c2s_tls", old.c2s_tls, new.c2s_tls),
            ("farm", Some(old.farm), Some(new.farm)),
            ("s2s", old.s2s, new.s2s),
        ] {
            if a != b {
                changed.push(format!("{key} {} → {}", addr(a), addr(b)));
            }
        }
        if !changed.is_empty() {
            refused.push(format!(
                "node {}: {}: a running node keeps its role and its listeners; restart it \
                 with the new config (or add a node under a new name and remove this one)",
                old.name,
                changed.join(", ")
            ));
        }
    }
    refused
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
    fn live_changes_and_the_ones_that_need_a_restart() {
        let current = parse(&format!("{HEAD}{NODES}")).expect("the sample farm loads");
        // A slave added, a weight changed: live.
        let grown = parse(&format!(
            "{HEAD}{}[[node]]\nname = \"slave3\"\nrole = \"slave\"\nc2s = \"127.0.0.1:5522\"\n\
             farm = \"127.0.0.1:7103\"\n",
            NODES.replace("weight = 2", "weight = 3")
        ))
        .expect("a bigger farm loads");
        assert_eq!(live_change_refusals(&current, &grown), Vec::<String>::new());
        assert_eq!(live_change_refusals(&grown, &current), Vec::<String>::new());

        let moved = parse(&format!(
            "{}{}",
            HEAD.replace("example.net", "example.org")
                .replace("s3cret", "other"),
            NODES.replace("127.0.0.1:7101", "127.0.0.1:7201")
        ))
        .expect("the changed farm loads");
        let refused = live_change_refusals(&current, &moved);
        assert_eq!(refused.len(), 3, "{refused:#?}");
        assert!(refused[0].starts_with("domain example.net → example.org: "));
        assert!(refused[1].starts_with("secret: "));
        assert!(
            refused[2].starts_with("node slave1: farm 127.0.0.1:7101 → 127.0.0.1:7201: "),
            "{}",
            refused[2]
        );
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
