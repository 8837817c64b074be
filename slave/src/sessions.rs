//! The sessions of one slave: which resources of which users are bound here, their queues,
//! presence and roster interest, and the delivery rules to them (RFC 6121 §8.5,
//! [`Sessions::deliver_local`]). [`Sessions::destination`] says where an address lives (here,
//! another node, another domain: the table in `docs/routing.md`); [`crate::router`] acts on it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use jabberfarm_config::SharedTopology;
use jabberfarm_net::farm::FarmLinks;
use jabberfarm_net::receipt::Receipt;
use jabberfarm_proto::routing::normalize_localpart;
use jabberfarm_proto::stanza::{
    ErrorCondition, Kind, MessageType, StanzaError, is_error_or_result,
};
use jabberfarm_proto::xml::{Element, StreamError};
use jid::Jid;
use tokio::sync::mpsc;
use tracing::debug;

/// What a session's task is told to write.
#[derive(Debug)]
pub enum Outgoing {
    /// Boxed, so a queue slot is 8 bytes: tokio's channel allocates its slots 32 at a time,
    /// at creation, for every session.
    Stanza(Box<Queued>),
}

impl Outgoing {
    /// A stanza nobody waits for.
    pub fn stanza(el: Element) -> Outgoing {
        Outgoing::Stanza(Box::new(Queued { el, receipt: None }))
    }
}

/// A stanza for a session, with its sender's receipt when the sender waits for it to be
/// safe (`jabberfarm_net::receipt`): dropped once it is written to the client's connection.
#[derive(Debug)]
pub struct Queued {
    pub el: Element,
    pub receipt: Option<Receipt>,
}

/// Tells a session to close its stream with an error (replaced by a newer login, the slave
/// stopping). Apart from the stanza queue, so it is never lost when that queue is full: the
/// first reason given wins, and the session sees it at its next wake-up.
#[derive(Debug, Default)]
pub struct Closer {
    reason: Mutex<Option<StreamError>>,
    wake: tokio::sync::Notify,
}

impl Closer {
    /// Ask the session to close with `e` (a later reason does not replace an earlier one).
    pub fn close(&self, e: StreamError) {
        let mut reason = self.reason.lock().unwrap_or_else(|p| p.into_inner());
        if reason.is_none() {
            *reason = Some(e);
        }
        drop(reason);
        // Stores a permit when the session is not waiting right now: nothing is missed.
        self.wake.notify_one();
    }

    /// The reason given, if [`Self::close`] was called (taken: asked once).
    pub fn take(&self) -> Option<StreamError> {
        self.reason.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Resolves once [`Self::close`] was called, with its reason.
    pub async fn closed(&self) -> StreamError {
        loop {
            if let Some(e) = self.take() {
                return e;
            }
            self.wake.notified().await;
        }
    }
}

/// Per-session queue bound; a full queue answers the sender with `resource-constraint`.
pub const SESSION_QUEUE: usize = 1024;

struct Resource {
    name: String,
    conn: u64,
    tx: mpsc::Sender<Outgoing>,
    closer: Arc<Closer>,
    /// Sent initial presence (RFC 6121 §4.2) and not yet unavailable.
    available: bool,
    priority: i8,
    /// The last available presence it broadcast (answers probes, RFC 6121 §4.3.2).
    presence: Option<Element>,
    /// Asked for the roster: gets roster pushes (RFC 6121 §2.1.6).
    interested: bool,
    /// Full JIDs whose available presence this resource has seen, so it can be told they are
    /// gone when their node's link drops.
    seen: HashSet<String>,
    /// Where it sent directed presence (RFC 6121 §4.6): told when it goes unavailable.
    directed: HashSet<String>,
    /// The user's roster was empty when this session's initial presence asked the store, and
    /// nothing was written to it since: later broadcasts skip reading it.
    roster_empty: bool,
}

/// What [`Sessions::set_presence`] changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceChange {
    /// The session's initial presence (RFC 6121 §4.2).
    Initial,
    /// An available session went unavailable (§4.5).
    Unavailable,
    /// An update of an available session (§4.4), or nothing (unavailable again, no session).
    Other,
}

/// Stripes of [`Sessions::offline_lock`].
const OFFLINE_LOCKS: usize = 64;

/// One of a user's sessions, as the IM code sees it.
#[derive(Clone)]
pub struct SessionRef {
    pub resource: String,
    pub tx: mpsc::Sender<Outgoing>,
    pub presence: Option<Element>,
}

/// Where a stanza addressed to `to` goes (see `docs/routing.md`).
#[derive(Debug, PartialEq, Eq)]
pub enum Destination {
    /// The bare domain: the server answers.
    Server,
    /// A user this slave owns.
    Local {
        user: String,
        resource: Option<String>,
    },
    /// A user of our domain owned by another node.
    Node(String),
    /// Another domain.
    Remote(String),
}

pub struct Sessions {
    pub domain: String,
    pub node: String,
    /// Who owns which user: the node's one topology, replaced by live rebalancing.
    pub topology: SharedTopology,
    sessions: Mutex<HashMap<String, Vec<Resource>>>,
    next_conn: AtomicU64,
    /// Bumped (under the sessions lock) before every roster write, so a reader that saw an
    /// empty roster can tell whether a write raced it.
    roster_writes: AtomicU64,
    /// See [`Sessions::offline_lock`].
    offline_locks: Box<[tokio::sync::Mutex<()>]>,
    /// When this node started: its uptime is the server's XEP-0012 last activity.
    pub started: std::time::Instant,
    /// `limits.max_resources`: resources one account may have bound at once.
    max_resources: usize,
    /// Per user: the last offline message handed to a session with stream management that
    /// has not acknowledged it yet (they stay stored until it does).
    offline_handed: Mutex<HashMap<String, i64>>,
    /// The farm links, which know which slaves are failed ([`Self::serving`]); unset in unit
    /// tests (every user is then served by its owner).
    links: std::sync::OnceLock<std::sync::Arc<FarmLinks>>,
}

impl Sessions {
    pub fn new(
        domain: String,
        node: String,
        topology: SharedTopology,
        max_resources: usize,
    ) -> Sessions {
        Sessions {
            domain,
            node,
            topology,
            sessions: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            roster_writes: AtomicU64::new(0),
            offline_handed: Mutex::default(),
            links: std::sync::OnceLock::new(),
            offline_locks: (0..OFFLINE_LOCKS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            started: std::time::Instant::now(),
            max_resources,
        }
    }

    /// Failover: who serves a user is asked of `links` from now on.
    pub fn use_links(&self, links: std::sync::Arc<FarmLinks>) {
        let _ = self.links.set(links);
    }

    /// Who serves `user` now: its owner, or with central data the next slave of its ranking
    /// when the owner is failed (`FarmLinks::serving`).
    pub fn serving<'t>(&self, topology: &'t jabberfarm_config::Topology, user: &str) -> &'t str {
        match self.links.get() {
            Some(links) => links.serving(topology, user),
            None => topology.owner(user),
        }
    }

    pub fn destination(&self, to: &Jid) -> Destination {
        if !to.domain().as_str().eq_ignore_ascii_case(&self.domain) {
            return Destination::Remote(to.domain().as_str().to_owned());
        }
        let Some(node) = to.node() else {
            return Destination::Server;
        };
        // jid has already applied nodeprep; normalising again is idempotent. ASCII without
        // capitals is left as it is by nodeprep (or refused, which keeps it as it is too), so
        // the common case skips the second pass.
        let node = node.as_str();
        let user = if node
            .bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
        {
            node.to_owned()
        } else {
            normalize_localpart(node).unwrap_or_else(|_| node.to_owned())
        };
        let topology = self.topology.load();
        let owner = self.serving(&topology, &user);
        // After a routing change, or once a failed slave is back, a user the table gives to
        // another node may still be connected here until it moves: this node serves it until
        // then.
        if owner != self.node && !self.is_connected(&user) {
            return Destination::Node(owner.to_owned());
        }
        Destination::Local {
            user,
            resource: to.resource().map(|r| r.as_str().to_owned()),
        }
    }

    /// Bind `resource` for `user`. A resource already bound is replaced: its session is told to
    /// close with `<conflict/>` (RFC 6120 §7.7.2.2). `None` when the account has
    /// `limits.max_resources` other resources bound already (§7.6.2.2: `resource-constraint`).
    pub fn bind(
        &self,
        user: &str,
        resource: &str,
        tx: mpsc::Sender<Outgoing>,
        closer: Arc<Closer>,
    ) -> Option<u64> {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        // Most users have one resource: room for one (a first push would make room for 4).
        let list = sessions
            .entry(user.to_owned())
            .or_insert_with(|| Vec::with_capacity(1));
        let replaces = list.iter().any(|r| r.name == resource);
        if !replaces && list.len() >= self.max_resources {
            return None;
        }
        if let Some(pos) = list.iter().position(|r| r.name == resource) {
            let old = list.remove(pos);
            old.closer.close(StreamError::new(
                jabberfarm_proto::xml::Condition::Conflict,
                "replaced by a new login with the same resource",
            ));
        }
        list.push(Resource {
            name: resource.to_owned(),
            conn,
            tx,
            closer,
            available: false,
            priority: 0,
            presence: None,
            interested: false,
            seen: HashSet::new(),
            directed: HashSet::new(),
            roster_empty: false,
        });
        Some(conn)
    }

    /// The last offline message of `user` handed out and not yet acknowledged (see
    /// `im::offline::take`).
    pub fn offline_handed(&self, user: &str) -> Option<i64> {
        let handed = self
            .offline_handed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        handed.get(user).copied()
    }

    pub fn set_offline_handed(&self, user: &str, id: Option<i64>) {
        let mut handed = self
            .offline_handed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match id {
            Some(id) => {
                handed.insert(user.to_owned(), id);
            }
            None => {
                handed.remove(user);
            }
        }
    }

    pub fn is_bound(&self, user: &str, resource: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(user)
            .is_some_and(|l| l.iter().any(|r| r.name == resource))
    }

    /// Remove a session, unless a newer login took its resource over already.
    pub fn unbind(&self, user: &str, resource: &str, conn: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = sessions.get_mut(user) {
            list.retain(|r| !(r.name == resource && r.conn == conn));
            if list.is_empty() {
                sessions.remove(user);
            }
        }
    }

    /// Record a broadcast presence (RFC 6121 §4.2, §4.5): `Some(presence)` for available,
    /// `None` for unavailable. Returns what it changed for the session.
    ///
    /// Call it under [`Sessions::offline_lock`]: it changes whether messages reach the user.
    pub fn set_presence(
        &self,
        user: &str,
        resource: &str,
        presence: Option<Element>,
    ) -> PresenceChange {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(r) = sessions
            .get_mut(user)
            .and_then(|l| l.iter_mut().find(|r| r.name == resource))
        else {
            return PresenceChange::Other;
        };
        let change = match (r.available, presence.is_some()) {
            (false, true) => PresenceChange::Initial,
            (true, false) => PresenceChange::Unavailable,
            _ => PresenceChange::Other,
        };
        r.priority = presence.as_ref().map(priority_of).unwrap_or(0);
        r.available = presence.is_some();
        r.presence = presence;
        if !r.available {
            r.seen.clear();
        }
        change
    }

    /// The lock that orders, for one user, deciding a message's fate (a session takes it, or
    /// offline storage) against the changes that would alter that decision (a resource turns
    /// available or unavailable) and against taking the stored messages. Without it a message
    /// stored while the initial presence was looking for stored ones stayed there until the
    /// next login. Striped: users that share a stripe only wait for each other's brief
    /// sections.
    pub async fn offline_lock(&self, user: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        user.hash(&mut h);
        let stripe = (h.finish() % self.offline_locks.len() as u64) as usize;
        self.offline_locks[stripe].lock().await
    }

    /// Call before reading the roster to learn whether it is empty; pass the result to
    /// [`Sessions::note_roster_empty`].
    pub fn roster_mark(&self) -> u64 {
        self.roster_writes.load(Ordering::Acquire)
    }

    /// The store said `user`'s roster is empty, as of `mark`: remember it for this session
    /// unless a roster write started since.
    pub fn note_roster_empty(&self, user: &str, resource: &str, mark: u64) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if self.roster_writes.load(Ordering::Acquire) != mark {
            return;
        }
        if let Some(r) = sessions
            .get_mut(user)
            .and_then(|l| l.iter_mut().find(|r| r.name == resource))
        {
            r.roster_empty = true;
        }
    }

    /// Whether this session knows `user`'s roster to be empty (no store read needed).
    pub fn roster_known_empty(&self, user: &str, resource: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(user)
            .and_then(|l| l.iter().find(|r| r.name == resource))
            .is_some_and(|r| r.roster_empty)
    }

    /// Call before writing `user`'s roster: sessions forget that it was empty.
    pub fn roster_changed(&self, user: &str) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        self.roster_writes.fetch_add(1, Ordering::AcqRel);
        if let Some(l) = sessions.get_mut(user) {
            for r in l {
                r.roster_empty = false;
            }
        }
    }

    pub fn set_interested(&self, user: &str, resource: &str) {
        self.with_resource(user, resource, |r| r.interested = true);
    }

    /// Remember (or forget, for unavailable) a directed presence. `false` when the resource
    /// tracks `max` other targets already (the presence is then not to be sent).
    pub fn note_directed(
        &self,
        user: &str,
        resource: &str,
        to: &str,
        available: bool,
        max: usize,
    ) -> bool {
        let mut noted = true;
        self.with_resource(user, resource, |r| {
            if !available {
                r.directed.remove(to);
            } else if r.directed.len() < max || r.directed.contains(to) {
                r.directed.insert(to.to_owned());
            } else {
                noted = false;
            }
        });
        noted
    }

    pub fn take_directed(&self, user: &str, resource: &str) -> Vec<String> {
        let mut out = Vec::new();
        self.with_resource(user, resource, |r| out = r.directed.drain().collect());
        out
    }

    fn with_resource(&self, user: &str, resource: &str, f: impl FnOnce(&mut Resource)) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = sessions
            .get_mut(user)
            .and_then(|l| l.iter_mut().find(|r| r.name == resource))
        {
            f(r);
        }
    }

    /// The user's available sessions with their last presence.
    pub fn available(&self, user: &str) -> Vec<SessionRef> {
        self.sessions_where(user, |r| r.available)
    }

    /// Deliver a subscription-related presence to every session that is available or asked
    /// for the roster (RFC 6121 §3.1.3, §3.1.6: available / interested resources).
    pub fn deliver_subscription(&self, user: &str, el: Element) {
        for s in self.sessions_where(user, |r| r.available || r.interested) {
            let _ = s.tx.try_send(Outgoing::stanza(el.clone()));
        }
    }

    /// The user's sessions that asked for the roster.
    pub fn interested(&self, user: &str) -> Vec<SessionRef> {
        self.sessions_where(user, |r| r.interested)
    }

    fn sessions_where(&self, user: &str, keep: impl Fn(&Resource) -> bool) -> Vec<SessionRef> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions
            .get(user)
            .map(|l| {
                l.iter()
                    .filter(|r| keep(r))
                    .map(|r| SessionRef {
                        resource: r.name.clone(),
                        tx: r.tx.clone(),
                        presence: r.presence.clone(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Local available sessions that have seen presence from a full JID owned by `node`, with
    /// those JIDs (forgotten here): they are to be told the contacts went unavailable.
    pub fn forget_seen_on(&self, node: &str) -> Vec<(mpsc::Sender<Outgoing>, String, Vec<String>)> {
        let table = self.topology.load();
        let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (user, list) in sessions.iter_mut() {
            for r in list.iter_mut() {
                let gone: Vec<String> = r
                    .seen
                    .iter()
                    .filter(|j| j.split('@').next().is_some_and(|l| table.owner(l) == node))
                    .cloned()
                    .collect();
                for g in &gone {
                    r.seen.remove(g);
                }
                if !gone.is_empty() {
                    out.push((
                        r.tx.clone(),
                        format!("{user}@{}/{}", self.domain, r.name),
                        gone,
                    ));
                }
            }
        }
        out
    }

    /// Whether a message to `user` (at `resource`, if given) reaches a session now: a bound
    /// full JID, or an available resource with non-negative priority (RFC 6121 §8.5.2.1).
    pub fn can_deliver_message(&self, user: &str, resource: Option<&str>) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let Some(list) = sessions.get(user) else {
            return false;
        };
        resource.is_some_and(|res| list.iter().any(|r| r.name == res))
            || list.iter().any(|r| r.available && r.priority >= 0)
    }

    /// Whether `user` has a session here.
    pub fn is_connected(&self, user: &str) -> bool {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.contains_key(user)
    }

    /// Users with a session here whom the current table gives to another node.
    pub fn owned_elsewhere(&self) -> Vec<String> {
        let topology = self.topology.load();
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut users: Vec<String> = sessions
            .keys()
            .filter(|u| self.serving(&topology, u) != self.node)
            .cloned()
            .collect();
        users.sort();
        users
    }

    /// Tells every session of `user` to close with `e`; how many there were.
    pub fn close_user(&self, user: &str, e: &StreamError) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let list = sessions.get(user).map_or(&[][..], Vec::as_slice);
        for r in list {
            r.closer.close(e.clone());
        }
        list.len()
    }

    /// How many of the users with a session here `table` gives to each other node (what a
    /// change to `table` would move: `jabberfarm plan`'s online count).
    pub fn moved_by(&self, table: &jabberfarm_config::Topology) -> BTreeMap<String, usize> {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_node = BTreeMap::new();
        for user in sessions.keys() {
            let owner = table.owner(user);
            if owner != self.node {
                *by_node.entry(owner.to_owned()).or_insert(0) += 1;
            }
        }
        by_node
    }

    /// Users with at least one session here.
    pub fn user_count(&self) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Number of bound sessions on this slave.
    pub fn session_count(&self) -> usize {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        sessions.values().map(Vec::len).sum()
    }

    /// Tell every session to close with `e` (the slave stopping).
    pub fn close_all(&self, e: &StreamError) {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for r in sessions.values().flatten() {
            r.closer.close(e.clone());
        }
    }

    /// Deliver a stanza to a user this slave owns (RFC 6121 §8.5). Returns the error reply to
    /// send back to the sender, if any.
    pub fn deliver_local(
        &self,
        stanza: Element,
        user: &str,
        resource: Option<&str>,
    ) -> Option<Element> {
        self.deliver_tracked(stanza, user, resource, None)
    }

    /// [`Self::deliver_local`], with the sender's receipt going along to each session that
    /// takes the stanza.
    pub fn deliver_tracked(
        &self,
        stanza: Element,
        user: &str,
        resource: Option<&str>,
        receipt: Option<Receipt>,
    ) -> Option<Element> {
        let kind = Kind::of(&stanza)?;
        let targets: Vec<mpsc::Sender<Outgoing>> = {
            let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            let list = sessions.get(user).map(Vec::as_slice).unwrap_or(&[]);
            let full = resource.and_then(|res| list.iter().find(|r| r.name == res));
            match (full, resource, kind) {
                // A bound full JID gets everything addressed to it (§8.5.3.1).
                (Some(r), _, _) => vec![r.tx.clone()],
                // Full JID, no such resource: IQs fail, presence is dropped (§8.5.3.2.2,
                // §8.5.3.2.3); messages fall back to the bare JID rules (§8.5.3.2.1).
                (None, Some(_), Kind::Iq) => {
                    return unavailable(&stanza, "no such resource");
                }
                (None, Some(_), Kind::Presence) => return None,
                // §8.5.2.1.3: groupchat to a user's bare JID is an error.
                (None, _, Kind::Message) if MessageType::of(&stanza) == MessageType::Groupchat => {
                    return unavailable(&stanza, "groupchat messages go to rooms");
                }
                (None, _, Kind::Message) => bare_message_targets(&stanza, list)?,
                (None, None, Kind::Presence) => list
                    .iter()
                    .filter(|r| r.available)
                    .map(|r| r.tx.clone())
                    .collect(),
                // IQ to the bare JID is answered by the server on the user's behalf; the
                // session layer handles the ones we support before calling here.
                (None, None, Kind::Iq) => return unavailable(&stanza, "not supported"),
            }
        };
        if targets.is_empty() {
            // Offline storage (XEP-0160) is decided by the caller before delivery.
            return match kind {
                Kind::Message
                    if matches!(
                        MessageType::of(&stanza),
                        MessageType::Normal | MessageType::Chat
                    ) =>
                {
                    unavailable(&stanza, "the recipient is not online")
                }
                _ => None,
            };
        }
        if kind == Kind::Presence
            && let Some(from) = stanza.attr("from")
        {
            let available = stanza.attr("type").is_none();
            let mut sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(list) = sessions.get_mut(user) {
                for r in list
                    .iter_mut()
                    .filter(|r| targets.iter().any(|t| t.same_channel(&r.tx)))
                {
                    if available {
                        if r.seen.len() < crate::im::presence::MAX_SEEN {
                            r.seen.insert(from.to_owned());
                        }
                    } else {
                        r.seen.remove(from);
                    }
                }
            }
        }
        let mut reply = None;
        let last = targets.len() - 1;
        let mut stanza = Some(stanza);
        for (i, tx) in targets.into_iter().enumerate() {
            let el = if i == last {
                stanza.take()
            } else {
                stanza.clone()
            };
            let Some(el) = el else { break };
            let receipt = receipt.clone();
            if let Err(mpsc::error::TrySendError::Full(Outgoing::Stanza(q))) =
                tx.try_send(Outgoing::Stanza(Box::new(Queued { el, receipt })))
            {
                let el = q.el;
                debug!(user, "session queue full");
                if reply.is_none() && !is_error_or_result(&el) {
                    reply = Some(
                        StanzaError::new(ErrorCondition::ResourceConstraint)
                            .text("the recipient's queue is full")
                            .reply_to(&el),
                    );
                }
            }
        }
        reply
    }
}

/// RFC 6121 §8.5.2.1: which resources a message to the bare JID goes to. `None` means drop.
fn bare_message_targets(
    stanza: &Element,
    list: &[Resource],
) -> Option<Vec<mpsc::Sender<Outgoing>>> {
    let candidates = list.iter().filter(|r| r.available && r.priority >= 0);
    match MessageType::of(stanza) {
        // §8.5.2.1.1: the most available resource(s); we deliver to every resource that
        // shares the highest priority.
        MessageType::Normal | MessageType::Chat => {
            let top = candidates.clone().map(|r| r.priority).max();
            Some(
                candidates
                    .filter(|r| Some(r.priority) == top)
                    .map(|r| r.tx.clone())
                    .collect(),
            )
        }
        // §8.5.2.1.2: all available resources with non-negative priority.
        MessageType::Headline => Some(candidates.map(|r| r.tx.clone()).collect()),
        // §8.5.2.1.4: errors are dropped; groupchat is answered by the caller.
        MessageType::Error | MessageType::Groupchat => None,
    }
}

/// RFC 6121 §4.7.2.3: `<priority/>`, default 0.
pub fn priority_of(presence: &Element) -> i8 {
    presence
        .children()
        .find(|c| c.name == "priority")
        .and_then(|p| p.text().trim().parse::<i8>().ok())
        .unwrap_or(0)
}

fn unavailable(stanza: &Element, text: &str) -> Option<Element> {
    StanzaError::new(ErrorCondition::ServiceUnavailable)
        .text(text)
        .answer(stanza)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::im::presence::{MAX_DIRECTED, MAX_SEEN};
    use jabberfarm_proto::ns;
    use jabberfarm_proto::routing::{RoutingMode, RoutingTable, SlaveWeight};

    /// The sessions of slave1 in a farm of one slave (every user is local).
    fn sessions() -> Sessions {
        let table = RoutingTable::new(RoutingMode::Hash {
            key: [0; 16],
            slaves: vec![SlaveWeight {
                name: "slave1".to_owned(),
                weight: 1,
            }],
        })
        .unwrap();
        let topology = SharedTopology::new(jabberfarm_config::Topology {
            epoch: 0,
            table,
            nodes: Vec::new(),
        });
        Sessions::new("localhost".into(), "slave1".into(), topology, 10)
    }

    /// Per-session sets a peer can grow stop at their bounds (issue 11): presences seen from
    /// ever new full JIDs are delivered but tracked only up to MAX_SEEN; directed presence to
    /// ever new targets up to MAX_DIRECTED, then refused.
    #[test]
    fn seen_and_directed_sets_are_bounded() {
        let r = sessions();
        let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
        let conn = r.bind("juliet", "balcony", tx, Arc::new(Closer::default()));
        assert!(conn.is_some());
        r.set_presence(
            "juliet",
            "balcony",
            Some(Element::new("presence", ns::CLIENT)),
        );
        let mut delivered = 0;
        for i in 0..MAX_SEEN + 100 {
            let p = Element::new("presence", ns::CLIENT)
                .with_attr("from", format!("fan{i}@localhost/r"))
                .with_attr("to", "juliet@localhost/balcony");
            assert!(r.deliver_local(p, "juliet", Some("balcony")).is_none());
            while rx.try_recv().is_ok() {
                delivered += 1;
            }
        }
        assert_eq!(delivered, MAX_SEEN + 100, "every presence is delivered");
        let seen: usize = r
            .forget_seen_on("slave1")
            .iter()
            .map(|(_, _, gone)| gone.len())
            .sum();
        assert_eq!(seen, MAX_SEEN, "but only so many are tracked");

        for i in 0..MAX_DIRECTED {
            let to = format!("target{i}@localhost");
            assert!(r.note_directed("juliet", "balcony", &to, true, MAX_DIRECTED));
        }
        assert!(!r.note_directed(
            "juliet",
            "balcony",
            "one-more@localhost",
            true,
            MAX_DIRECTED
        ));
        // Again to a tracked target, and unavailable, are always fine; then there is room.
        assert!(r.note_directed("juliet", "balcony", "target0@localhost", true, MAX_DIRECTED));
        assert!(r.note_directed(
            "juliet",
            "balcony",
            "target0@localhost",
            false,
            MAX_DIRECTED
        ));
        assert!(r.note_directed(
            "juliet",
            "balcony",
            "one-more@localhost",
            true,
            MAX_DIRECTED
        ));
        assert_eq!(r.take_directed("juliet", "balcony").len(), MAX_DIRECTED);
    }

    /// A bound resource with its queue, available at `priority` (or not available).
    fn resource(
        r: &Sessions,
        user: &str,
        name: &str,
        priority: Option<i8>,
    ) -> mpsc::Receiver<Outgoing> {
        let (tx, rx) = mpsc::channel(SESSION_QUEUE);
        assert!(
            r.bind(user, name, tx, Arc::new(Closer::default()))
                .is_some()
        );
        if let Some(p) = priority {
            let presence = Element::new("presence", ns::CLIENT)
                .with_child(Element::new("priority", ns::CLIENT).with_text(p.to_string()));
            r.set_presence(user, name, Some(presence));
        }
        rx
    }

    fn stanza(name: &str, kind: Option<&str>, to: &str) -> Element {
        Element::new(name.to_owned(), ns::CLIENT)
            .with_attr("from", "romeo@localhost/orchard")
            .with_attr("to", to)
            .with_opt_attr("type", kind)
            .with_opt_attr("id", (name == "iq").then_some("i1"))
    }

    fn got(rx: &mut mpsc::Receiver<Outgoing>) -> usize {
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        n
    }

    fn condition(reply: Option<Element>) -> Option<ErrorCondition> {
        jabberfarm_proto::stanza::condition_of(&reply?)
    }

    /// RFC 6121 §8.5.2.1: to the bare JID, chat and normal go to the available resources of
    /// highest priority, headline to every non-negative one; negative priority gets neither;
    /// groupchat is refused.
    #[test]
    fn messages_to_the_bare_jid_rfc6121_8_5_2_1() {
        let r = sessions();
        let mut high = resource(&r, "juliet", "balcony", Some(5));
        let mut also_high = resource(&r, "juliet", "garden", Some(5));
        let mut low = resource(&r, "juliet", "chamber", Some(1));
        let mut negative = resource(&r, "juliet", "hidden", Some(-1));
        let mut unavailable = resource(&r, "juliet", "asleep", None);
        let to = "juliet@localhost";
        // A type RFC 6121 does not define is normal (§5.2.2).
        for kind in [None, Some("normal"), Some("chat"), Some("whisper")] {
            assert!(
                r.deliver_local(stanza("message", kind, to), "juliet", None)
                    .is_none()
            );
            assert_eq!(
                [
                    got(&mut high),
                    got(&mut also_high),
                    got(&mut low),
                    got(&mut negative)
                ],
                [1, 1, 0, 0],
                "{kind:?}"
            );
        }
        assert!(
            r.deliver_local(stanza("message", Some("headline"), to), "juliet", None)
                .is_none()
        );
        assert_eq!(
            [
                got(&mut high),
                got(&mut also_high),
                got(&mut low),
                got(&mut negative)
            ],
            [1, 1, 1, 0]
        );
        assert_eq!(
            condition(r.deliver_local(stanza("message", Some("groupchat"), to), "juliet", None)),
            Some(ErrorCondition::ServiceUnavailable)
        );
        // Errors to the bare JID are dropped (§8.5.2.1.4), unanswered.
        assert!(
            r.deliver_local(stanza("message", Some("error"), to), "juliet", None)
                .is_none()
        );
        assert_eq!(
            got(&mut unavailable),
            0,
            "a resource without presence gets no messages"
        );
        assert_eq!(got(&mut high) + got(&mut low), 0);
    }

    /// RFC 6121 §8.5.3: a bound full JID gets everything; an unknown resource means IQs fail,
    /// presence is dropped and messages follow the bare-JID rules.
    #[test]
    fn stanzas_to_a_full_jid_rfc6121_8_5_3() {
        let r = sessions();
        let mut balcony = resource(&r, "juliet", "balcony", Some(0));
        let mut asleep = resource(&r, "juliet", "asleep", None);
        let full = "juliet@localhost/asleep";
        for name in ["message", "presence", "iq"] {
            let kind = (name == "iq").then_some("get");
            assert!(
                r.deliver_local(stanza(name, kind, full), "juliet", Some("asleep"))
                    .is_none()
            );
        }
        assert_eq!(
            got(&mut asleep),
            3,
            "a bound resource gets all, available or not"
        );

        let gone = "juliet@localhost/gone";
        assert_eq!(
            condition(r.deliver_local(stanza("iq", Some("get"), gone), "juliet", Some("gone"))),
            Some(ErrorCondition::ServiceUnavailable)
        );
        assert!(
            r.deliver_local(stanza("presence", None, gone), "juliet", Some("gone"))
                .is_none()
        );
        assert_eq!(
            got(&mut balcony),
            0,
            "presence to a resource that is not there is dropped"
        );
        assert!(
            r.deliver_local(
                stanza("message", Some("chat"), gone),
                "juliet",
                Some("gone")
            )
            .is_none()
        );
        assert_eq!(got(&mut balcony), 1, "a message falls back to the bare JID");
    }

    /// With no available resource, chat and normal messages are refused here (offline storage
    /// is decided before delivery); other kinds are dropped silently.
    #[test]
    fn nobody_online_rfc6121_8_5_2_2() {
        let r = sessions();
        let to = "juliet@localhost";
        assert_eq!(
            condition(r.deliver_local(stanza("message", Some("chat"), to), "juliet", None)),
            Some(ErrorCondition::ServiceUnavailable)
        );
        assert!(
            r.deliver_local(stanza("message", Some("headline"), to), "juliet", None)
                .is_none()
        );
        assert!(
            r.deliver_local(stanza("presence", None, to), "juliet", None)
                .is_none()
        );
    }

    /// Where a stanza goes, by its `to`: the server, a local user, another node, another domain.
    #[test]
    fn destinations() {
        let r = sessions();
        let dest = |to: &str| r.destination(&Jid::new(to).unwrap());
        assert_eq!(dest("localhost"), Destination::Server);
        assert_eq!(dest("LocalHost"), Destination::Server);
        assert_eq!(
            dest("Juliet@localhost/Balcony"),
            Destination::Local {
                user: "juliet".into(),
                resource: Some("Balcony".into())
            }
        );
        assert_eq!(
            dest("romeo@example.org"),
            Destination::Remote("example.org".into())
        );
    }
}
