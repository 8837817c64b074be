//! Connected users move when the routing table changes (issue 13; docs/rebalancing.md). When
//! the master hands this slave a new topology, the users with a session here that the new table
//! gives to another slave are sent there, at most `[rebalance] users_per_second` a second: each
//! of their sessions is closed with `<see-other-host/>` naming the new owner (a client that
//! came through the master's relay gets `<reset/>` instead, reconnects to the master, and is
//! relayed to the new owner). Messages for them meanwhile go to the new owner, which stores
//! them offline until they log in there.
//!
//! The same moves empty a slave that is drained (`jabberfarm drain`, or SIGTERM; docs/
//! operations.md) or out of service, spread over the drain's window, and send users home when
//! the slave that owns them is back after a failover.
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

use jabberfarm_net::metrics::{Counters, label};
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
    /// Sessions sent to another slave, by why (`jabberfarm_sessions_moved_total`).
    pub moved: Counters,
}

impl Mover {
    /// A topology change arrived, or a link came up: look again at who belongs here.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Users left to move.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Relaxed)
    }
}

/// Why sessions leave this slave (the `reason` label of `jabberfarm_sessions_moved_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The routing table changed.
    Rebalance,
    /// This slave is drained or out of service.
    Drain,
    /// Their slave is back after a failover.
    Home,
}

impl Why {
    fn label(self) -> &'static str {
        match self {
            Why::Rebalance => "rebalance",
            Why::Drain => "drain",
            Why::Home => "home",
        }
    }
}

/// Moves users after each topology change, until the slave stops.
pub async fn run(slave: Arc<Slave>) {
    let per_node_data = slave.store.sqlite().is_some();
    let rate = slave.config.rebalance.users_per_second.max(1);
    let mut last_epoch = slave.sessions.topology.load().epoch;
    // Woken again while moving: start over at once with what is in force now.
    let mut again = false;
    loop {
        if !again {
            tokio::select! {
                _ = slave.mover.wake.notified() => {}
                _ = slave.shutdown.cancelled() => return,
            }
        }
        again = false;
        // Every node takes a change within milliseconds of the others (one frame per link):
        // moving users only after that sends nobody to a slave that would still send them
        // back.
        tokio::select! {
            _ = tokio::time::sleep(SETTLE) => {}
            _ = slave.shutdown.cancelled() => return,
        }
        let topology = slave.sessions.topology.load_full();
        let epoch = topology.epoch;
        if per_node_data {
            let gap = Duration::from_secs(1) / rate;
            // A removed slave stops once its file has handed every user over.
            if move_data(&slave, epoch, gap, rate).await && removed(&slave) {
                stop_when_empty(&slave, epoch).await;
                return;
            }
            continue;
        }
        let me = topology.node(&slave.sessions.node);
        let why = if me.is_some_and(|n| !n.in_service()) {
            Why::Drain
        } else if epoch != last_epoch {
            Why::Rebalance
        } else {
            Why::Home
        };
        last_epoch = epoch;
        let leaving = slave.sessions.owned_elsewhere();
        if leaving.is_empty() {
            if removed(&slave) {
                stop_when_empty(&slave, epoch).await;
                return;
            }
            continue;
        }
        let drain = me.and_then(|n| n.drain);
        let gap = pace(rate, drain, leaving.len());
        info!(
            "topology epoch {epoch}: moving {} connected user(s) to their new slaves ({}), \
             one every {} ms",
            leaving.len(),
            why.label(),
            gap.as_millis()
        );
        slave.mover.pending.store(leaving.len(), Ordering::Relaxed);
        // Counters are shared handles: a clone, not the family's lock, across the awaits.
        let moved_now = slave
            .mover
            .moved
            .get_or_create(&label("reason", why.label()))
            .clone();
        let started = Instant::now();
        let mut moved = 0;
        let mut next = tokio::time::Instant::now();
        for user in leaving {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = slave.mover.wake.notified() => {
                    again = true;
                    break;
                }
                _ = slave.shutdown.cancelled() => return,
            }
            next += gap;
            // Asked again per user: a newer change may have given the user back to us.
            let topology = slave.sessions.topology.load();
            let owner = slave.sessions.serving(&topology, &user).to_owned();
            if owner != slave.sessions.node {
                let n = send_sessions_to(&slave, &user, &owner);
                moved += n;
                moved_now.inc_by(n as u64);
            }
            slave.mover.pending.fetch_sub(1, Ordering::Relaxed);
        }
        slave.mover.pending.store(0, Ordering::Relaxed);
        info!(
            "topology epoch {epoch}: {moved} session(s) sent to their new slaves in {:.1} s{}",
            started.elapsed().as_secs_f64(),
            if again {
                " (a newer change came: looking again)"
            } else {
                ""
            }
        );
        if removed(&slave) {
            stop_when_empty(&slave, epoch).await;
            return;
        }
        if drain.is_some() && !again {
            let s = slave.clone();
            slave
                .tasks
                .spawn(async move { say_drained(&s, epoch).await });
        }
    }
}

/// The gap between two users moved: `[rebalance] users_per_second`; a drain with a window
/// spreads the `count` users over it; a slave stopping (SIGTERM) goes at least as fast as
/// finishes within 80 % of its window.
fn pace(rate: u32, drain: Option<jabberfarm_config::Drain>, count: usize) -> Duration {
    let by_rate = Duration::from_secs(1) / rate;
    let count = u32::try_from(count.max(1)).unwrap_or(u32::MAX);
    match drain {
        Some(d) => match d.over {
            Some(over) if d.stopping => by_rate.min(over * 4 / 5 / count),
            Some(over) => over / count,
            None => by_rate,
        },
        None => by_rate,
    }
}

/// Logs once the drained slave has no session left (the sessions it closed take a moment).
async fn say_drained(slave: &Slave, epoch: u64) {
    let Some(left) = wait_empty(slave, EMPTY_WAIT).await else {
        return;
    };
    let topology = slave.sessions.topology.load();
    if topology.epoch != epoch {
        return;
    }
    if left == 0 {
        info!("{} is drained: no session left", slave.sessions.node);
    } else {
        warn!(
            "{} is drained but {left} session(s) did not close in {} s",
            slave.sessions.node,
            EMPTY_WAIT.as_secs()
        );
    }
}

/// Waits until no session is left here, at most `within`: how many are left then (`None`: the
/// slave is stopping).
pub(crate) async fn wait_empty(slave: &Slave, within: Duration) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + within;
    while slave.sessions.session_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = slave.shutdown.cancelled() => return None,
        }
    }
    Some(slave.sessions.session_count())
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
    let Some(left) = wait_empty(slave, EMPTY_WAIT).await else {
        return;
    };
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
