//! Reload without a restart (issue 13; docs/rebalancing.md): on SIGHUP, or `jabberfarm reload`
//! (an admin request on the farm port), the master reads its config file again and applies
//! what a running farm can take — the routing table (ranges, weights, `other`, the hash key)
//! and `advertise` addresses — as the next topology epoch, which the farm links hand to every
//! node. What it cannot take (another domain or secret, storage, the master, a node's role or
//! listeners, nodes added or removed) is refused with the reason, and the config in force
//! stays.

use std::sync::Arc;

use jabberfarm_config::{FarmConfig, Topology, live_change_refusals};
use jabberfarm_net::farm::{FarmLinks, LINK_NS};
use jabberfarm_proto::xml::Element;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// The config in force and the links that hand changes out; one reload at a time.
pub struct Reloader {
    running: tokio::sync::Mutex<Arc<FarmConfig>>,
    links: Arc<FarmLinks>,
}

impl Reloader {
    pub fn new(cfg: Arc<FarmConfig>, links: Arc<FarmLinks>) -> Reloader {
        Reloader {
            running: tokio::sync::Mutex::new(cfg),
            links,
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
        info!("reloading {}", running.source.display());
        let result = self.apply(&running).await;
        match &result {
            Ok((next, done)) if done.changed => {
                info!(
                    "reload: topology epoch {}, routing {}, handed to {} node(s)",
                    done.epoch, done.fingerprint, done.handed
                );
                *running = next.clone();
            }
            Ok((next, done)) => {
                info!(
                    "reload: the routing table and the nodes are unchanged (epoch {}, \
                     fingerprint {})",
                    done.epoch, done.fingerprint
                );
                *running = next.clone();
            }
            Err(reasons) => {
                for reason in reasons {
                    error!("reload refused: {reason}");
                }
                let epoch = self.links.topology().load().epoch;
                error!("reload refused: the config in force stays (epoch {epoch})");
            }
        }
        result.map(|(_, done)| done)
    }

    async fn apply(
        &self,
        running: &FarmConfig,
    ) -> Result<(Arc<FarmConfig>, Reloaded), Vec<String>> {
        let next = FarmConfig::load(&running.source, Some(&running.data_dir))
            .map_err(|e| e.to_string().lines().map(str::to_owned).collect::<Vec<_>>())?;
        let current = self.links.topology().load_full();
        let topology = Topology {
            epoch: current.epoch + 1,
            table: next.routing.clone(),
            nodes: next.nodes.clone(),
        };
        let mut refused = live_change_refusals(running, &next);
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
            let done = Reloaded {
                epoch: current.epoch,
                fingerprint: current.fingerprint().to_owned(),
                handed: 0,
                changed: false,
            };
            return Ok((next, done));
        }
        let (epoch, fingerprint) = (topology.epoch, topology.fingerprint().to_owned());
        let handed = self.links.publish(topology).await.map_err(|e| vec![e])?;
        Ok((
            next,
            Reloaded {
                epoch,
                fingerprint,
                handed,
                changed: true,
            },
        ))
    }
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
