//! Connected users move when the routing table changes (issue 13; docs/rebalancing.md). When
//! the master hands this slave a new topology, the users with a session here that the new table
//! gives to another slave are sent there, at most `[rebalance] users_per_second` a second: each
//! of their sessions is closed with `<see-other-host/>` naming the new owner (a client that
//! came through the master's relay gets `<reset/>` instead, reconnects to the master, and is
//! relayed to the new owner). Messages for them meanwhile go to the new owner, which stores
//! them offline until they log in there.
//!
//! A slave the new topology leaves out (removed from the config) moves every user it has this
//! way, waits for their sessions to close, and stops: removing a slave empties it first.
//!
//! Only when the users' data is central (MySQL, or LDAP with its IM data in MySQL): with data
//! in this slave's own file the new owner could not log them in yet, so their sessions stay
//! here and the log says how many wait for their data to move.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jabberfarm_proto::xml::StreamError;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::Slave;

/// Wakes the mover, and counts what it still has to do (for `jabberfarm status`).
#[derive(Debug, Default)]
pub struct Mover {
    wake: Notify,
    /// Users still to send to their new owner in the current move.
    pending: AtomicUsize,
}

impl Mover {
    /// A topology change arrived: look again at who belongs here.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Users left to move.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// Moves users after each topology change, until the slave stops.
pub async fn run(slave: Arc<Slave>) {
    let per_node_data = slave
        .config
        .storage
        .sqlite_path(&slave.config.data_dir, &slave.sessions.node)
        .is_some();
    let rate = slave.config.rebalance.users_per_second.max(1);
    let gap = Duration::from_secs(1) / rate;
    loop {
        tokio::select! {
            _ = slave.mover.wake.notified() => {}
            _ = slave.shutdown.cancelled() => return,
        }
        let leaving = slave.sessions.owned_elsewhere();
        let epoch = slave.sessions.topology.load().epoch;
        if leaving.is_empty() {
            if removed(&slave) {
                stop_when_empty(&slave, epoch).await;
                return;
            }
            continue;
        }
        if per_node_data {
            warn!(
                "topology epoch {epoch}: {} connected user(s) here now belong to other slaves; \
                 their sessions stay until their data can move with them (not built yet)",
                leaving.len()
            );
            continue;
        }
        info!(
            "topology epoch {epoch}: moving {} connected user(s) to their new slaves, {rate}/s",
            leaving.len()
        );
        slave.mover.pending.store(leaving.len(), Ordering::Relaxed);
        let started = Instant::now();
        let mut moved = 0;
        let mut next = tokio::time::Instant::now();
        for user in leaving {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = slave.shutdown.cancelled() => return,
            }
            next += gap;
            // Asked again per user: a newer change may have given the user back to us.
            let topology = slave.sessions.topology.load();
            let owner = topology.owner(&user);
            if owner != slave.sessions.node
                && let Some(node) = topology.node(owner)
            {
                let e = StreamError::see_other_host(node.advertise.clone());
                moved += slave.sessions.close_user(&user, &e);
            }
            slave.mover.pending.fetch_sub(1, Ordering::Relaxed);
        }
        info!(
            "topology epoch {epoch}: {moved} session(s) sent to their new slaves in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        if removed(&slave) {
            stop_when_empty(&slave, epoch).await;
            return;
        }
    }
}

/// Whether the topology in force has left this slave out (docs/rebalancing.md, "A slave
/// leaves").
fn removed(slave: &Slave) -> bool {
    let topology = slave.sessions.topology.load();
    topology.node(&slave.sessions.node).is_none()
}

/// This slave was removed from the farm and its users were sent on: once their sessions have
/// closed (at most [`EMPTY_WAIT`]), the node stops, and its links with it.
async fn stop_when_empty(slave: &Slave, epoch: u64) {
    let deadline = tokio::time::Instant::now() + EMPTY_WAIT;
    while slave.sessions.user_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = slave.shutdown.cancelled() => return,
        }
    }
    let left = slave.sessions.session_count();
    if left > 0 {
        warn!(
            "{left} session(s) did not close in {} s",
            EMPTY_WAIT.as_secs()
        );
    }
    info!(
        "topology epoch {epoch} removes {} from the farm: its users are on their new slaves; \
         stopping",
        slave.sessions.node
    );
    slave.shutdown.cancel();
}

/// How long a removed slave waits for the sessions it closed to end before it stops anyway
/// (the rest are closed with `<system-shutdown/>`).
const EMPTY_WAIT: Duration = Duration::from_secs(30);
