//! Farm links (DESIGN.md D3): every node keeps one authenticated link to every other node.
//!
//! - **Mesh, one connection per pair**: the node whose name sorts first connects, the other
//!   accepts; the link carries traffic both ways, so stanza order between any two users is the
//!   order of one TCP stream.
//! - **Frames**: a 4-byte big-endian length, then one XML element (a routed stanza or a
//!   handshake element). A zero-length frame is a heartbeat. Frames are bounded in size.
//! - **Handshake** (elements in [`LINK_NS`]): the connector sends `<hello node nonce
//!   fingerprint/>`, the acceptor answers its own `<hello/>` with a proof, the connector
//!   answers `<auth proof/>`, the acceptor says `<welcome/>` or `<refuse reason/>`. Proofs
//!   are HMAC-SHA256 under the farm secret over both nonces and both names, with a different
//!   label per direction: the secret never crosses the wire. Both say their routing table
//!   (fingerprint and epoch): a peer whose table differs at the same epoch is refused (and
//!   logged loudly): it gets no traffic and no redirects. At different epochs the link comes
//!   up and the master hands its topology over it (`farm/topology.rs`).
//!   The frames and every decision of the handshake are in [`jabberfarm_proto::link`]
//!   (sans-IO, tested there); this module moves the bytes.
//! - **Liveness**: heartbeats every `farm.heartbeat`; a link silent for `farm.dead_after` is
//!   dropped; the connector reconnects with backoff. [`FarmLinks::is_up`] is what the master
//!   uses to know which slaves are alive.
//! - **Relayed clients** (DESIGN.md D1b): a master also opens one relay connection to each
//!   slave's farm port, with `purpose='relay'` in its hello (proofs under their own labels),
//!   on its first relayed client there; every client it relays to that slave is a channel of
//!   it ([`crate::mux`]: an `OPEN` with the [`crate::relay::Handoff`], then the client's
//!   bytes both ways, flow-controlled per channel). Only a master may open one, and only to a
//!   node that takes relayed clients ([`FarmLinks::accept_relays`]).
//! - **Bounded**: one queue of `farm.queue` frames per peer; [`FarmLinks::send`] waits a
//!   little for room, then gives [`SendError::Full`] (the caller answers `resource-constraint`).
//!   Before the handshake is done a frame may hold 4 KiB (then `limits.max_stanza` + 4 KiB),
//!   at most 256 accepted connections may be in their handshake at once (more are closed as
//!   they come), and each has 10 s for TLS, then 10 s for the handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::mux::{self, Mux, MuxStream};
use crate::receipt::{Ledger, PATIENCE, Receipt};
use crate::relay::Handoff;
use crate::stream::Io;
use jabberfarm_config::{FarmConfig, Role, SharedTopology};
use jabberfarm_proto::link::outbox::{self, Inbox, Outbox};
use jabberfarm_proto::link::{
    ADMIN_NAME, Acceptor, Connector, Failure, PeerTable, Table, frame_of, frame_parser, link_key,
    new_nonce, parse_frame, push_frame, refuse,
};

mod admin;
mod topology;

pub use admin::{AdminHandler, admin_request};
use jabberfarm_proto::ns;
use jabberfarm_proto::xml::{Element, ParserLimits, StreamParser};

pub use jabberfarm_proto::link::{LINK_NS, Purpose};

/// Bytes a frame may add to the largest stanza (addressing, namespace declarations).
const FRAME_SLACK: usize = 4096;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest frame before the peer proved it knows the farm secret: the handshake's elements
/// (hello, auth, welcome, refuse) are a few hundred bytes. After it, `max_frame`.
pub const HANDSHAKE_FRAME: usize = 4096;
/// Connections to the farm port that have not finished the handshake, at once; more are
/// closed as they come (and counted in the log).
const MAX_HANDSHAKES: usize = 256;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
/// How long [`FarmLinks::send`] waits for room in a full queue.
pub const SEND_WAIT: Duration = Duration::from_secs(2);
/// A receiver acknowledges at least every this many frames…
const ACK_EVERY: u64 = 128;
/// …and at most this long after a frame it has not acknowledged yet.
const ACK_DELAY: Duration = Duration::from_millis(20);
/// How often a link that is down is looked after: frames kept too long go back to their
/// senders, and the peer's port is tried (refused: the process is not running).
const KEEPER_TICK: Duration = Duration::from_secs(1);
/// What reading a frame says of a connection closed before it.
const EARLY_EOF: &str = "closed by the peer";
/// Bytes written to a link at once.
const WRITE_BATCH: usize = 64 * 1024;

/// What the links tell the node.
#[derive(Debug)]
pub enum LinkEvent {
    Up(String),
    Down(String),
    /// A stanza routed to us by `from_node`. The link acknowledges it (and everything after
    /// it) only once `receipt` is dropped: keep it with the stanza until the stanza is safe
    /// (`crate::receipt`).
    Stanza {
        from_node: String,
        stanza: Element,
        receipt: Receipt,
    },
    /// This node now runs topology epoch N (handed over by the master): users it served may
    /// belong elsewhere now.
    Topology(u64),
    /// What `node` held is gone: it was restarted, its process is not running, or it stayed
    /// unreachable for `farm.hold`. Its users' sessions ended (a link that drops and comes
    /// back to the same process loses nothing, and says only [`LinkEvent::Down`]).
    Lost(String),
    /// A stanza sent to `node` that was never delivered (the link stayed down for
    /// `farm.hold`, or the peer left the farm): its sender gets an error.
    Undelivered {
        node: String,
        stanza: Element,
        /// Its sender's receipt, if it gave one ([`FarmLinks::send_or_hold`]).
        receipt: Option<Receipt>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("the link to that node is down")]
    Down,
    #[error("the link to that node is congested")]
    Full,
    #[error("no such node")]
    Unknown,
}

/// A client the master relays to this node: its stream, right after the handoff.
pub struct RelayedClient {
    pub io: Box<dyn Io>,
    /// The master that relays it.
    pub from_node: String,
    pub handoff: Handoff,
}

/// What a node does with a relayed client (a slave: negotiate, then the session).
pub type RelayHandler = Arc<
    dyn Fn(RelayedClient) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
        + Send
        + Sync,
>;

struct Peer {
    addr: SocketAddr,
    /// What we sent it (or will) and it has not acknowledged, with the receipts of their
    /// senders: outlives connections.
    outbox: Mutex<Outbox<Option<Receipt>>>,
    /// What we took from it, and the connection whose frames count. Locked while a frame is
    /// counted and handed on, so a new connection's sync sees every frame an older one
    /// handed on, and the older one hands on nothing more.
    inbox: tokio::sync::Mutex<(Inbox, u64)>,
    /// What of the inbox's frames is safe (the writer acknowledges it); replaced when the
    /// peer is another process.
    ledger: ArcSwap<Ledger>,
    /// What the writer last acknowledged.
    acked_sent: AtomicU64,
    /// Wakes the writer: frames to write, or frames to acknowledge.
    wake: Notify,
    /// Wakes senders waiting for room.
    room: Notify,
    up: AtomicBool,
    /// The link's state while it is down.
    down: Mutex<Down>,
    /// The current connection: its number, and what ends it (a newer one ends it).
    conn: Mutex<(u64, CancellationToken)>,
    /// Cancelled when the peer leaves the farm: its link and its reconnect loop end.
    gone: CancellationToken,
    /// The topology no longer has this peer, but its link was up: it is emptying itself
    /// (its users still send through the link), and goes when the link drops.
    leaving: AtomicBool,
}

/// A peer's link while it is down.
struct Down {
    /// Since when (at start: since the node started).
    since: Instant,
    /// The link was up at least once since this node started.
    ever_up: bool,
    /// Its process is not running (its port refuses connections): only what is worth
    /// holding ([`FarmLinks::send_or_hold`]) is still taken for it.
    dead: bool,
    /// [`LinkEvent::Lost`] was said for this time down.
    lost: bool,
}

impl Peer {
    fn new(addr: SocketAddr, queue: usize, queue_bytes: usize) -> Peer {
        Peer {
            addr,
            outbox: Mutex::new(Outbox::new(queue, queue_bytes)),
            inbox: tokio::sync::Mutex::new((Inbox::default(), 0)),
            ledger: ArcSwap::new(Ledger::new(String::new(), 0, PATIENCE)),
            acked_sent: AtomicU64::new(0),
            wake: Notify::new(),
            room: Notify::new(),
            up: AtomicBool::new(false),
            down: Mutex::new(Down {
                since: Instant::now(),
                ever_up: false,
                dead: false,
                lost: false,
            }),
            conn: Mutex::new((0, CancellationToken::new())),
            gone: CancellationToken::new(),
            leaving: AtomicBool::new(false),
        }
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox<Option<Receipt>>> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn down(&self) -> std::sync::MutexGuard<'_, Down> {
        self.down.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a frame may be queued for this peer now (`held`: it is worth holding while the
    /// peer's process is not running).
    fn admits(&self, held: bool, hold: Duration) -> Result<(), SendError> {
        if self.up.load(Ordering::Acquire) {
            return Ok(());
        }
        let down = self.down();
        if down.since.elapsed() >= hold || (down.dead && !held) {
            return Err(SendError::Down);
        }
        Ok(())
    }

    /// Queue `frame` (with its sender's receipt) if there is room; they come back when there
    /// is none.
    #[allow(clippy::result_large_err)]
    fn push(
        &self,
        frame: Vec<u8>,
        receipt: Option<Receipt>,
    ) -> Result<(), (Vec<u8>, Option<Receipt>)> {
        {
            let mut out = self.outbox();
            if !out.has_room(frame.len()) {
                return Err((frame, receipt));
            }
            out.push(frame, Instant::now(), receipt);
        }
        self.wake.notify_waiters();
        Ok(())
    }
}

/// The peers by name, replaced as a whole when the topology's node set changes.
type Peers = HashMap<String, Arc<Peer>>;

pub struct FarmLinks {
    me: String,
    key: Vec<u8>,
    /// The farm's shape: the peers, and the fingerprint each handshake compares.
    topology: SharedTopology,
    /// The topology's other nodes ([`Self::sync_peers`] keeps them in step).
    peers: ArcSwap<Peers>,
    /// Set by [`Self::start`]: where reconnect loops for peers that join are spawned.
    running: OnceLock<(CancellationToken, TaskTracker)>,
    /// Ourselves, for the tasks [`Self::sync_peers`] spawns.
    this: std::sync::Weak<FarmLinks>,
    events: mpsc::Sender<LinkEvent>,
    heartbeat: Duration,
    dead_after: Duration,
    queue: usize,
    queue_bytes: usize,
    hold: Duration,
    /// `farm.faildetect` heartbeats: a peer down this long is failed.
    fail_after: Duration,
    /// `farm.retry`: the longest wait between two connection attempts.
    retry: Duration,
    /// Users of a failed slave go to the next one in their ranking (central data).
    failover: bool,
    /// This process, as its peers tell it from an earlier one (a restart).
    incarnation: String,
    max_frame: usize,
    tls: Option<LinkTls>,
    /// Nodes that may relay clients to us.
    masters: Vec<String>,
    relay_handler: OnceLock<RelayHandler>,
    /// A master's relay connection to each slave ([`crate::mux`]), opened on its first
    /// relayed client.
    relays: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Option<Mux>>>>>,
    /// What this node answers to admin requests beyond the links' own status.
    admin_handler: OnceLock<AdminHandler>,
    /// One permit per accepted connection still in its TLS or link handshake.
    handshakes: Arc<tokio::sync::Semaphore>,
    /// Connections closed because every handshake slot was taken.
    refused: AtomicU64,
    /// Times each peer was lost (restarted, not running, away for `farm.hold`), for the
    /// node's metrics.
    pub lost: crate::metrics::Counters,
}

/// One peer's link as the metrics show it.
pub struct PeerState {
    pub name: String,
    pub up: bool,
    /// [`FarmLinks::is_failed`].
    pub failed: bool,
    /// Frames its outbox keeps (queued, or written and not acknowledged), and their bytes.
    pub queued: usize,
    pub queued_bytes: usize,
}

/// TLS on links: our server config for accepted links, a client config for the ones we open.
#[derive(Clone)]
pub struct LinkTls {
    pub server: Arc<rustls::ServerConfig>,
    pub client: Arc<rustls::ClientConfig>,
    /// The name peers' certificates are checked against (the public domain).
    pub domain: String,
}

impl FarmLinks {
    /// Links for node `me` of `cfg`, to the peers `topology` has now. Events (peers up/down,
    /// routed stanzas) arrive on the returned receiver, bounded: a slow node slows its links
    /// down rather than growing.
    pub fn new(
        cfg: &FarmConfig,
        topology: &SharedTopology,
        me: &str,
        tls: Option<LinkTls>,
    ) -> (Arc<FarmLinks>, mpsc::Receiver<LinkEvent>) {
        let (events, rx) = mpsc::channel(1024);
        let now = topology.load();
        let peers: Peers = now
            .nodes
            .iter()
            .filter(|n| n.name != me)
            .map(|n| {
                let peer = Peer::new(n.farm, cfg.farm.queue, cfg.farm.queue_bytes);
                (n.name.clone(), Arc::new(peer))
            })
            .collect();
        let links = Arc::new_cyclic(|this| FarmLinks {
            this: this.clone(),
            me: me.to_owned(),
            key: link_key(&cfg.secret),
            topology: topology.clone(),
            peers: ArcSwap::from_pointee(peers),
            running: OnceLock::new(),
            events,
            heartbeat: cfg.farm.heartbeat,
            dead_after: cfg.farm.dead_after,
            queue: cfg.farm.queue,
            queue_bytes: cfg.farm.queue_bytes,
            hold: cfg.farm.hold,
            fail_after: cfg.farm.fail_after(),
            retry: cfg.farm.retry.max(BACKOFF_MIN),
            failover: cfg.storage.central(),
            incarnation: format!("{:016x}", rand::random::<u64>()),
            // Twice a stanza: a user's data moving to another slave travels as base64 parts,
            // a part at most one stored stanza (4/3 of it) with its tags.
            max_frame: 2 * cfg.limits.max_stanza + FRAME_SLACK,
            tls,
            masters: now
                .nodes
                .iter()
                .filter(|n| n.role == Role::Master && n.name != me)
                .map(|n| n.name.clone())
                .collect(),
            relay_handler: OnceLock::new(),
            relays: Mutex::new(HashMap::new()),
            admin_handler: OnceLock::new(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
            refused: AtomicU64::new(0),
            lost: Default::default(),
        });
        (links, rx)
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// The node's topology, which the links hand over and take (`farm/topology.rs`).
    pub fn topology(&self) -> &SharedTopology {
        &self.topology
    }

    pub fn is_up(&self, node: &str) -> bool {
        self.peer(node)
            .is_some_and(|p| p.up.load(Ordering::Acquire))
    }

    fn peer(&self, node: &str) -> Option<Arc<Peer>> {
        self.peers.load().get(node).cloned()
    }

    /// Names of the peers whose link is up.
    pub fn up_nodes(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .peers
            .load()
            .iter()
            .filter(|(_, p)| p.up.load(Ordering::Acquire))
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    pub fn all_up(&self) -> bool {
        self.peers
            .load()
            .values()
            .all(|p| p.up.load(Ordering::Acquire))
    }

    /// Take clients relayed by a master (a slave calls this before [`Self::start`]).
    pub fn accept_relays(&self, handler: RelayHandler) {
        let _ = self.relay_handler.set(handler);
    }

    /// Queue an element for `node` if there is room right now (for notices nobody waits
    /// for).
    pub fn try_send(&self, node: &str, el: &Element) -> Result<(), SendError> {
        let peer = self.peer(node).ok_or(SendError::Unknown)?;
        peer.admits(false, self.hold)?;
        peer.push(frame_of(el), None).map_err(|_| SendError::Full)
    }

    /// Hand one client over to `node` on the relay connection to it (opened if there is
    /// none, or it is gone): the returned stream is the client's at the slave
    /// ([`crate::mux`]).
    pub async fn open_relay(&self, node: &str, handoff: &Handoff) -> Result<Box<dyn Io>, String> {
        let peer = self.peer(node).ok_or("no such node")?;
        let cell = lock(&self.relays)
            .entry(node.to_owned())
            .or_default()
            .clone();
        // One dial at a time per slave; the others wait for it and share it.
        let mut mux = cell.lock().await;
        if mux.as_ref().is_none_or(Mux::is_closed) {
            let (stop, tracker) = self.running.get().ok_or("the links are not running")?;
            let (link, _) = self.connect_once(node, peer.addr, Purpose::Relay).await?;
            let (m, reader) = Mux::opener(link.io, self.mux_timing(), stop.clone(), tracker);
            let name = node.to_owned();
            tracker.spawn(async move {
                match reader.await {
                    Ok(()) => info!(peer = %name, "relay connection to {name} closed"),
                    Err(e) => warn!(peer = %name, "relay connection to {name} lost: {e}"),
                }
            });
            info!(peer = %node, "relay connection to {node} open");
            *mux = Some(m);
        }
        let m = mux.as_ref().ok_or("no relay connection")?;
        let s = m
            .open(&frame_of(&handoff.to_element()))
            .ok_or("the relay connection closed")?;
        Ok(Box::new(s))
    }

    fn mux_timing(&self) -> mux::Timing {
        mux::Timing {
            heartbeat: self.heartbeat,
            dead_after: self.dead_after,
        }
    }

    /// Queue a stanza for `node`, waiting at most [`SEND_WAIT`] for room: a busy link slows
    /// its senders down before it refuses them. The link keeps it until the peer has it,
    /// across reconnects, for at most `farm.hold` while the link is down (then
    /// [`LinkEvent::Undelivered`]). Refused at once when the peer's process is known not to
    /// run, or the link has been down for `farm.hold`.
    pub async fn send(&self, node: &str, stanza: &Element) -> Result<(), SendError> {
        self.queue_for(node, stanza, false, None).await
    }

    /// [`Self::send`] for what is worth holding while the peer's process is not running
    /// (messages, subscription requests: the peer stores them when it is back); refused only
    /// when the link has been down for `farm.hold`. `receipt` (the sender's) is kept with the
    /// frame until the peer acknowledges it — the stanza is safe there — or given back with
    /// it in [`LinkEvent::Undelivered`].
    pub async fn send_or_hold(
        &self,
        node: &str,
        stanza: &Element,
        receipt: Option<Receipt>,
    ) -> Result<(), SendError> {
        self.queue_for(node, stanza, true, receipt).await
    }

    /// [`Self::send`] with its sender's receipt, kept with the frame until the peer
    /// acknowledges it (the stanza is safe there).
    pub async fn send_tracked(
        &self,
        node: &str,
        stanza: &Element,
        receipt: Receipt,
    ) -> Result<(), SendError> {
        self.queue_for(node, stanza, false, Some(receipt)).await
    }

    async fn queue_for(
        &self,
        node: &str,
        stanza: &Element,
        held: bool,
        mut receipt: Option<Receipt>,
    ) -> Result<(), SendError> {
        let peer = self.peer(node).ok_or(SendError::Unknown)?;
        peer.admits(held, self.hold)?;
        let mut frame = frame_of(stanza);
        let deadline = tokio::time::Instant::now() + SEND_WAIT;
        loop {
            let room = peer.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match peer.push(frame, receipt) {
                Ok(()) => return Ok(()),
                Err(back) => (frame, receipt) = back,
            }
            // Only a link that is up makes room: for a peer that is down, a full outbox is
            // an answer now, not in SEND_WAIT.
            if !peer.up.load(Ordering::Acquire) {
                return Err(SendError::Full);
            }
            if tokio::time::timeout_at(deadline, room).await.is_err() {
                return Err(SendError::Full);
            }
            peer.admits(held, self.hold)?;
        }
    }

    /// Whether `node` is failed: a peer whose link is down and whose port refuses
    /// connections, or that has been down for `farm.faildetect` heartbeats; or a slave taken
    /// out of service (`inservice = false`) or drained, this node included.
    pub fn is_failed(&self, node: &str) -> bool {
        if self
            .topology
            .load()
            .node(node)
            .is_some_and(|n| !n.in_service())
        {
            return true;
        }
        let Some(peer) = self.peer(node) else {
            return false;
        };
        if peer.up.load(Ordering::Acquire) {
            return false;
        }
        let down = peer.down();
        down.dead || down.since.elapsed() >= self.fail_after
    }

    /// Whether the users of a failed slave go to the next one in their ranking here (the
    /// data is central).
    pub fn fails_over(&self) -> bool {
        self.failover
    }

    /// Who serves `user` (a normalized localpart) now: its owner in `topology`, or — with
    /// central data, when the owner is failed — the first slave of its ranking that is not
    /// (docs/operations.md, "Failover"). With every one failed, the owner.
    pub fn serving<'t>(&self, topology: &'t jabberfarm_config::Topology, user: &str) -> &'t str {
        self.first_of_ranking(topology, user, |n| self.is_failed(n))
    }

    /// [`Self::serving`] for a login the master sent here: a slave whose link is down counts
    /// as failed already (the master marked it failed; this node may take up to a probe
    /// longer to see it).
    pub fn serving_login<'t>(
        &self,
        topology: &'t jabberfarm_config::Topology,
        user: &str,
    ) -> &'t str {
        self.first_of_ranking(topology, user, |n| {
            (n != self.me && !self.is_up(n)) || self.is_failed(n)
        })
    }

    /// The owner of `user`, unless failover applies and it is `gone`: then the first slave of
    /// the user's ranking that is not (the owner when all are).
    fn first_of_ranking<'t>(
        &self,
        topology: &'t jabberfarm_config::Topology,
        user: &str,
        gone: impl Fn(&str) -> bool,
    ) -> &'t str {
        let owner = topology.owner(user);
        if !self.failover || !gone(owner) {
            return owner;
        }
        topology
            .ranked(user)
            .into_iter()
            .find(|n| !gone(n))
            .unwrap_or(owner)
    }

    /// Every peer's link: up or not, and what its outbox keeps.
    pub fn peer_states(&self) -> Vec<PeerState> {
        let mut v: Vec<PeerState> = self
            .peers
            .load()
            .iter()
            .map(|(name, p)| {
                let out = p.outbox();
                PeerState {
                    failed: self.is_failed(name),
                    name: name.clone(),
                    up: p.up.load(Ordering::Acquire),
                    queued: out.len(),
                    queued_bytes: out.bytes(),
                }
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Frames kept for `node` (queued or not yet acknowledged), and their bytes.
    pub fn queued(&self, node: &str) -> (usize, usize) {
        self.peer(node).map_or((0, 0), |p| {
            let out = p.outbox();
            (out.len(), out.bytes())
        })
    }

    /// Accept links on `listener` and keep links to the peers we connect to, until `shutdown`.
    pub fn start(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
        let me = self.clone();
        let (sd, tr) = (shutdown.clone(), tracker.clone());
        tracker.spawn(async move { me.accept_loop(listener, sd, tr).await });
        let _ = self.running.set((shutdown, tracker.clone()));
        for (name, peer) in self.peers.load().iter() {
            self.keep_linked(name, peer);
        }
    }

    /// Reconnects to `peer` for as long as it is in the farm, if we are the side that
    /// connects (the name that sorts first); looks after its link while it is down.
    fn keep_linked(self: &Arc<Self>, name: &str, peer: &Arc<Peer>) {
        let Some((shutdown, tracker)) = self.running.get() else {
            return;
        };
        let me = self.clone();
        let (n, p, sd) = (name.to_owned(), peer.clone(), shutdown.clone());
        tracker.spawn(async move { me.keep(n, p, sd).await });
        if self.me.as_str() < name {
            let me = self.clone();
            let (name, addr) = (name.to_owned(), peer.addr);
            // Ends with the node, or when the peer leaves the farm.
            let stop = shutdown.child_token();
            let gone = peer.gone.clone();
            let s2 = stop.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = gone.cancelled() => s2.cancel(),
                    _ = s2.cancelled() => {}
                }
            });
            tracker.spawn(async move { me.connect_loop(name, addr, stop).await });
        }
    }

    /// Makes the peers the topology's other nodes: links to nodes that joined; a node that
    /// left keeps its link while it is up (it is moving its users away and stops when it is
    /// empty), and is forgotten when that link drops.
    pub(crate) fn sync_peers(&self) {
        let topology = self.topology.load();
        let current = self.peers.load_full();
        let mut next: Peers = HashMap::new();
        let mut joined = Vec::new();
        for n in topology.nodes.iter().filter(|n| n.name != self.me) {
            let peer = match current.get(&n.name) {
                Some(p) if !p.gone.is_cancelled() => {
                    p.leaving.store(false, Ordering::Release);
                    p.clone()
                }
                _ => {
                    let p = Arc::new(Peer::new(n.farm, self.queue, self.queue_bytes));
                    joined.push((n.name.clone(), p.clone()));
                    p
                }
            };
            next.insert(n.name.clone(), peer);
        }
        let left: Vec<_> = current
            .iter()
            .filter(|(n, _)| !next.contains_key(*n))
            .collect();
        for (name, peer) in left {
            if peer.up.load(Ordering::Acquire) {
                if !peer.leaving.swap(true, Ordering::AcqRel) {
                    info!(peer = %name, "{name} left the farm: its link stays until it is empty and stops");
                }
                next.insert(name.clone(), peer.clone());
            } else {
                info!(peer = %name, "{name} left the farm: no link to it any more");
                peer.gone.cancel();
            }
        }
        self.peers.store(Arc::new(next));
        let Some(me) = self.this.upgrade() else {
            return;
        };
        for (name, peer) in joined {
            info!(peer = %name, "{name} joined the farm");
            me.keep_linked(&name, &peer);
        }
    }

    /// A peer that left the farm and whose link dropped: forgotten, never reconnected.
    fn forget_if_left(&self, name: &str, peer: &Arc<Peer>) {
        if !peer.leaving.load(Ordering::Acquire) {
            return;
        }
        peer.gone.cancel();
        let current = self.peers.load_full();
        if current.get(name).is_some_and(|p| Arc::ptr_eq(p, peer)) {
            let mut next = Peers::clone(&current);
            next.remove(name);
            // A topology change in between rebuilt the map: it decided on its own.
            let _ = self.peers.compare_and_swap(&current, Arc::new(next));
            info!(peer = %name, "{name} has left the farm");
        }
    }

    async fn accept_loop(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: TaskTracker,
    ) {
        loop {
            let (sock, peer_addr) = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        warn!("farm link accept failed: {e}");
                        tokio::time::sleep(BACKOFF_MIN).await;
                        continue;
                    }
                },
            };
            // Bounded like a client port: a flood of connections that never authenticate
            // (each held at most HANDSHAKE_TIMEOUT) cannot grow without end.
            let Ok(slot) = self.handshakes.clone().try_acquire_owned() else {
                let n = self.refused.fetch_add(1, Ordering::Relaxed);
                if n.is_power_of_two() || n == 0 {
                    warn!(
                        %peer_addr,
                        refused = n + 1,
                        "farm port: {MAX_HANDSHAKES} connections are in their handshake \
                         already; closed"
                    );
                }
                drop(sock);
                continue;
            };
            let _ = sock.set_nodelay(true);
            let me = self.clone();
            let sd = shutdown.clone();
            tracker.spawn(async move {
                let io: Box<dyn Io> = match &me.tls {
                    None => Box::new(sock),
                    Some(t) => {
                        let acceptor = tokio_rustls::TlsAcceptor::from(t.server.clone());
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(sock)).await {
                            Ok(Ok(s)) => Box::new(s),
                            // Closed before a byte: a peer checking whether we run.
                            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                                return debug!(%peer_addr, "farm port: closed before TLS");
                            }
                            _ => {
                                warn!(%peer_addr, "farm link: TLS handshake failed");
                                return;
                            }
                        }
                    }
                };
                let mut link = Framed::new(io, HANDSHAKE_FRAME);
                let hs = tokio::time::timeout(HANDSHAKE_TIMEOUT, me.handshake_accept(&mut link));
                let hs = hs.await;
                drop(slot);
                if matches!(hs, Ok(Ok(_))) {
                    link.authenticated(me.max_frame);
                }
                match hs {
                    Ok(Ok((peer, Purpose::Link, table))) => me.serve(peer, table, link, sd).await,
                    Ok(Ok((peer, Purpose::Relay, _))) => me.take_relay(peer, link).await,
                    Ok(Ok((_, Purpose::Admin, _))) => me.serve_admin(link).await,
                    // Closed before its hello: a peer checking whether we run.
                    Ok(Err(e)) if e == EARLY_EOF => debug!(%peer_addr, "farm port: closed at once"),
                    Ok(Err(e)) => warn!(%peer_addr, "farm link refused: {e}"),
                    Err(_) => warn!(%peer_addr, "farm link: handshake timed out"),
                }
            });
        }
    }

    async fn connect_loop(
        self: Arc<Self>,
        name: String,
        addr: SocketAddr,
        shutdown: CancellationToken,
    ) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            match self.connect_once(&name, addr, Purpose::Link).await {
                Ok((link, table)) => {
                    backoff = BACKOFF_MIN;
                    self.serve(name.clone(), table, link, shutdown.clone())
                        .await;
                }
                Err(e) => debug!(peer = %name, %addr, "farm link: {e}"),
            }
            let jitter = Duration::from_millis(u64::from(rand::random::<u8>()));
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(backoff + jitter) => {}
            }
            // A failed peer is tried every `farm.retry`.
            backoff = (backoff * 2).min(self.retry);
        }
    }

    async fn connect_once(
        &self,
        name: &str,
        addr: SocketAddr,
        purpose: Purpose,
    ) -> Result<(Framed, PeerTable), String> {
        let tls = self.tls.as_ref().map(|t| (&t.client, t.domain.as_str()));
        let io = dial(addr, tls).await?;
        let mut link = Framed::new(io, HANDSHAKE_FRAME);
        let table = tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            self.handshake_connect(&mut link, name, purpose),
        )
        .await
        .map_err(|_| "handshake timed out".to_owned())??;
        link.authenticated(self.max_frame);
        Ok((link, table))
    }

    /// Connector side of the handshake ([`jabberfarm_proto::link::Connector`] decides).
    /// Public for the fuzz targets (`fuzz/fuzz_targets/farm_frames.rs`).
    pub async fn handshake_connect(
        &self,
        link: &mut Framed,
        peer: &str,
        purpose: Purpose,
    ) -> Result<PeerTable, String> {
        // One snapshot per handshake: both sides compare the same table.
        let now = self.topology.load();
        let table = Table {
            fingerprint: now.fingerprint(),
            epoch: now.epoch,
        };
        let c = Connector::new(&self.key, &self.me, peer, table, purpose, new_nonce());
        link.send_el(&c.hello()).await?;
        let answer = link.recv_el().await?;
        let (auth, theirs) = match c.on_hello(&answer) {
            Ok(x) => x,
            Err(f) => return Err(failed(link, peer, f).await),
        };
        link.send_el(&auth).await?;
        let last = link.recv_el().await?;
        match c.on_answer(&last) {
            Ok(()) => Ok(theirs),
            Err(f) => Err(failed(link, peer, f).await),
        }
    }

    /// Acceptor side of the handshake ([`jabberfarm_proto::link::Acceptor`] decides); returns
    /// the authenticated peer's name, what it connected for and its routing table.
    /// Public for the fuzz targets (`fuzz/fuzz_targets/farm_frames.rs`).
    pub async fn handshake_accept(
        &self,
        link: &mut Framed,
    ) -> Result<(String, Purpose, PeerTable), String> {
        // One snapshot per handshake: both sides compare the same table.
        let now = self.topology.load();
        let table = Table {
            fingerprint: now.fingerprint(),
            epoch: now.epoch,
        };
        let a = Acceptor::new(&self.key, &self.me, table, new_nonce());
        let hello = link.recv_el().await?;
        // Links are opened by the node whose name sorts first; relays only by masters, and
        // only to a node that takes relayed clients.
        let allowed = |peer: &str, purpose| match purpose {
            Purpose::Link => self.peers.load().contains_key(peer) && peer < self.me.as_str(),
            Purpose::Relay => {
                self.masters.iter().any(|m| m == peer) && self.relay_handler.get().is_some()
            }
            Purpose::Admin => peer == ADMIN_NAME,
        };
        let (hello, answer) = match a.on_hello(&hello, allowed) {
            Ok(x) => x,
            Err(f) => {
                let peer = hello.attr("node").unwrap_or("?").to_owned();
                return Err(failed(link, &peer, f).await);
            }
        };
        link.send_el(&answer).await?;
        let auth = link.recv_el().await?;
        match a.on_auth(&hello, &auth) {
            Ok(welcome) => {
                link.send_el(&welcome).await?;
                Ok((hello.peer, hello.purpose, hello.table))
            }
            Err(f) => Err(failed(link, &hello.peer, f).await),
        }
    }

    /// An authenticated relay connection from a master: every `OPEN` on it is a client,
    /// given to the handler on a task of its own.
    async fn take_relay(&self, peer: String, link: Framed) {
        let (Some(handler), Some((stop, tracker))) = (self.relay_handler.get(), self.running.get())
        else {
            return;
        };
        let (handler, t2, from) = (handler.clone(), tracker.clone(), peer.clone());
        let mut parser = frame_parser(self.max_frame);
        let on_open = move |io: MuxStream, payload: &[u8]| {
            let handoff =
                parse_frame(&mut parser, payload).and_then(|el| Handoff::from_element(&el));
            match handoff {
                Ok(handoff) => {
                    let client = RelayedClient {
                        io: Box::new(io),
                        from_node: from.clone(),
                        handoff,
                    };
                    t2.spawn(handler(client));
                }
                // The stream is dropped: the master's end reads as closed.
                Err(e) => warn!(peer = %from, "relay from {from}: {e}"),
            }
            Ok(())
        };
        let reader = Mux::taker(
            link.io,
            self.mux_timing(),
            stop.clone(),
            tracker,
            self.max_frame,
            on_open,
        );
        info!(peer = %peer, "relay connection from {peer} open");
        match reader.await {
            Ok(()) => info!(peer = %peer, "relay connection from {peer} closed"),
            Err(e) => warn!(peer = %peer, "relay connection from {peer} lost: {e}"),
        }
    }

    /// Run an authenticated link until it fails, a newer connection to the same peer takes
    /// over, or we stop.
    async fn serve(
        &self,
        peer_name: String,
        table: PeerTable,
        mut link: Framed,
        shutdown: CancellationToken,
    ) {
        let Some(peer) = self.peer(&peer_name) else {
            return;
        };
        // A newer connection ends an older one (a link that came back before the old
        // connection noticed it was dead).
        let conn = CancellationToken::new();
        let generation = {
            let mut c = peer.conn.lock().unwrap_or_else(|p| p.into_inner());
            c.0 += 1;
            std::mem::replace(&mut c.1, conn.clone()).cancel();
            c.0
        };
        if let Some((resend_from, restarted)) =
            self.sync(&peer_name, &peer, generation, &mut link).await
        {
            if restarted {
                self.lost(&peer_name, &peer, "it was restarted").await;
            }
            self.run_link(
                &peer_name,
                &peer,
                generation,
                resend_from,
                table,
                link,
                &conn,
                &shutdown,
            )
            .await;
        }
        let current = peer.conn.lock().unwrap_or_else(|p| p.into_inner()).0 == generation;
        if current && peer.up.swap(false, Ordering::AcqRel) {
            {
                let mut down = peer.down();
                down.since = Instant::now();
                down.dead = false;
                down.lost = false;
            }
            if !shutdown.is_cancelled() && !peer.leaving.load(Ordering::Acquire) {
                let (n, bytes) = self.queued(&peer_name);
                warn!(
                    peer = %peer_name,
                    "farm link to {peer_name} down; {n} frames ({bytes} bytes) kept for it, \
                     written when it is back (at most {} s)",
                    self.hold.as_secs()
                );
            }
            self.forget_if_left(&peer_name, &peer);
            let _ = self.events.try_send(LinkEvent::Down(peer_name));
        }
    }

    /// A connection's first frames: our `<sync/>`, then the peer's (`jabberfarm_proto::link::
    /// outbox`). Under the inbox lock, so no older connection hands anything on after it.
    /// Where our writing starts, and whether the peer is another process than last time.
    async fn sync(
        &self,
        name: &str,
        peer: &Peer,
        generation: u64,
        link: &mut Framed,
    ) -> Option<(u64, bool)> {
        let mut inbox = peer.inbox.lock().await;
        inbox.1 = generation;
        let safe = peer.ledger.load().done();
        let ours = inbox.0.sync(&self.incarnation, &peer.outbox(), safe);
        let exchange = async {
            link.send_el(&ours.to_element()).await?;
            outbox::Sync::from_element(&link.recv_el().await?)
        };
        let theirs = match tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange).await {
            Ok(Ok(sync)) => sync,
            Ok(Err(e)) => {
                warn!(peer = %name, "farm link to {name}: {e}");
                return None;
            }
            Err(_) => {
                warn!(peer = %name, "farm link to {name}: no <sync/> in time");
                return None;
            }
        };
        let outcome = inbox
            .0
            .on_sync(&self.incarnation, &theirs, &mut peer.outbox());
        let got = inbox.0.received();
        if outcome.fresh {
            // What the frames of an earlier process still hold settles in its old ledger.
            peer.ledger.store(Ledger::new(name, got, PATIENCE));
            peer.acked_sent.store(got, Ordering::Release);
        } else {
            peer.ledger.load().skip_to(got);
            peer.acked_sent.store(ours.h, Ordering::Release);
        }
        Some((outcome.resend_from, outcome.restarted))
    }

    /// A synced connection, until it fails or is ended: the writer writes what the outbox
    /// keeps (from `resend_from`) and acknowledges what the reader took; the reader hands
    /// frames on, counting them, and releases what the peer acknowledges.
    #[allow(clippy::too_many_arguments)]
    async fn run_link(
        &self,
        peer_name: &str,
        peer: &Peer,
        generation: u64,
        resend_from: u64,
        table: PeerTable,
        link: Framed,
        conn: &CancellationToken,
        shutdown: &CancellationToken,
    ) {
        {
            let mut down = peer.down();
            down.ever_up = true;
            down.dead = false;
            down.lost = false;
        }
        peer.up.store(true, Ordering::Release);
        let (a, b) = if self.me.as_str() < peer_name {
            (self.me.as_str(), peer_name)
        } else {
            (peer_name, self.me.as_str())
        };
        info!("farm link {a} <-> {b} up");
        let _ = self.events.send(LinkEvent::Up(peer_name.to_owned())).await;
        if self.is_master() {
            self.reconcile(peer_name, &table).await;
        }

        let Framed {
            io,
            mut parser,
            max_frame,
        } = link;
        let (rd, mut wr) = tokio::io::split(io);
        // The writer batches frames into one write; buffered, the reader takes a batch in one
        // read too (instead of two reads per frame: its length, then its bytes).
        let mut rd = tokio::io::BufReader::with_capacity(64 * 1024, rd);
        let heartbeat = self.heartbeat;
        let writer = async {
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut next = resend_from;
            let mut last_write = tokio::time::Instant::now();
            loop {
                let wake = peer.wake.notified();
                tokio::pin!(wake);
                wake.as_mut().enable();
                buf.clear();
                next = peer.outbox().write_from(next, &mut buf, WRITE_BATCH);
                let ledger = peer.ledger.load();
                let acked = peer.acked_sent.load(Ordering::Acquire);
                let safe = ledger.done();
                // Read and not acknowledged: safe now, or still on its way.
                let unsafe_yet = ledger.taken().saturating_sub(safe);
                let ready = safe.saturating_sub(acked);
                if buf.is_empty() && ready < ACK_EVERY {
                    // Nothing to write yet: wait for frames, then acknowledge what is safe by
                    // then, or say we are alive.
                    let wait = if ready > 0 || unsafe_yet > 0 {
                        ACK_DELAY
                    } else {
                        heartbeat
                    };
                    if tokio::time::timeout(wait, wake).await.is_ok() {
                        continue;
                    }
                }
                let safe = ledger.done();
                if safe > peer.acked_sent.load(Ordering::Acquire) {
                    push_frame(&mut buf, &frame_of(&outbox::ack(safe)));
                    peer.acked_sent.store(safe, Ordering::Release);
                } else if buf.is_empty() {
                    if last_write.elapsed() < heartbeat {
                        // Waiting for what is not safe yet.
                        continue;
                    }
                    buf.extend_from_slice(&0u32.to_be_bytes());
                }
                last_write = tokio::time::Instant::now();
                if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
        };
        let dead_after = self.dead_after;
        let name = peer_name;
        let reader = async {
            loop {
                let frame = match tokio::time::timeout(dead_after, read_frame(&mut rd, max_frame))
                    .await
                {
                    Err(_) => {
                        warn!(peer = %name, "farm link to {name}: silent for {} s, dropping it", dead_after.as_secs());
                        return;
                    }
                    Ok(Err(e)) => {
                        debug!(peer = %name, "farm link to {name} closed: {e}");
                        return;
                    }
                    Ok(Ok(f)) => f,
                };
                if frame.is_empty() {
                    continue; // heartbeat
                }
                let el = match parse_frame(&mut parser, &frame) {
                    Ok(el) => el,
                    Err(e) => {
                        warn!(peer = %name, "farm link to {name}: bad frame ({e}), dropping the link");
                        return;
                    }
                };
                if let Some(h) = outbox::parse_ack(&el) {
                    let released = {
                        let mut out = peer.outbox();
                        (h < out.end()).then(|| out.acked(h))
                    };
                    match released {
                        None => {
                            warn!(peer = %name, "farm link to {name}: it acknowledged frame {h}, never sent; dropping the link");
                            return;
                        }
                        Some(0) => {}
                        Some(_) => peer.room.notify_waiters(),
                    }
                    continue;
                }
                if outbox::is_sequence_element(&el) {
                    warn!(peer = %name, "farm link to {name}: <{}/> after the sync; dropping the link", el.name);
                    return;
                }
                let mut inbox = peer.inbox.lock().await;
                if inbox.1 != generation {
                    return;
                }
                let h = inbox.0.took();
                let receipt = peer.ledger.load().track();
                if topology::is_control(&el) {
                    self.on_control(name, &el).await;
                } else if self
                    .events
                    .send(LinkEvent::Stanza {
                        from_node: name.to_owned(),
                        stanza: el,
                        receipt,
                    })
                    .await
                    .is_err()
                {
                    return;
                }
                drop(inbox);
                let pending = h.saturating_sub(peer.acked_sent.load(Ordering::Acquire));
                if pending == 1 || pending % ACK_EVERY == 0 {
                    peer.wake.notify_waiters();
                }
            }
        };
        tokio::select! {
            biased;
            _ = conn.cancelled() => {}
            _ = shutdown.cancelled() => {}
            _ = peer.gone.cancelled() => {}
            _ = writer => {}
            _ = reader => {}
        }
    }

    /// Looks after `peer`'s link while it is down, until the peer leaves the farm or we stop:
    /// frames kept longer than `farm.hold` go back to their senders; a peer whose port
    /// refuses connections (its process is not running), or that stays unreachable for
    /// `farm.hold`, is lost. When the peer leaves, what is still kept for it goes back.
    async fn keep(self: Arc<Self>, name: String, peer: Arc<Peer>, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = peer.gone.cancelled() => break,
                _ = tokio::time::sleep(KEEPER_TICK) => {}
            }
            if peer.up.load(Ordering::Acquire) {
                continue;
            }
            if let Some(cutoff) = Instant::now().checked_sub(self.hold) {
                let expired = peer.outbox().expire(cutoff);
                self.undelivered(&name, &peer, expired).await;
            }
            let (since, dead, lost) = {
                let d = peer.down();
                (d.since, d.dead, d.lost)
            };
            if lost {
                continue;
            }
            if since.elapsed() >= self.hold {
                let why = format!("unreachable for {} s", self.hold.as_secs());
                self.lost(&name, &peer, &why).await;
            } else if !dead && refused(peer.addr).await {
                peer.down().dead = true;
                self.lost(
                    &name,
                    &peer,
                    "its farm port refuses connections: not running",
                )
                .await;
            }
        }
        let all = peer.outbox().expire(Instant::now() + KEEPER_TICK);
        self.undelivered(&name, &peer, all).await;
    }

    /// What `peer` held is gone (once per time down; said only of a peer that was linked).
    async fn lost(&self, name: &str, peer: &Peer, why: &str) {
        let say = {
            let mut down = peer.down();
            let say = !down.lost && down.ever_up;
            down.lost = true;
            say
        };
        if say {
            self.lost
                .get_or_create(&crate::metrics::label("peer", name))
                .inc();
            warn!(peer = %name, "{name} is lost ({why}): its users' sessions ended");
            let _ = self.events.send(LinkEvent::Lost(name.to_owned())).await;
        }
    }

    /// Frames that will not be delivered: each goes back to the node as
    /// [`LinkEvent::Undelivered`] (whose sender gets an error).
    async fn undelivered(&self, name: &str, peer: &Peer, frames: Vec<(Vec<u8>, Option<Receipt>)>) {
        if frames.is_empty() {
            return;
        }
        peer.room.notify_waiters();
        warn!(
            peer = %name,
            "{} frames for {name} not delivered within {} s: back to their senders",
            frames.len(),
            self.hold.as_secs()
        );
        let mut parser = frame_parser(self.max_frame);
        for (frame, receipt) in frames {
            let Ok(stanza) = parse_frame(&mut parser, &frame) else {
                continue;
            };
            let node = name.to_owned();
            if self
                .events
                .send(LinkEvent::Undelivered {
                    node,
                    stanza,
                    receipt,
                })
                .await
                .is_err()
            {
                return;
            }
        }
    }
}

/// Whether nothing listens at `addr` (the connection is refused: the node is not running).
async fn refused(addr: SocketAddr) -> bool {
    matches!(
        tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr)).await,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused
    )
}

/// A connection to a farm port; with TLS when given a client config and the name the
/// node's certificate must have.
async fn dial(
    addr: SocketAddr,
    tls: Option<(&Arc<rustls::ClientConfig>, &str)>,
) -> Result<Box<dyn Io>, String> {
    let sock = tokio::time::timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("connect: {e}"))?;
    let _ = sock.set_nodelay(true);
    Ok(match tls {
        None => Box::new(sock),
        Some((client, domain)) => {
            let server_name = rustls_pki_types::ServerName::try_from(domain.to_owned())
                .map_err(|e| format!("TLS name: {e}"))?;
            let c = tokio_rustls::TlsConnector::from(client.clone());
            Box::new(
                tokio::time::timeout(HANDSHAKE_TIMEOUT, c.connect(server_name, sock))
                    .await
                    .map_err(|_| "TLS handshake timed out".to_owned())?
                    .map_err(|e| format!("TLS: {e}"))?,
            )
        }
    })
}

async fn read_frame<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    max: usize,
) -> Result<Vec<u8>, String> {
    let mut len = [0u8; 4];
    rd.read_exact(&mut len).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::UnexpectedEof => EARLY_EOF.to_owned(),
        _ => e.to_string(),
    })?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(format!("frame of {len} bytes exceeds {max}"));
    }
    let mut frame = vec![0u8; len];
    rd.read_exact(&mut frame).await.map_err(|e| e.to_string())?;
    Ok(frame)
}

/// A link before it is split: framing plus the element parser.
pub struct Framed {
    io: Box<dyn Io>,
    parser: StreamParser,
    max_frame: usize,
}

impl Framed {
    pub fn new(io: Box<dyn Io>, max_frame: usize) -> Framed {
        Framed {
            io,
            parser: frame_parser(max_frame),
            max_frame,
        }
    }

    /// The peer proved it knows the farm secret: frames up to `max_frame` from now on.
    fn authenticated(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
        self.parser.set_limits(ParserLimits {
            max_stanza: max_frame,
            max_depth: ParserLimits::POST_AUTH.max_depth,
        });
    }

    async fn send_el(&mut self, el: &Element) -> Result<(), String> {
        let mut s = String::new();
        el.write_to(&mut s, ns::SERVER);
        let mut buf = Vec::with_capacity(s.len() + 4);
        push_frame(&mut buf, s.as_bytes());
        self.io.write_all(&buf).await.map_err(|e| e.to_string())?;
        self.io.flush().await.map_err(|e| e.to_string())
    }

    pub async fn recv_el(&mut self) -> Result<Element, String> {
        loop {
            let frame = read_frame(&mut self.io, self.max_frame).await?;
            if !frame.is_empty() {
                return parse_frame(&mut self.parser, &frame);
            }
        }
    }
}

/// Log a failed handshake as loudly as it deserves and tell the peer why, when it should know.
async fn failed(link: &mut Framed, peer: &str, f: Failure) -> String {
    if let Some(alarm) = &f.alarm {
        error!(peer, "{alarm}");
    }
    if let Some(reason) = &f.refuse {
        let _ = link.send_el(&refuse(reason)).await;
    }
    f.reason
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_one_element_each() {
        let mut buf = Vec::new();
        let el = Element::new("message", ns::CLIENT)
            .with_attr("to", "b@localhost")
            .with_child(Element::new("body", ns::CLIENT).with_text("hi & <bye>"));
        let frame = frame_of(&el);
        push_frame(&mut buf, &frame);
        assert_eq!(&buf[..4], &(frame.len() as u32).to_be_bytes());
        let f = Framed::new(Box::new(tokio::io::duplex(64).0), 1024);
        let mut parser = f.parser;
        let back = parse_frame(&mut parser, &buf[4..]).unwrap();
        assert_eq!(back, el);
    }
}
