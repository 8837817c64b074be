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
//! - **Relayed clients** (DESIGN.md D1b): the master also opens short-lived connections to
//!   a slave's farm port with `purpose='relay'` in its hello (proofs under their own labels);
//!   after the handshake one `<relay/>` frame ([`crate::relay::Handoff`]) follows, and the
//!   connection becomes the client's stream, raw bytes both ways. Only a master may open one,
//!   and only to a node that takes relayed clients ([`FarmLinks::accept_relays`]).
//! - **Bounded**: one queue of `farm.queue` frames per peer; [`FarmLinks::send`] waits a
//!   little for room, then gives [`SendError::Full`] (the caller answers `resource-constraint`).
//!   Before the handshake is done a frame may hold 4 KiB (then `limits.max_stanza` + 4 KiB),
//!   at most 256 accepted connections may be in their handshake at once (more are closed as
//!   they come), and each has 10 s for TLS, then 10 s for the handshake.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};

use crate::relay::Handoff;
use crate::stream::Io;
use jabberfarm_config::{FarmConfig, Role, SharedTopology};
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
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long [`FarmLinks::send`] waits for room in a full queue.
pub const SEND_WAIT: Duration = Duration::from_secs(2);

/// What the links tell the node.
#[derive(Debug)]
pub enum LinkEvent {
    Up(String),
    Down(String),
    /// A stanza routed to us by `from_node`.
    Stanza {
        from_node: String,
        stanza: Element,
    },
    /// This node now runs topology epoch N (handed over by the master): users it served may
    /// belong elsewhere now.
    Topology(u64),
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
    /// Frames for the current connection; `None` while down.
    tx: Mutex<Option<mpsc::Sender<Vec<u8>>>>,
    up: AtomicBool,
    /// Bumped per connection, so a stale connection's teardown does not clear a newer one.
    generation: Mutex<u64>,
    /// Cancelled when the peer leaves the farm: its link and its reconnect loop end.
    gone: CancellationToken,
    /// The topology no longer has this peer, but its link was up: it is emptying itself
    /// (its users still send through the link), and goes when the link drops.
    leaving: AtomicBool,
}

impl Peer {
    fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            tx: Mutex::new(None),
            up: AtomicBool::new(false),
            generation: Mutex::new(0),
            gone: CancellationToken::new(),
            leaving: AtomicBool::new(false),
        }
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
    max_frame: usize,
    tls: Option<LinkTls>,
    /// Nodes that may relay clients to us.
    masters: Vec<String>,
    relay_handler: OnceLock<RelayHandler>,
    /// What this node answers to admin requests beyond the links' own status.
    admin_handler: OnceLock<AdminHandler>,
    /// One permit per accepted connection still in its TLS or link handshake.
    handshakes: Arc<tokio::sync::Semaphore>,
    /// Connections closed because every handshake slot was taken.
    refused: AtomicU64,
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
            .map(|n| (n.name.clone(), Arc::new(Peer::new(n.farm))))
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
            admin_handler: OnceLock::new(),
            handshakes: Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES)),
            refused: AtomicU64::new(0),
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

    /// Queue an element for `node` if there is room right now (for notices that may be
    /// lost: nobody waits for them).
    pub fn try_send(&self, node: &str, el: &Element) -> Result<(), SendError> {
        let peer = self.peer(node).ok_or(SendError::Unknown)?;
        let guard = peer.tx.lock().unwrap_or_else(|p| p.into_inner());
        let tx = guard.as_ref().ok_or(SendError::Down)?;
        tx.try_send(frame_of(el)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => SendError::Full,
            mpsc::error::TrySendError::Closed(_) => SendError::Down,
        })
    }

    /// Open a relay connection to `node` for one client and hand it over: on success the
    /// returned connection is the client's stream at the slave.
    pub async fn open_relay(&self, node: &str, handoff: &Handoff) -> Result<Box<dyn Io>, String> {
        let peer = self.peer(node).ok_or("no such node")?;
        let (mut link, _) = self.connect_once(node, peer.addr, Purpose::Relay).await?;
        link.send_el(&handoff.to_element()).await?;
        Ok(link.io)
    }

    /// Queue a stanza for `node`, waiting at most [`SEND_WAIT`] for room: a busy link slows
    /// its senders down before it refuses them.
    pub async fn send(&self, node: &str, stanza: &Element) -> Result<(), SendError> {
        let peer = self.peer(node).ok_or(SendError::Unknown)?;
        let tx = {
            let guard = peer.tx.lock().unwrap_or_else(|p| p.into_inner());
            guard.clone().ok_or(SendError::Down)?
        };
        tx.send_timeout(frame_of(stanza), SEND_WAIT)
            .await
            .map_err(|e| match e {
                mpsc::error::SendTimeoutError::Timeout(_) => SendError::Full,
                mpsc::error::SendTimeoutError::Closed(_) => SendError::Down,
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
    /// connects (the name that sorts first).
    fn keep_linked(self: &Arc<Self>, name: &str, peer: &Arc<Peer>) {
        let Some((shutdown, tracker)) = self.running.get() else {
            return;
        };
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
                    let p = Arc::new(Peer::new(n.farm));
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
            backoff = (backoff * 2).min(BACKOFF_MAX);
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

    /// An authenticated relay connection: read the handoff, give the client to the handler.
    async fn take_relay(&self, peer: String, mut link: Framed) {
        let Some(handler) = self.relay_handler.get() else {
            return;
        };
        let handoff = match tokio::time::timeout(HANDSHAKE_TIMEOUT, link.recv_el()).await {
            Ok(Ok(el)) => match Handoff::from_element(&el) {
                Ok(h) => h,
                Err(e) => {
                    warn!(peer = %peer, "relay from {peer}: {e}");
                    return;
                }
            },
            Ok(Err(e)) => {
                debug!(peer = %peer, "relay from {peer}: {e}");
                return;
            }
            Err(_) => {
                warn!(peer = %peer, "relay from {peer}: no handoff in time");
                return;
            }
        };
        handler(RelayedClient {
            io: link.io,
            from_node: peer,
            handoff,
        })
        .await;
    }

    /// Run an authenticated link until it fails or we stop.
    async fn serve(
        &self,
        peer_name: String,
        table: PeerTable,
        link: Framed,
        shutdown: CancellationToken,
    ) {
        let Some(peer) = self.peer(&peer_name) else {
            return;
        };
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(self.queue);
        let generation = {
            let mut g = peer.generation.lock().unwrap_or_else(|p| p.into_inner());
            *g += 1;
            *g
        };
        *peer.tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        peer.up.store(true, Ordering::Release);
        let (a, b) = if self.me < peer_name {
            (self.me.as_str(), peer_name.as_str())
        } else {
            (peer_name.as_str(), self.me.as_str())
        };
        info!("farm link {a} <-> {b} up");
        let _ = self.events.send(LinkEvent::Up(peer_name.clone())).await;
        if self.is_master() {
            self.reconcile(&peer_name, &table).await;
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
        let writer = async move {
            let mut buf = Vec::with_capacity(16 * 1024);
            loop {
                let first = tokio::time::timeout(heartbeat, rx.recv()).await;
                buf.clear();
                match first {
                    Err(_) => buf.extend_from_slice(&0u32.to_be_bytes()),
                    Ok(None) => return,
                    Ok(Some(frame)) => {
                        push_frame(&mut buf, &frame);
                        // Batch whatever else is queued into one write.
                        while buf.len() < 64 * 1024 {
                            match rx.try_recv() {
                                Ok(f) => push_frame(&mut buf, &f),
                                Err(_) => break,
                            }
                        }
                    }
                }
                if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
        };
        let events = self.events.clone();
        let dead_after = self.dead_after;
        let name = peer_name.clone();
        let reader = async move {
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
                match parse_frame(&mut parser, &frame) {
                    Ok(el) if topology::is_control(&el) => self.on_control(&name, &el).await,
                    Ok(stanza) => {
                        if events
                            .send(LinkEvent::Stanza {
                                from_node: name.clone(),
                                stanza,
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        warn!(peer = %name, "farm link to {name}: bad frame ({e}), dropping the link");
                        return;
                    }
                }
            }
        };
        tokio::select! {
            _ = writer => {}
            _ = reader => {}
            _ = shutdown.cancelled() => {}
            _ = peer.gone.cancelled() => {}
        }
        let current = *peer.generation.lock().unwrap_or_else(|p| p.into_inner()) == generation;
        if current {
            *peer.tx.lock().unwrap_or_else(|p| p.into_inner()) = None;
            peer.up.store(false, Ordering::Release);
            if !shutdown.is_cancelled() && !peer.leaving.load(Ordering::Acquire) {
                warn!(peer = %peer_name, "farm link to {peer_name} down");
            }
            self.forget_if_left(&peer_name, &peer);
            let _ = self.events.try_send(LinkEvent::Down(peer_name));
        }
    }
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
    rd.read_exact(&mut len).await.map_err(|e| e.to_string())?;
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
