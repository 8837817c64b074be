//! A slave stopped with SIGTERM (docs/operations.md, "Draining a slave"): with central data,
//! and other slaves to take its users, it first asks the master to drain it — no new logins,
//! its sessions moved to their next slave as by `jabberfarm drain` — and stops once it has
//! no session left, or when `[farm] drain_on_stop` is up (the rest are closed with
//! `<system-shutdown/>`). The drain ends with the process: started again, the slave is back
//! in service and its users are sent home.

use std::time::Duration;

use jabberfarm_net::farm::LINK_NS;
use jabberfarm_proto::xml::Element;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::Slave;

/// How long the master has to hand out the topology that drains this slave.
const MASTER_WAIT: Duration = Duration::from_secs(3);
/// How often the slave looks whether its sessions are gone.
const POLL: Duration = Duration::from_millis(100);

/// Drains this slave before it stops, when it can; returns when it may stop.
pub async fn drain_before_stop(slave: &Slave) {
    let node = slave.sessions.node.clone();
    let grace = slave.config.farm.drain_on_stop;
    let sessions = slave.sessions.session_count();
    let why_not = if grace.is_zero() {
        Some("farm.drain_on_stop = 0".to_owned())
    } else if !slave.links.fails_over() {
        Some("its users' data is on it: no other slave can serve them".to_owned())
    } else if sessions == 0 {
        Some("no session to move".to_owned())
    } else {
        None
    };
    if let Some(why) = why_not {
        info!("stopping {node} at once ({why})");
        return;
    }
    let topology = slave.sessions.topology.load_full();
    let Some(master) = topology.master().map(|m| m.name.clone()) else {
        return;
    };
    let drained = || {
        slave
            .sessions
            .topology
            .load()
            .node(&node)
            .is_some_and(|n| n.drain.is_some())
    };
    if !drained() {
        let ask = Element::new("stopping", LINK_NS).with_attr("over", grace.as_secs().to_string());
        if let Err(e) = slave.links.try_send(&master, &ask) {
            warn!("stopping {node} at once: the master cannot drain it first ({e})");
            return;
        }
        info!(
            "draining {node} before it stops: {sessions} session(s) to move, at most {} s \
             (a second signal stops at once)",
            grace.as_secs()
        );
        let asked = Instant::now();
        while !drained() {
            if asked.elapsed() >= MASTER_WAIT {
                warn!(
                    "stopping {node} at once: the master did not drain it (its log says why: \
                     the last slave in service, …)"
                );
                return;
            }
            tokio::time::sleep(POLL).await;
        }
    }
    match crate::mover::wait_empty(slave, grace).await {
        None => {}
        Some(0) => info!("{node} is drained: stopping"),
        Some(left) => warn!(
            "{node}: {left} session(s) still here after {} s (farm.drain_on_stop): stopping",
            grace.as_secs()
        ),
    }
}
