//! Reload without a restart (issue 13; docs/rebalancing.md): on SIGHUP, or `jabberfarm reload`
//! (an admin request on the farm port), the master reads its config file again and applies
//! what a running farm can take — the routing table (ranges, weights, `other`, the hash key)
//! and `advertise` addresses — as the next topology epoch, which the farm links hand to every
//! node. What it cannot take (another domain or secret, storage, the master, a node's role or
//! listeners, nodes added or removed) is refused with the reason, and the config in force
//! stays.
//!
//! The master also keeps the drains (`jabberfarm drain`, docs/operations.md): slaves taken out
//! of service by command rather than by the file. They are laid over every topology it hands
//! out, reloads included, and kept in `<data_dir>/<master>.drained` across its restarts; a
//! drain a slave asked for itself on SIGTERM ends with that slave's process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jabberfarm_config::{Drain, FarmConfig, Role, Topology, live_change_refusals};
use jabberfarm_net::farm::{FarmLinks, LINK_NS};
use jabberfarm_proto::xml::Element;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// The config in force, the drains laid over it, and the links that hand changes out; one
/// change at a time.
pub struct Reloader {
    running: tokio::sync::Mutex<Running>,
    links: Arc<FarmLinks>,
    /// Where the operators' drains are kept across restarts.
    drains_file: PathBuf,
}

struct Running {
    cfg: Arc<FarmConfig>,
    /// Slaves drained, by name.
    drains: BTreeMap<String, Drain>,
}

impl Running {
    /// The topology `epoch` for the config in force with the drains laid over it.
    fn topology(&self, epoch: u64) -> Topology {
        Topology {
            epoch,
            table: self.cfg.routing.clone(),
            nodes: with_drains(&self.cfg, &self.drains),
        }
    }
}

/// `cfg`'s nodes, each drained slave with its drain.
fn with_drains(
    cfg: &FarmConfig,
    drains: &BTreeMap<String, Drain>,
) -> Vec<jabberfarm_config::NodeConfig> {
    cfg.nodes
        .iter()
        .map(|n| {
            let mut n = n.clone();
            n.drain = drains.get(&n.name).copied();
            n
        })
        .collect()
}

impl Reloader {
    /// The reloader of `cfg`, with the drains kept in `drains_file` from before a restart
    /// (slaves the config still has).
    pub fn new(cfg: Arc<FarmConfig>, links: Arc<FarmLinks>, drains_file: PathBuf) -> Reloader {
        let drains = match load_drains(&drains_file) {
            Ok(d) => d,
            Err(e) => {
                warn!(
                    "cannot read {}: {e}; no slave is drained",
                    drains_file.display()
                );
                BTreeMap::new()
            }
        };
        let drains: BTreeMap<String, Drain> = drains
            .into_iter()
            .filter(|(name, _)| cfg.node(name).is_some_and(|n| n.role == Role::Slave))
            .collect();
        if !drains.is_empty() {
            let names: Vec<&str> = drains.keys().map(String::as_str).collect();
            info!(
                "still drained from before the restart: {} (`jabberfarm undrain` ends a drain)",
                names.join(", ")
            );
        }
        Reloader {
            running: tokio::sync::Mutex::new(Running { cfg, drains }),
            links,
            drains_file,
        }
    }

    /// Lays the drains kept from before a restart over the topology (before the links start:
    /// every node gets it as they come up).
    pub async fn start(&self) {
        let running = self.running.lock().await;
        if running.drains.is_empty() {
            return;
        }
        if let Err(e) = self.publish(&running).await {
            warn!("the drains kept from before the restart are not in force: {e}");
        }
    }

    /// Hands out the config in force with its drains as the next epoch; the epoch.
    async fn publish(&self, running: &Running) -> Result<(u64, usize), String> {
        // A link that comes up may re-stamp the topology meanwhile: take the epoch again.
        let mut tries = 0;
        loop {
            let epoch = self.links.topology().load().epoch + 1;
            match self.links.publish(running.topology(epoch)).await {
                Ok(handed) => return Ok((epoch, handed)),
                Err(e) if tries >= 3 => return Err(e),
                Err(_) => tries += 1,
            }
        }
    }

    /// `jabberfarm drain NODE [--over]` (`stopping`: the slave itself, on SIGTERM): the slave
    /// takes no new logins and its sessions move to their next slave. The answer:
    /// `<draining node epoch/>`, or `<drain-refused reason/>`.
    pub async fn drain(&self, node: &str, over: Option<Duration>, stopping: bool) -> Element {
        let refused = |reason: String| {
            Element::new("drain-refused", LINK_NS)
                .with_attr("node", node)
                .with_attr("reason", reason)
        };
        let mut running = self.running.lock().await;
        if let Err(reason) = drainable(&running, &self.links, node) {
            warn!("drain {node} refused: {reason}");
            return refused(reason);
        }
        let drain = match running.drains.get(node) {
            // An operator's drain outlives the process: the slave stays drained when it
            // comes back.
            Some(d) if stopping && !d.stopping => *d,
            _ => Drain { over, stopping },
        };
        match self.set_drain(&mut running, node, Some(drain)).await {
            Ok(Some(epoch)) => {
                let window = over.map_or("at [rebalance] users_per_second".to_owned(), |o| {
                    format!("over {} s", o.as_secs())
                });
                info!(
                    "topology epoch {epoch}: {node} drained{}: no new logins, its sessions \
                     move to their next slave {window}",
                    if stopping { " (it is stopping)" } else { "" }
                );
                draining(node, epoch)
            }
            Ok(None) => draining(node, self.links.topology().load().epoch),
            Err(e) => refused(e),
        }
    }

    /// `jabberfarm undrain NODE`: back in service (its users are sent home at the
    /// `[rebalance]` rate). `<undrained node epoch was/>` (`was`: whether it was drained).
    pub async fn undrain(&self, node: &str) -> Element {
        let mut running = self.running.lock().await;
        if running.cfg.node(node).is_none() {
            return Element::new("error", LINK_NS)
                .with_attr("reason", format!("no node {node} in the config in force"));
        }
        let (epoch, was) = match self.set_drain(&mut running, node, None).await {
            Ok(Some(epoch)) => {
                info!("topology epoch {epoch}: {node} is back in service");
                (epoch, true)
            }
            Ok(None) => (self.links.topology().load().epoch, false),
            Err(e) => return Element::new("error", LINK_NS).with_attr("reason", e),
        };
        Element::new("undrained", LINK_NS)
            .with_attr("node", node)
            .with_attr("epoch", epoch.to_string())
            .with_attr("was", was.to_string())
    }

    /// A slave's sessions are gone (its process stopped): the drain it asked for on SIGTERM
    /// ends with it. Its users stay with their next slave while it is failed.
    pub async fn lost(&self, node: &str) {
        let mut running = self.running.lock().await;
        if !running.drains.get(node).is_some_and(|d| d.stopping) {
            return;
        }
        match self.set_drain(&mut running, node, None).await {
            Ok(Some(epoch)) => info!(
                "topology epoch {epoch}: {node} stopped after its drain; it is back in service \
                 when it starts again"
            ),
            Ok(None) => {}
            Err(e) => warn!("{node}'s drain not ended: {e}"),
        }
    }

    /// `node`'s drain becomes `drain` (`None`: none) and the topology goes out with it; the
    /// drain file follows. `Ok(None)`: nothing changed; on an error nothing did either.
    async fn set_drain(
        &self,
        running: &mut Running,
        node: &str,
        drain: Option<Drain>,
    ) -> Result<Option<u64>, String> {
        let before = match drain {
            Some(d) => running.drains.insert(node.to_owned(), d),
            None => running.drains.remove(node),
        };
        if before == drain {
            return Ok(None);
        }
        match self.publish(running).await {
            Ok((epoch, _)) => {
                self.save(running);
                Ok(Some(epoch))
            }
            Err(e) => {
                match before {
                    Some(d) => running.drains.insert(node.to_owned(), d),
                    None => running.drains.remove(node),
                };
                Err(e)
            }
        }
    }

    /// Writes the operators' drains (not those of stopping slaves) to the drain file.
    fn save(&self, running: &Running) {
        let text: String = running
            .drains
            .iter()
            .filter(|(_, d)| !d.stopping)
            .map(|(name, d)| format!("{name} {}\n", d.to_text()))
            .collect();
        let result = if text.is_empty() {
            match std::fs::remove_file(&self.drains_file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        } else {
            write_atomically(&self.drains_file, &text)
        };
        if let Err(e) = result {
            warn!(
                "cannot write {}: {e}; a restart of the master forgets the drains",
                self.drains_file.display()
            );
        }
    }

    /// Reload `cfg.source` on every SIGHUP until `shutdown`.
    pub fn on_sighup(self: &Arc<Self>, tracker: &TaskTracker, shutdown: CancellationToken) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                warn!("no SIGHUP handler ({e}): reload with `jabberfarm reload`");
                return;
            }
        };
        let me = self.clone();
        tracker.spawn(async move {
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    got = hup.recv() => if got.is_none() { return },
                }
                info!("SIGHUP: reloading the config");
                let _ = me.reload().await;
            }
        });
    }

    /// The answer to an admin `<reload/>`: `<reloaded epoch fingerprint handed/>`, or
    /// `<reload-refused>` with one `<reason/>` per thing it cannot take.
    pub async fn answer(&self) -> Element {
        match self.reload().await {
            Ok(done) => Element::new("reloaded", LINK_NS)
                .with_attr("epoch", done.epoch.to_string())
                .with_attr("fingerprint", done.fingerprint)
                .with_attr("handed", done.handed.to_string())
                .with_attr("changed", done.changed.to_string()),
            Err(reasons) => reasons
                .into_iter()
                .fold(Element::new("reload-refused", LINK_NS), |el, r| {
                    el.with_child(Element::new("reason", LINK_NS).with_text(r))
                }),
        }
    }

    /// Reads the file again and hands its topology out; every outcome logged.
    pub async fn reload(&self) -> Result<Reloaded, Vec<String>> {
        let mut running = self.running.lock().await;
        info!("reloading {}", running.cfg.source.display());
        let result = self.apply(&mut running).await;
        match &result {
            Ok(done) if done.changed => info!(
                "reload: topology epoch {}, routing {}, handed to {} node(s)",
                done.epoch, done.fingerprint, done.handed
            ),
            Ok(done) => info!(
                "reload: the routing table and the nodes are unchanged (epoch {}, \
                 fingerprint {})",
                done.epoch, done.fingerprint
            ),
            Err(reasons) => {
                for reason in reasons {
                    error!("reload refused: {reason}");
                }
                let epoch = self.links.topology().load().epoch;
                error!("reload refused: the config in force stays (epoch {epoch})");
            }
        }
        result
    }

    /// Reads the file; on success `running` is the new config (its drains kept for the slaves
    /// it still has).
    async fn apply(&self, running: &mut Running) -> Result<Reloaded, Vec<String>> {
        let next = FarmConfig::load(&running.cfg.source, Some(&running.cfg.data_dir))
            .map_err(|e| e.to_string().lines().map(str::to_owned).collect::<Vec<_>>())?;
        let current = self.links.topology().load_full();
        let mut drains = running.drains.clone();
        drains.retain(|name, _| next.node(name).is_some_and(|n| n.role == Role::Slave));
        let topology = Topology {
            epoch: current.epoch + 1,
            table: next.routing.clone(),
            nodes: with_drains(&next, &drains),
        };
        let mut refused = live_change_refusals(&running.cfg, &next);
        for reason in current.refusals(&topology) {
            if !refused.contains(&reason) {
                refused.push(reason);
            }
        }
        if !refused.is_empty() {
            return Err(refused);
        }
        let next = Arc::new(next);
        if topology.table == current.table && topology.nodes == current.nodes {
            *running = Running { cfg: next, drains };
            return Ok(Reloaded {
                epoch: current.epoch,
                fingerprint: current.fingerprint().to_owned(),
                handed: 0,
                changed: false,
            });
        }
        let (epoch, fingerprint) = (topology.epoch, topology.fingerprint().to_owned());
        let handed = self.links.publish(topology).await.map_err(|e| vec![e])?;
        *running = Running { cfg: next, drains };
        self.save(running);
        Ok(Reloaded {
            epoch,
            fingerprint,
            handed,
            changed: true,
        })
    }
}

fn draining(node: &str, epoch: u64) -> Element {
    Element::new("draining", LINK_NS)
        .with_attr("node", node)
        .with_attr("epoch", epoch.to_string())
}

/// Why `node` cannot be drained, if it cannot.
fn drainable(running: &Running, links: &FarmLinks, node: &str) -> Result<(), String> {
    let cfg = &running.cfg;
    match cfg.node(node) {
        None => return Err(format!("no node {node} in the config in force")),
        Some(n) if n.role != Role::Slave => {
            return Err(format!("{node} is the master; only a slave can be drained"));
        }
        Some(_) => {}
    }
    if !links.fails_over() {
        return Err(format!(
            "{node}'s users' data is on it (storage on the slaves): no other slave can serve \
             them, so it cannot be drained. To empty it for good, remove it from the config \
             and reload: its users and their data are handed to their new slaves"
        ));
    }
    let usable = |name: &str| {
        cfg.node(name)
            .is_some_and(|n| n.role == Role::Slave && n.inservice)
            && !running.drains.contains_key(name)
    };
    let stranded = cfg.routing.stranded(node, usable);
    match stranded.first().map(String::as_str) {
        None => Ok(()),
        Some("every user") => Err(format!(
            "{node} is the last slave in service: drained, its users would have nowhere to go"
        )),
        Some(_) => Err(format!(
            "{node}'s users in {} have no fallback slave in service: drained, they would have \
             nowhere to go (give their [[routing.ranges]] a `fallback` list, `other_fallback` \
             for other; docs/operations.md)",
            stranded.join(", ")
        )),
    }
}

fn load_drains(path: &std::path::Path) -> std::io::Result<BTreeMap<String, Drain>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(e),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let (name, drain) = line.split_once(' ').unwrap_or((line, "rate"));
            let drain = Drain::parse(drain.trim())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            Ok((name.to_owned(), drain))
        })
        .collect()
}

/// `text` to `path` through a temporary file, so a crash leaves the old file or the new.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

/// What a reload did.
#[derive(Debug)]
pub struct Reloaded {
    /// The epoch in force after it.
    pub epoch: u64,
    pub fingerprint: String,
    /// Nodes the new topology was handed to (the others get it when their link comes up).
    pub handed: usize,
    /// Whether the topology changed (else only the file was read again).
    pub changed: bool,
}
