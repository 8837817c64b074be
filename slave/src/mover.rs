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
//! With the data in this slave's own file (SQLite), every user of the file that now belongs
//! elsewhere is handed over with its data instead ([`handover`]): connected or not, at the
//! same rate.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use jabberfarm_proto::xml::StreamError;
use tokio::sync::Notify;
use tracing::{info, warn};

use crate::{Slave, handover};

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
    let per_node_data = slave.store.sqlite().is_some();
    let rate = slave.config.rebalance.users_per_second.max(1);
    let gap = Duration::from_secs(1) / rate;
    loop {
        tokio::select! {
            _ = slave.mover.wake.notified() => {}
            _ = slave.shutdown.cancelled() => return,
        }
        // Every node takes a change within milliseconds of the others (one frame per link):
        // moving users only after that sends nobody to a slave that would still send them
        // back.
        tokio::select! {
            _ = tokio::time::sleep(SETTLE) => {}
            _ = slave.shutdown.cancelled() => return,
        }
        let epoch = slave.sessions.topology.load().epoch;
        if per_node_data {
            // A removed slave stops once its file has handed every user over.
            if move_data(&slave, epoch, gap, rate).await && removed(&slave) {
                stop_when_empty(&slave, epoch).await;
                return;
            }
            continue;
        }
        let leaving = slave.sessions.owned_elsewhere();
        if leaving.is_empty() {
            if removed(&slave) {
                stop_when_empty(&slave, epoch).await;
                return;
            }
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
            let owner = slave.sessions.serving(&topology, &user).to_owned();
            if owner != slave.sessions.node {
                moved += send_sessions_to(&slave, &user, &owner);
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

/// Closes every session of `user` here with `<see-other-host/>` naming node `to`'s address;
/// how many there were.
pub(crate) fn send_sessions_to(slave: &Slave, user: &str, to: &str) -> usize {
    let topology = slave.sessions.topology.load();
    topology.node(to).map_or(0, |node| {
        let e = StreamError::see_other_host(node.advertise.clone());
        slave.sessions.close_user(user, &e)
    })
}

/// Data on the slaves: every user in this slave's file that the table gives to another slave
/// goes there with its rows ([`handover::hand_over`]: its sessions here closed first), at
/// most `rate` a second and [`IN_FLIGHT`] at once. Those that fail (a link down, a node that
/// does not answer) go again when a link comes up, or after [`RETRY`]. `true` when no user
/// here belongs elsewhere any more.
async fn move_data(slave: &Arc<Slave>, epoch: u64, gap: Duration, rate: u32) -> bool {
    let Some(db) = slave.store.sqlite() else {
        return true;
    };
    let users = match db.list_users().await {
        Ok(u) => u,
        Err(e) => {
            warn!("cannot list the users to hand over: {e}");
            return false;
        }
    };
    let topology = slave.sessions.topology.load_full();
    let me = slave.sessions.node.clone();
    let leaving: Vec<String> = users
        .into_iter()
        .filter(|u| topology.owner(u) != me)
        .collect();
    if leaving.is_empty() {
        return true;
    }
    info!(
        "topology epoch {epoch}: handing {} user(s) and their data to their new slaves, {rate}/s",
        leaving.len()
    );
    slave.mover.pending.store(leaving.len(), Ordering::Relaxed);
    let started = Instant::now();
    let (mut moved, mut failed) = (0usize, 0usize);
    let mut next = tokio::time::Instant::now();
    let mut running = tokio::task::JoinSet::new();
    let mut settle = |r: Result<Result<(), String>, tokio::task::JoinError>| {
        match r {
            Ok(Ok(())) => moved += 1,
            Ok(Err(e)) => {
                failed += 1;
                warn!("hand-over: {e}");
            }
            Err(_) => failed += 1,
        }
        slave.mover.pending.fetch_sub(1, Ordering::Relaxed);
    };
    for user in leaving {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = slave.shutdown.cancelled() => return false,
        }
        next += gap;
        while running.len() >= IN_FLIGHT {
            if let Some(r) = running.join_next().await {
                settle(r);
            }
        }
        // Asked again per user: a newer change may have given the user back to us.
        let owner = slave.sessions.topology.load().owner(&user).to_owned();
        let s = slave.clone();
        running.spawn(async move {
            if owner == s.sessions.node {
                return Ok(());
            }
            handover::hand_over(&s, &user, &owner)
                .await
                .map_err(|e| format!("{user} to {owner}: {e}"))
        });
    }
    while let Some(r) = running.join_next().await {
        settle(r);
    }
    info!(
        "topology epoch {epoch}: {moved} user(s) handed over with their data in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if failed > 0 {
        warn!(
            "topology epoch {epoch}: {failed} user(s) not handed over yet: tried again when a \
             link comes up, or in {} s",
            RETRY.as_secs()
        );
        let s = slave.clone();
        slave.tasks.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep(RETRY) => s.mover.wake(),
                _ = s.shutdown.cancelled() => {}
            }
        });
    }
    failed == 0
}

/// Hand-overs under way at once.
const IN_FLIGHT: usize = 128;
/// When hand-overs that failed are tried again (if no link came up before).
const RETRY: Duration = Duration::from_secs(5);
/// How long after a topology change the moves start.
const SETTLE: Duration = Duration::from_millis(500);

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
