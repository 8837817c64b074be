//! Data follows its user (issue 13; docs/rebalancing.md, "Data follows its user"). On a farm
//! whose data lives on the slaves (one SQLite file each), a user the routing table gives to
//! another slave takes its account, roster, pending requests, offline messages, vCard and
//! last activity along, over the farm link:
//!
//! - **push**: the old owner's mover hands each such user over at `[rebalance]
//!   users_per_second` ([`hand_over`]): its sessions here are closed first (with
//!   `<see-other-host/>` to the new owner), then its rows go as `<user-data part parts/>`
//!   frames, and the new owner imports them in one transaction and answers
//!   `<user-data-taken/>`; only then does the old owner delete them.
//! - **pull**: a login or a message for a user the new owner does not have yet makes it ask
//!   the other slaves (`<user-data-wanted/>`) and wait for the data ([`pull`]); the one that
//!   has the user hands it over at once, the others answer `<user-data-none/>`. One that has
//!   the user but has not taken the new table yet answers `<user-data-later/>`, and the new
//!   owner asks again shortly.
//!
//! At every moment one node serves the user: the old owner never serves a user its table
//! gives away (it redirects), and the new owner serves it once the rows are in. A node that
//! dies between import and delete leaves the rows on both sides: the old owner hands them over
//! again when it comes back, the new owner says it has them already (the first copy wins), and
//! the old copy goes.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jabberfarm_net::farm::LINK_NS;
use jabberfarm_proto::xml::Element;
use jabberfarm_store::Existence;
use jabberfarm_store::moving::Imported;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::Slave;

/// How long a pull waits for the data (the old owner may first wait for the user's sessions
/// to close there).
const PULL_WAIT: Duration = Duration::from_secs(10);
/// How long the old owner waits for `<user-data-taken/>` before it tries again later.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// How long the old owner waits for a moved user's sessions to close before it copies.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// A name nobody had is not asked for again for this long (messages to names that do not
/// exist would otherwise ask every slave each time).
const NOBODY_TTL: Duration = Duration::from_secs(30);
/// Names remembered as nobody's, at most.
const NOBODY_MAX: usize = 10_000;
/// Users whose parts are arriving at once, at most; and the bytes of one user's parts.
const INCOMING_MAX: usize = 64;
const INCOMING_BYTES: usize = 256 << 20;
/// Frames waiting for the hand-over worker.
const QUEUE: usize = 1024;
/// Users written in one transaction on arrival, at most.
const IMPORT_BATCH: usize = 256;
/// Users whose rows go in one transaction, at most.
const REMOVE_BATCH: usize = 256;

/// The hand-over state of a slave.
pub struct Handover {
    queue: mpsc::Sender<(String, Element)>,
    rx: Mutex<Option<mpsc::Receiver<(String, Element)>>>,
    /// Users the new owner has taken (`from`, user): their rows here go, many at a time.
    taken: mpsc::Sender<(String, String)>,
    taken_rx: Mutex<Option<mpsc::Receiver<(String, String)>>>,
    /// Pulls waiting for a user's data.
    pulls: Mutex<HashMap<String, Pull>>,
    /// Hand-overs waiting for the new owner's `<user-data-taken/>` (a push and a pull of the
    /// same user may both be under way).
    acks: Mutex<HashMap<String, Vec<oneshot::Sender<()>>>>,
    /// Parts arriving, by user.
    incoming: Mutex<HashMap<String, Incoming>>,
    /// Names no slave had, and when.
    nobody: Mutex<HashMap<String, Instant>>,
}

struct Pull {
    waiters: Vec<oneshot::Sender<Pulled>>,
    /// Slaves asked that have not answered yet.
    outstanding: usize,
    /// One of them has the user, but its table does not give it here yet.
    later: bool,
}

/// How a pull ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pulled {
    Found,
    Nobody,
    /// The slave holding the user is behind on the table: ask again.
    Later,
}

/// How long a pull waits before asking again a slave that is behind on the table.
const LATER: Duration = Duration::from_millis(100);

struct Incoming {
    from: String,
    parts: Vec<Element>,
    bytes: usize,
}

impl Default for Handover {
    fn default() -> Self {
        let (queue, rx) = mpsc::channel(QUEUE);
        let (taken, taken_rx) = mpsc::channel(QUEUE);
        Handover {
            queue,
            rx: Mutex::new(Some(rx)),
            taken,
            taken_rx: Mutex::new(Some(taken_rx)),
            pulls: Mutex::default(),
            acks: Mutex::default(),
            incoming: Mutex::default(),
            nobody: Mutex::default(),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a farm-link element is the hand-over's.
pub fn is_handover(el: &Element) -> bool {
    el.ns == LINK_NS
        && matches!(
            &*el.name,
            "user-data"
                | "user-data-taken"
                | "user-data-wanted"
                | "user-data-none"
                | "user-data-later"
        )
}

impl Handover {
    /// A frame from `from` for the worker; dropped (the sender tries again) when it is full.
    pub fn take(&self, from: String, el: Element) {
        if self.queue.try_send((from, el)).is_err() {
            warn!("hand-over queue full: a frame dropped (it is sent again)");
        }
    }
}

/// Handles hand-over frames in order (the parts of a user arrive in order), until the slave
/// stops. What waits on other nodes (an export, which may wait for sessions to close) runs on
/// its own task.
pub async fn run(slave: std::sync::Arc<Slave>) {
    let Some(mut rx) = lock(&slave.handover.rx).take() else {
        return;
    };
    if let Some(taken) = lock(&slave.handover.taken_rx).take() {
        slave.tasks.spawn(remove_taken(slave.clone(), taken));
    }
    // Users whose parts are all here, imported together: one transaction for all that came
    // in one go.
    let mut ready: Vec<(String, Vec<Element>)> = Vec::new();
    loop {
        let next = tokio::select! {
            n = rx.recv() => n,
            _ = slave.shutdown.cancelled() => None,
        };
        let Some(mut frame) = next else { return };
        loop {
            handle(&slave, frame, &mut ready).await;
            if ready.len() >= IMPORT_BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(f) => frame = f,
                Err(_) => break,
            }
        }
        if !ready.is_empty() {
            import(&slave, std::mem::take(&mut ready)).await;
        }
    }
}

/// One hand-over frame from `from`; a user whose last part arrived goes to `ready`.
async fn handle(
    slave: &std::sync::Arc<Slave>,
    (from, el): (String, Element),
    ready: &mut Vec<(String, Vec<Element>)>,
) {
    let Some(user) = el.attr("user").map(str::to_owned) else {
        return;
    };
    match &*el.name {
        "user-data" => {
            if let Some(parts) = on_part(slave, &from, &user, el) {
                ready.push((from, parts));
            }
        }
        "user-data-taken" => {
            let _ = slave.handover.taken.send((from, user)).await;
        }
        "user-data-none" => on_none(slave, &user, false),
        "user-data-later" => on_none(slave, &user, true),
        "user-data-wanted" => {
            let s = slave.clone();
            slave
                .tasks
                .spawn(async move { on_wanted(&s, &from, &user).await });
        }
        _ => {}
    }
}

/// The new owner: users whose data arrived whole, written in one transaction; each sender is
/// told which ones it can forget.
async fn import(slave: &Slave, ready: Vec<(String, Vec<Element>)>) {
    let Some(db) = db(slave) else { return };
    let topology = slave.sessions.topology.load_full();
    let mut senders: HashMap<String, String> = HashMap::new();
    let mut batch = Vec::with_capacity(ready.len());
    for (from, parts) in ready {
        let Some(user) = parts
            .first()
            .and_then(|p| p.attr("user"))
            .map(str::to_owned)
        else {
            continue;
        };
        if topology.owner(&user) != slave.sessions.node {
            // A stale hand-over (the table changed again): the sender keeps the user.
            warn!(
                user,
                "{from} handed over {user}, whom the table gives to {}: not taken",
                topology.owner(&user)
            );
            continue;
        }
        senders.insert(user, from);
        batch.push(parts);
    }
    let n = batch.len();
    match db.import_users(batch).await {
        Ok(done) => {
            for (user, result) in done {
                let from = senders.get(&user).map_or("?", String::as_str);
                match result {
                    Ok(Imported::Written(rows)) => {
                        debug!(user, "{user} arrived from {from} with {rows} row(s)");
                    }
                    Ok(Imported::AlreadyHere) => debug!(user, "{user} from {from}: here already"),
                    Err(e) => {
                        warn!(user, "{user}'s data from {from} not taken: {e}");
                        continue;
                    }
                }
                resolve_pull(slave, &user, Pulled::Found);
                let _ = slave
                    .links
                    .send(from, &answer("user-data-taken", &user))
                    .await;
            }
        }
        Err(e) => warn!("the data of {n} user(s) not taken: {e}"),
    }
}

/// The sqlite file, when the data lives on the slaves.
fn db(slave: &Slave) -> Option<&jabberfarm_store::accounts::SqliteStore> {
    slave.store.sqlite()
}

fn answer(name: &'static str, user: &str) -> Element {
    Element::new(name, LINK_NS).with_attr("user", user)
}

/// The new owner: one part of a user's data; all of them once the last one is here.
fn on_part(slave: &Slave, from: &str, user: &str, part: Element) -> Option<Vec<Element>> {
    db(slave)?;
    let n: usize = part.attr("parts").and_then(|n| n.parse().ok()).unwrap_or(0);
    let i: usize = part
        .attr("part")
        .and_then(|n| n.parse().ok())
        .unwrap_or(usize::MAX);
    let parts = {
        let mut incoming = lock(&slave.handover.incoming);
        if i == 0 {
            if incoming.len() >= INCOMING_MAX && !incoming.contains_key(user) {
                warn!(
                    user,
                    "too many users arriving at once: {user}'s data is sent again later"
                );
                return None;
            }
            incoming.insert(
                user.to_owned(),
                Incoming {
                    from: from.to_owned(),
                    parts: Vec::with_capacity(n.min(1024)),
                    bytes: 0,
                },
            );
        }
        let inc = incoming.get_mut(user).filter(|inc| inc.from == from)?;
        inc.bytes += part.weight();
        if inc.bytes > INCOMING_BYTES {
            warn!(
                user,
                "{user}'s data is over {} MiB: refused",
                INCOMING_BYTES >> 20
            );
            incoming.remove(user);
            return None;
        }
        inc.parts.push(part);
        if inc.parts.len() < n {
            return None;
        }
        incoming.remove(user).map(|inc| inc.parts)?
    };
    Some(parts)
}

/// The old owner: users the new owners have taken; their rows here go, up to
/// [`REMOVE_BATCH`] in one transaction, and the hand-overs waiting for them are done.
async fn remove_taken(slave: std::sync::Arc<Slave>, mut taken: mpsc::Receiver<(String, String)>) {
    let Some(db) = db(&slave) else { return };
    let mut batch = Vec::with_capacity(REMOVE_BATCH);
    loop {
        let n = tokio::select! {
            n = taken.recv_many(&mut batch, REMOVE_BATCH) => n,
            _ = slave.shutdown.cancelled() => 0,
        };
        if n == 0 {
            return;
        }
        let topology = slave.sessions.topology.load_full();
        let users: Vec<String> = batch
            .drain(..)
            .filter_map(|(from, user)| {
                if topology.owner(&user) == from {
                    Some(user)
                } else {
                    warn!(
                        user,
                        "{from} took {user}, whom the table gives to {}: kept here",
                        topology.owner(&user)
                    );
                    None
                }
            })
            .collect();
        match db.remove_users(&users).await {
            Ok(()) => {
                let mut acks = lock(&slave.handover.acks);
                for user in &users {
                    for done in acks.remove(user).unwrap_or_default() {
                        let _ = done.send(());
                    }
                }
            }
            Err(e) => warn!(
                "{} user(s) are on their new slaves, but their rows here stay: {e}",
                users.len()
            ),
        }
    }
}

/// The new owner: one slave asked does not have the user (`later`: has it, but is behind on
/// the table).
fn on_none(slave: &Slave, user: &str, later: bool) {
    let mut pulls = lock(&slave.handover.pulls);
    if let Some(p) = pulls.get_mut(user) {
        p.outstanding = p.outstanding.saturating_sub(1);
        p.later |= later;
        if p.outstanding == 0 {
            let later = p.later;
            drop(pulls);
            if later {
                resolve_pull(slave, user, Pulled::Later);
            } else {
                remember_nobody(slave, user);
                resolve_pull(slave, user, Pulled::Nobody);
            }
        }
    }
}

/// The old owner: the new one wants the user now.
async fn on_wanted(slave: &Slave, from: &str, user: &str) {
    let has = db(slave).is_some() && matches!(slave.store.exists(user).await, Ok(Existence::Yes));
    let owner = slave.sessions.topology.load().owner(user).to_owned();
    if !has || owner != from {
        // Has it, but our table does not give it to the asker (yet): it asks again.
        let reply = if has {
            "user-data-later"
        } else {
            "user-data-none"
        };
        let _ = slave.links.send(from, &answer(reply, user)).await;
        return;
    }
    if let Err(e) = hand_over(slave, user, from).await {
        warn!(user, "{user} not handed to {from}: {e}");
    }
}

fn remember_nobody(slave: &Slave, user: &str) {
    let mut nobody = lock(&slave.handover.nobody);
    if nobody.len() >= NOBODY_MAX {
        nobody.retain(|_, at| at.elapsed() < NOBODY_TTL);
        if nobody.len() >= NOBODY_MAX {
            nobody.clear();
        }
    }
    nobody.insert(user.to_owned(), Instant::now());
}

fn resolve_pull(slave: &Slave, user: &str, how: Pulled) {
    if let Some(p) = lock(&slave.handover.pulls).remove(user) {
        for w in p.waiters {
            let _ = w.send(how);
        }
    }
}

/// The old owner: sends `user` and its rows to `to` (its sessions here closed first) and waits
/// until `to` has them; the rows here are deleted when it says so.
pub async fn hand_over(slave: &Slave, user: &str, to: &str) -> Result<(), String> {
    let db = db(slave).ok_or("no data here to hand over")?;
    if crate::mover::send_sessions_to(slave, user, to) > 0 {
        let deadline = Instant::now() + CLOSE_WAIT;
        while slave.sessions.is_connected(user) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let Some(parts) = db
        .export_user(user, slave.config.limits.max_stanza)
        .await
        .map_err(|e| e.to_string())?
    else {
        return Ok(()); // gone already
    };
    let (tx, rx) = oneshot::channel();
    lock(&slave.handover.acks)
        .entry(user.to_owned())
        .or_default()
        .push(tx);
    let forget = || {
        if let Some(waiting) = lock(&slave.handover.acks).get_mut(user) {
            waiting.retain(|w| !w.is_closed());
        }
    };
    for p in &parts {
        if let Err(e) = slave.links.send(to, p).await {
            drop(rx);
            forget();
            return Err(format!("link to {to}: {e}"));
        }
    }
    match tokio::time::timeout(ACK_WAIT, rx).await {
        Ok(Ok(())) => Ok(()),
        _ => {
            forget();
            Err(format!("{to} did not say it took the data"))
        }
    }
}

/// The new owner: `user` belongs here but has no account here. If the data lives on the
/// slaves, ask the others for it and wait until it is here (asking again while the slave that
/// has it is behind on the table); `true` when it arrived.
pub async fn pull(slave: &Slave, user: &str) -> bool {
    if db(slave).is_none() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + PULL_WAIT;
    loop {
        match ask_once(slave, user, deadline).await {
            Pulled::Found => {
                info!(user, "{user}'s data arrived on first use");
                return true;
            }
            Pulled::Nobody => return false,
            Pulled::Later if tokio::time::Instant::now() + LATER < deadline => {
                tokio::time::sleep(LATER).await;
            }
            Pulled::Later => {
                warn!(
                    user,
                    "{user}'s slave did not take the new table in {} s",
                    PULL_WAIT.as_secs()
                );
                return false;
            }
        }
    }
}

/// One round of [`pull`]: ask every other slave (or join a round under way) and wait, until
/// `deadline`, for how it ends.
async fn ask_once(slave: &Slave, user: &str, deadline: tokio::time::Instant) -> Pulled {
    let topology = slave.sessions.topology.load_full();
    if topology.owner(user) != slave.sessions.node {
        return Pulled::Nobody;
    }
    if lock(&slave.handover.nobody)
        .get(user)
        .is_some_and(|at| at.elapsed() < NOBODY_TTL)
    {
        return Pulled::Nobody;
    }
    let (tx, rx) = oneshot::channel();
    let first = {
        let mut pulls = lock(&slave.handover.pulls);
        let p = pulls.entry(user.to_owned()).or_insert(Pull {
            waiters: Vec::new(),
            outstanding: 0,
            later: false,
        });
        p.waiters.push(tx);
        p.waiters.len() == 1
    };
    if first {
        let mut asked = 0;
        for n in topology
            .nodes
            .iter()
            .filter(|n| n.role == jabberfarm_config::Role::Slave && n.name != slave.sessions.node)
        {
            if slave
                .links
                .try_send(&n.name, &answer("user-data-wanted", user))
                .is_ok()
            {
                asked += 1;
            }
        }
        let mut pulls = lock(&slave.handover.pulls);
        match pulls.get_mut(user) {
            Some(p) if asked > 0 => p.outstanding += asked,
            Some(_) => {
                drop(pulls);
                resolve_pull(slave, user, Pulled::Nobody);
            }
            None => {}
        }
    }
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(answer) => answer.unwrap_or(Pulled::Nobody),
        Err(_) => {
            // Nobody answered in time: the next login or message asks again.
            lock(&slave.handover.pulls).remove(user);
            warn!(
                user,
                "{user}'s data did not arrive in {} s",
                PULL_WAIT.as_secs()
            );
            Pulled::Nobody
        }
    }
}
