//! Reload without a restart (issue 13; docs/rebalancing.md): on SIGHUP the master reads its
//! config file again, and applies what a running farm can take — the routing table (ranges,
//! weights, `other`, the hash key) and `advertise` addresses — as the next topology epoch,
//! which the farm links hand to every node. What it cannot take (another domain or secret,
//! storage, the master, a node's role or listeners, nodes added or removed) is refused with
//! the reason, and the config in force stays.

use std::sync::Arc;

use jabberfarm_config::{FarmConfig, Topology, live_change_refusals};
use jabberfarm_net::farm::FarmLinks;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

/// Reload `cfg.source` on every SIGHUP until `shutdown`.
pub(crate) fn on_sighup(
    cfg: Arc<FarmConfig>,
    links: Arc<FarmLinks>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            warn!("no SIGHUP handler ({e}): reload needs a restart");
            return;
        }
    };
    tracker.spawn(async move {
        let mut running = cfg;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            info!("SIGHUP: reloading {}", running.source.display());
            if let Some(next) = reload(&running, &links).await {
                running = Arc::new(next);
            }
        }
    });
}

/// Reads the file again and hands its topology out; the config now in force, or `None` if
/// the old one stays (every reason logged).
async fn reload(running: &FarmConfig, links: &FarmLinks) -> Option<FarmConfig> {
    let next = match FarmConfig::load(&running.source, Some(&running.data_dir)) {
        Ok(next) => next,
        Err(e) => {
            error!("reload refused, the config in force stays:\n{e}");
            return None;
        }
    };
    let current = links.topology().load_full();
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
        for reason in &refused {
            error!("reload refused: {reason}");
        }
        error!(
            "reload refused: the config in force stays (epoch {})",
            current.epoch
        );
        return None;
    }
    if topology.table == current.table && topology.nodes == current.nodes {
        info!(
            "reload: the routing table and the nodes are unchanged (epoch {}, fingerprint {})",
            current.epoch,
            current.fingerprint()
        );
        return Some(next);
    }
    let (epoch, from, to) = (
        topology.epoch,
        current.fingerprint().to_owned(),
        topology.fingerprint().to_owned(),
    );
    match links.publish(topology).await {
        Ok(handed) => {
            info!(
                "reload: topology epoch {epoch}, routing {from} → {to}, handed to {handed} node(s)"
            );
            Some(next)
        }
        Err(e) => {
            error!("reload refused: {e}");
            None
        }
    }
}
