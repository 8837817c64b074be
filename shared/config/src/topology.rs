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
use jabberfarm_proto::link::LINK_NS;
use jabberfarm_proto::routing::{PrefixRange, RoutingMode, RoutingTable, SlaveWeight};
use jabberfarm_proto::xml::Element;

use crate::nodes::parse_role;
use crate::{Drain, FarmConfig, NodeConfig, RedirectMode, Role};

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

    /// The slaves for a user, best first: the owner, then who serves it when the owner is
    /// failed (hash mode: the rendezvous ranking; ranges mode: the owner only).
    pub fn ranked(&self, localpart: &str) -> Vec<&str> {
        self.table.ranked(localpart)
    }

    /// The routing table's fingerprint: two nodes route alike iff theirs are equal.
    pub fn fingerprint(&self) -> &str {
        self.table.fingerprint()
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The primary master (the first), which hands out changes; a topology has at least one
    /// master.
    pub fn master(&self) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.role == Role::Master)
    }

    /// The topology as the master hands it to the other nodes over a farm link:
    /// `<topology epoch fingerprint><routing …/><node …/>…</topology>` (docs/rebalancing.md).
    pub fn to_element(&self) -> Element {
        let routing = match self.table.mode() {
            RoutingMode::Hash { key, slaves } => slaves.iter().fold(
                Element::new("routing", LINK_NS)
                    .with_attr("mode", "hash")
                    .with_attr("key", hex::encode(key)),
                |r, s| {
                    r.with_child(
                        Element::new("slave", LINK_NS)
                            .with_attr("name", &s.name)
                            .with_attr("weight", s.weight.to_string()),
                    )
                },
            ),
            RoutingMode::Ranges {
                ranges,
                other,
                other_fallback,
            } => ranges.iter().fold(
                Element::new("routing", LINK_NS)
                    .with_attr("mode", "ranges")
                    .with_attr("other", other)
                    .with_opt_attr("other_fallback", names_attr(other_fallback)),
                |r, range| {
                    r.with_child(
                        Element::new("range", LINK_NS)
                            .with_attr("first", &range.first)
                            .with_attr("last", &range.last)
                            .with_attr("node", &range.node)
                            .with_opt_attr("fallback", names_attr(&range.fallback)),
                    )
                },
            ),
        };
        let mut el = Element::new("topology", LINK_NS)
            .with_attr("epoch", self.epoch.to_string())
            .with_attr("fingerprint", self.fingerprint())
            .with_child(routing);
        for n in &self.nodes {
            el = el.with_child(
                Element::new("node", LINK_NS)
                    .with_attr("name", &n.name)
                    .with_attr("role", n.role.to_string())
                    .with_attr("c2s", n.c2s.to_string())
                    .with_opt_attr("c2s_tls", n.c2s_tls.map(|a| a.to_string()))
                    .with_attr("advertise", &n.advertise)
                    .with_attr("farm", n.farm.to_string())
                    .with_opt_attr("s2s", n.s2s.map(|a| a.to_string()))
                    .with_attr("weight", n.weight.to_string())
                    .with_opt_attr("redirect", n.redirect.map(RedirectMode::name))
                    .with_opt_attr("redirect_tls", n.redirect_tls.map(RedirectMode::name))
                    .with_opt_attr("metrics", n.metrics.map(|a| a.to_string()))
                    .with_opt_attr("inservice", (!n.inservice).then_some("false"))
                    .with_opt_attr("drain", n.drain.map(|d| d.to_text())),
            );
        }
        el
    }

    /// A topology from [`Self::to_element`], checked as a config would be: the table valid
    /// and its fingerprint the one announced, one master, every owner a slave.
    pub fn from_element(el: &Element) -> Result<Topology, String> {
        if !el.is("topology", LINK_NS) {
            return Err("not a topology".to_owned());
        }
        let epoch: u64 = el
            .attr("epoch")
            .and_then(|e| e.parse().ok())
            .ok_or("no epoch")?;
        let routing = el
            .children()
            .find(|c| c.is("routing", LINK_NS))
            .ok_or("no routing")?;
        let attr = |e: &Element, name: &str| -> Result<String, String> {
            e.attr(name)
                .map(str::to_owned)
                .ok_or_else(|| format!("<{}/> without {name}", e.name))
        };
        let mode = match routing.attr("mode") {
            Some("hash") => {
                let key = hex::decode(attr(routing, "key")?)
                    .ok()
                    .and_then(|k| <[u8; 16]>::try_from(k).ok())
                    .ok_or("the hash key is not 16 bytes of hex")?;
                let slaves = routing
                    .children()
                    .map(|s| {
                        Ok(SlaveWeight {
                            name: attr(s, "name")?,
                            weight: attr(s, "weight")?
                                .parse()
                                .map_err(|_| "a weight is not a number")?,
                        })
                    })
                    .collect::<Result<_, String>>()?;
                RoutingMode::Hash { key, slaves }
            }
            Some("ranges") => RoutingMode::Ranges {
                other: attr(routing, "other")?,
                other_fallback: names_of(routing.attr("other_fallback")),
                ranges: routing
                    .children()
                    .map(|r| {
                        Ok(PrefixRange {
                            first: attr(r, "first")?,
                            last: attr(r, "last")?,
                            node: attr(r, "node")?,
                            fallback: names_of(r.attr("fallback")),
                        })
                    })
                    .collect::<Result<_, String>>()?,
            },
            _ => return Err("unknown routing mode".to_owned()),
        };
        let table = RoutingTable::new(mode).map_err(|errors| errors.join("; "))?;
        if Some(table.fingerprint()) != el.attr("fingerprint") {
            return Err(format!(
                "the table's fingerprint is {}, not the {} announced",
                table.fingerprint(),
                el.attr("fingerprint").unwrap_or("none")
            ));
        }
        let addr = |e: &Element, name: &str| -> Result<Option<std::net::SocketAddr>, String> {
            e.attr(name)
                .map(|a| {
                    a.parse()
                        .map_err(|_| format!("{name} {a:?} is not an address"))
                })
                .transpose()
        };
        let mode = |e: &Element, name: &str| -> Result<Option<RedirectMode>, String> {
            e.attr(name)
                .map(|m| RedirectMode::parse(m).ok_or(format!("{name} {m:?}")))
                .transpose()
        };
        let nodes: Vec<NodeConfig> = el
            .children()
            .filter(|c| c.is("node", LINK_NS))
            .map(|n| {
                Ok(NodeConfig {
                    name: attr(n, "name")?,
                    role: parse_role(&attr(n, "role")?).ok_or("a role is neither")?,
                    c2s: addr(n, "c2s")?.ok_or("a node without c2s")?,
                    c2s_tls: addr(n, "c2s_tls")?,
                    advertise: attr(n, "advertise")?,
                    farm: addr(n, "farm")?.ok_or("a node without farm")?,
                    s2s: addr(n, "s2s")?,
                    weight: attr(n, "weight")?
                        .parse()
                        .map_err(|_| "a weight is not a number")?,
                    redirect: mode(n, "redirect")?,
                    redirect_tls: mode(n, "redirect_tls")?,
                    metrics: addr(n, "metrics")?,
                    inservice: n.attr("inservice") != Some("false"),
                    drain: n.attr("drain").map(Drain::parse).transpose()?,
                })
            })
            .collect::<Result<_, String>>()?;
        if !nodes.iter().any(|n| n.role == Role::Master) {
            return Err("no master".to_owned());
        }
        if let Some(owner) = table
            .nodes()
            .chain(fallbacks(&table))
            .find(|o| !nodes.iter().any(|n| n.name == *o && n.role == Role::Slave))
        {
            return Err(format!("{owner} owns users but is not a slave of it"));
        }
        Ok(Topology {
            epoch,
            table,
            nodes,
        })
    }

    /// What a node running this topology cannot take from `next` live, each with the reason
    /// (the node-level part of [`live_change_refusals`]). Slaves may join and leave; the
    /// master and a staying node's role and listeners may not change.
    pub fn refusals(&self, next: &Topology) -> Vec<String> {
        node_refusals(&self.nodes, &next.nodes)
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
/// weights, `other`; with data on the slaves it moves with its users), `advertise`
/// and the `[rebalance]` rate change live; the domain, the secret, where data lives, which
/// node is the master and a running node's own role and listening addresses do not.
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
    refused.extend(node_refusals(&current.nodes, &next.nodes));
    refused
}

/// The masters changed, or a node in both lists changed its role or its own listeners.
fn node_refusals(current: &[NodeConfig], next: &[NodeConfig]) -> Vec<String> {
    let mut refused = Vec::new();
    let masters = |nodes: &[NodeConfig]| {
        nodes
            .iter()
            .filter(|n| n.role == Role::Master)
            .map(|n| n.name.clone())
            .collect::<Vec<_>>()
            .join(", ")
    };
    if masters(current) != masters(next) {
        refused.push(format!(
            "the masters {} → {}: the masters are where every login and every remote domain \
             comes in, the first hands out every change; change them with a restart",
            masters(current),
            masters(next)
        ));
    }
    for old in current {
        let Some(new) = next.iter().find(|n| n.name == old.name) else {
            continue;
        };
        let mut changed: Vec<String> = Vec::new();
        if old.role != new.role {
            changed.push(format!("role {} → {}", old.role, new.role));
        }
        let addr = |a: Option<std::net::SocketAddr>| a.map_or("none".to_owned(), |a| a.to_string());
        for (key, a, b) in [
            ("c2s", Some(old.c2s), Some(new.c2s)),
            ("c2s_tls", old.c2s_tls, new.c2s_tls),
            ("farm", Some(old.farm), Some(new.farm)),
            ("s2s", old.s2s, new.s2s),
            ("metrics", old.metrics, new.metrics),
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

    /// The current topology, to keep across awaits.
    pub fn load_full(&self) -> Arc<Topology> {
        self.0.load_full()
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

/// A fallback list as an attribute: names separated by spaces; `None` when empty.
fn names_attr(names: &[String]) -> Option<String> {
    (!names.is_empty()).then(|| names.join(" "))
}

fn names_of(attr: Option<&str>) -> Vec<String> {
    attr.map_or_else(Vec::new, |a| {
        a.split_whitespace().map(str::to_owned).collect()
    })
}

/// Every node a ranges table names as a fallback.
fn fallbacks(table: &RoutingTable) -> impl Iterator<Item = &str> {
    let lists: Vec<&Vec<String>> = match table.mode() {
        RoutingMode::Ranges {
            ranges,
            other_fallback,
            ..
        } => ranges
            .iter()
            .map(|r| &r.fallback)
            .chain([other_fallback])
            .collect(),
        RoutingMode::Hash { .. } => Vec::new(),
    };
    lists.into_iter().flatten().map(String::as_str)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::{HEAD, NODES, parse};
    use jabberfarm_proto::link::LINK_NS;

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
        // Data in MySQL: nothing has to move with a user.
        let central = format!(
            "{HEAD}[storage]\nbackend = \"mysql\"\n[storage.mysql]\n\
             url = \"mysql://jf:pw@127.0.0.1/jf\"\n"
        );
        let current = parse(&format!("{central}{NODES}")).expect("the sample farm loads");
        // A slave added, a weight changed: live.
        let grown = parse(&format!(
            "{central}{}[[node]]\nname = \"slave3\"\nrole = \"slave\"\nc2s = \"127.0.0.1:5522\"\n\
             farm = \"127.0.0.1:7103\"\n",
            NODES.replace("weight = 2", "weight = 3")
        ))
        .expect("a bigger farm loads");
        assert_eq!(live_change_refusals(&current, &grown), Vec::<String>::new());
        assert_eq!(live_change_refusals(&grown, &current), Vec::<String>::new());
        // With the data on the slaves too: it moves with its users.
        let on_slaves = parse(&format!("{HEAD}{NODES}")).expect("the sample farm loads");
        let reweighted = parse(&format!(
            "{HEAD}{}",
            NODES.replace("weight = 2", "weight = 3")
        ))
        .expect("a reweighted farm loads");
        assert_eq!(
            live_change_refusals(&on_slaves, &reweighted),
            Vec::<String>::new()
        );
        let current = on_slaves;

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

    /// What the master hands over a link is what the slave rebuilds: both modes, every node
    /// field; a tampered or broken topology is refused with the reason.
    #[test]
    fn a_topology_crosses_a_link_intact() {
        let hash = parse(&format!("{HEAD}{NODES}")).expect("the sample farm loads");
        let ranges = parse(&format!(
            "{}{NODES}",
            HEAD.replace(
                "mode = \"hash\"\nhash_key = \"000102030405060708090a0b0c0d0e0f\"\n",
                "mode = \"ranges\"\nother = \"slave1\"\nother_fallback = [\"slave2\"]\n\
                 [[routing.ranges]]\nletters = \"a-sm\"\nnode = \"slave1\"\nfallback = [\"slave2\"]\n\
                 [[routing.ranges]]\nletters = \"sn-z\"\nnode = \"slave2\"\n"
            )
        ))
        .expect("the ranges farm loads");
        for cfg in [hash, ranges] {
            let mut t = Topology::of(&cfg);
            t.epoch = 7;
            t.nodes[0].c2s_tls = Some("127.0.0.1:5223".parse().unwrap());
            t.nodes[0].redirect = Some(RedirectMode::Never);
            t.nodes[1].drain = Some(Drain {
                over: Some(std::time::Duration::from_secs(60)),
                stopping: false,
            });
            t.nodes[2].drain = Some(Drain {
                over: None,
                stopping: true,
            });
            assert!(!t.nodes[1].in_service() && t.nodes[1].inservice);
            let el = t.to_element();
            let text = el.to_xml();
            let back = Topology::from_element(&el).unwrap_or_else(|e| panic!("{e}: {text}"));
            assert_eq!(back, t);
            if matches!(t.table.mode(), RoutingMode::Ranges { .. }) {
                assert_eq!(back.ranked("alice"), ["slave1", "slave2"], "{text}");
            }

            let forged = el.clone().with_attr("fingerprint", "0000000000000000");
            let err = Topology::from_element(&forged).unwrap_err();
            assert!(err.contains("not the 0000000000000000 announced"), "{err}");
        }
        let err = Topology::from_element(&Element::new("topology", LINK_NS)).unwrap_err();
        assert_eq!(err, "no epoch");
        let err = Drain::parse("over=soon").unwrap_err();
        assert!(err.contains("neither rate nor over=SECS"), "{err}");
    }

    #[test]
    fn a_node_refuses_what_it_cannot_take_live() {
        let cfg = parse(&format!("{HEAD}{NODES}")).expect("the sample farm loads");
        let now = Topology::of(&cfg);
        let mut next = now.clone();
        next.epoch = 1;
        next.nodes[2].weight = 5;
        next.nodes[2].advertise = "slave2.example.net:5222".to_owned();
        assert_eq!(now.refusals(&next), Vec::<String>::new());
        // A slave leaving and one joining are live.
        let mut joined = next.nodes[2].clone();
        joined.name = "slave3".to_owned();
        next.nodes.pop();
        next.nodes.push(joined);
        assert_eq!(now.refusals(&next), Vec::<String>::new());
        next.nodes[1].farm = "127.0.0.1:7999".parse().unwrap();
        next.nodes[0].name = "master2".to_owned();
        let refused = now.refusals(&next);
        assert_eq!(refused.len(), 2, "{refused:#?}");
        assert!(refused[0].starts_with("the masters master → master2: "));
        assert!(refused[1].starts_with("node slave1: farm 127.0.0.1:7101 → 127.0.0.1:7999"));
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
