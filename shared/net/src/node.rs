//! What every node runs, master or slave: its c2s listeners (plain and direct TLS) and farm
//! port, its topology, its farm links, its outbound s2s, one task tracker and one shutdown
//! token, and the drain when it stops. The roles add their policies and handlers on top:
//! `jabberfarm-master` its redirector, relay and inbound s2s; `jabberfarm-slave` its sessions.
//!
//! Order of a node's life: [`NodeRuntime::bind`] (ports first, so a taken port fails the start
//! before anything runs) → the role wires its handlers, [`NodeRuntime::start_links`] →
//! [`NodeRuntime::serve_c2s`] until the shutdown token → [`NodeRuntime::drain`].

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use jabberfarm_config::{FarmConfig, NodeConfig, SharedTopology};
use jabberfarm_proto::ns;
use jabberfarm_proto::xml::Element;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::c2s::C2sSettings;
use crate::farm::{FarmLinks, LinkEvent, LinkTls};
use crate::listen::{self, BoundListener, ServeOptions};
use crate::metrics::{Gauges, Metrics, label};
use crate::s2s::{Outbound, S2sSettings};
use crate::stream::XmlStream;

/// Stanzas that could not go out to another domain come back here, as error replies.
const BOUNCE_QUEUE: usize = 256;

/// A node's shared parts, bound and built, not yet serving.
pub struct NodeRuntime {
    pub name: String,
    /// The one topology this node reads (routing, peers, internal names).
    pub topology: SharedTopology,
    /// How client streams are negotiated here.
    pub settings: Arc<C2sSettings>,
    pub links: Arc<FarmLinks>,
    pub s2s_settings: Arc<S2sSettings>,
    /// This node's streams to other domains.
    pub outbound: Arc<Outbound>,
    pub tracker: TaskTracker,
    pub shutdown: CancellationToken,
    /// What `/metrics` shows (the roles add theirs) and `/health` says.
    pub metrics: Arc<Metrics>,
    metrics_listener: Option<TcpListener>,
    c2s: Vec<BoundListener>,
    farm: Option<TcpListener>,
    domain: String,
    stream_open_timeout: Duration,
    write_timeout: Duration,
    grace: Duration,
}

/// What arrives at a node from its links and its outbound s2s; the role consumes both.
pub struct NodeEvents {
    /// Peers up and down, stanzas from other nodes.
    pub links: mpsc::Receiver<LinkEvent>,
    /// Error replies for stanzas that could not reach another domain.
    pub bounces: mpsc::Receiver<Element>,
}

impl NodeRuntime {
    /// Bind `node`'s c2s ports (the direct-TLS one when it has one and `c2s_tls` is given) and
    /// its farm port, and build what the node shares. A port that is taken fails here, named.
    pub async fn bind(
        cfg: &FarmConfig,
        node: &NodeConfig,
        c2s_tls: Option<Arc<rustls::ServerConfig>>,
        link_tls: Option<LinkTls>,
        shutdown: CancellationToken,
    ) -> std::io::Result<(NodeRuntime, NodeEvents)> {
        let mut c2s = vec![BoundListener {
            listener: listen::bind(node.c2s, "c2s").await?,
            direct_tls: None,
        }];
        if let (Some(addr), Some(tls)) = (node.c2s_tls, &c2s_tls) {
            c2s.push(BoundListener {
                listener: listen::bind(addr, "direct-TLS c2s").await?,
                direct_tls: Some(tls.clone()),
            });
        }
        let farm = listen::bind(node.farm, "farm links").await?;
        let metrics_listener = match node.metrics {
            Some(addr) => Some(listen::bind(addr, "metrics").await?),
            None => None,
        };
        let topology = SharedTopology::new(cfg.topology());
        let (links, link_events) = FarmLinks::new(cfg, &topology, &node.name, link_tls);
        let s2s_settings = Arc::new(S2sSettings::from_config(cfg, topology.clone()));
        let (bounce_tx, bounces) = mpsc::channel(BOUNCE_QUEUE);
        let settings = Arc::new(C2sSettings::from_config(cfg, c2s_tls, shutdown.clone()));
        let metrics = Metrics::new(&node.name, &node.role.to_string());
        register_common(&metrics, &topology, &links, &settings);
        let runtime = NodeRuntime {
            name: node.name.clone(),
            settings,
            metrics,
            metrics_listener,
            outbound: Outbound::new(s2s_settings.clone(), bounce_tx),
            s2s_settings,
            topology,
            links,
            tracker: TaskTracker::new(),
            shutdown,
            c2s,
            farm: Some(farm),
            domain: cfg.domain.clone(),
            stream_open_timeout: cfg.limits.stream_open_timeout,
            write_timeout: cfg.limits.write_timeout,
            grace: cfg.limits.shutdown_grace.max(Duration::from_millis(100)),
        };
        Ok((
            runtime,
            NodeEvents {
                links: link_events,
                bounces,
            },
        ))
    }

    /// Options for accepting on this node with `content_ns` and `limits`, counting each
    /// connection against `slots`.
    pub fn serve_options(
        &self,
        content_ns: &'static str,
        limits: jabberfarm_proto::xml::ParserLimits,
        slots: Arc<Semaphore>,
    ) -> Arc<ServeOptions> {
        Arc::new(ServeOptions {
            domain: self.domain.clone(),
            content_ns,
            limits,
            slots,
            tls_handshake_timeout: self.stream_open_timeout,
            write_timeout: self.write_timeout,
        })
    }

    /// Accept links on the farm port and connect to the peers that sort after us; serve
    /// the metrics, if this node has an address for them.
    pub fn start_links(&mut self) {
        if let Some(farm) = self.farm.take() {
            self.links.start(farm, self.shutdown.clone(), &self.tracker);
        }
        if let Some(listener) = self.metrics_listener.take() {
            self.metrics
                .serve(listener, self.shutdown.clone(), &self.tracker);
        }
    }

    /// Serve the c2s listeners, each connection on its own tracked task, counting against
    /// `slots`, until the shutdown token is cancelled.
    pub async fn serve_c2s<F, Fut>(&mut self, slots: Arc<Semaphore>, handler: F)
    where
        F: Fn(XmlStream, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let opts = self.serve_options(ns::CLIENT, self.settings.pre_auth, slots);
        let listeners = std::mem::take(&mut self.c2s);
        listen::serve(
            listeners,
            opts,
            self.shutdown.clone(),
            self.tracker.clone(),
            handler,
        )
        .await;
        self.shutdown.cancelled().await;
    }

    /// After the shutdown: wait at most `limits.shutdown_grace` (at least 0.1 s) for every
    /// tracked task. `false` when some did not end in time.
    pub async fn drain(&self) -> bool {
        listen::drain(&self.tracker, self.grace).await
    }
}

/// What every node shows: its topology epoch, its farm links (up, what they keep, times each
/// peer was lost) and what its client logins came to.
fn register_common(
    m: &Metrics,
    topology: &SharedTopology,
    links: &Arc<FarmLinks>,
    c2s: &C2sSettings,
) {
    let epoch = prometheus_client::metrics::gauge::Gauge::<i64>::default();
    m.register(
        "jabberfarm_topology_epoch",
        "The routing table's epoch this node runs (0: as configured; each reload adds one)",
        epoch.clone(),
    );
    let up = Gauges::default();
    m.register(
        "jabberfarm_link_up",
        "1 when the farm link to the peer is up",
        up.clone(),
    );
    let failed = Gauges::default();
    m.register(
        "jabberfarm_node_failed",
        "1 when the peer is failed: down for farm.faildetect heartbeats, not running, or out of \
         service (with central data its users go to the next slave of their ranking)",
        failed.clone(),
    );
    let frames = Gauges::default();
    m.register(
        "jabberfarm_link_queued_frames",
        "Frames the link to the peer keeps: queued, or written and not yet acknowledged",
        frames.clone(),
    );
    let bytes = Gauges::default();
    m.register(
        "jabberfarm_link_queued_bytes",
        "Bytes of the frames the link to the peer keeps",
        bytes.clone(),
    );
    m.register(
        "jabberfarm_link_lost",
        "Times the peer was lost: restarted, not running, or away for farm.hold",
        links.lost.clone(),
    );
    // Every route from the start, at 0: a dashboard sees the series before the first login.
    for route in ["here", "redirect", "relay", "unavailable"] {
        let _ = c2s.counters.logins.get_or_create(&label("route", route));
    }
    m.register(
        "c2s_logins",
        "Client logins by route: here (authenticated at this node), redirect, relay, unavailable",
        c2s.counters.logins.clone(),
    );
    m.register(
        "c2s_auth_failed",
        "Failed authentications (wrong password or unknown user)",
        c2s.counters.auth_failed.clone(),
    );
    let lost = links.lost.clone();
    let (topology, links) = (topology.clone(), Arc::downgrade(links));
    m.on_scrape(move || {
        epoch.set(i64::try_from(topology.load().epoch).unwrap_or(i64::MAX));
        let Some(links) = links.upgrade() else { return };
        // Peers that left the farm go from the figures.
        up.clear();
        failed.clear();
        frames.clear();
        bytes.clear();
        for p in links.peer_states() {
            let peer = label("peer", &p.name);
            up.get_or_create(&peer).set(i64::from(p.up));
            failed.get_or_create(&peer).set(i64::from(p.failed));
            frames.get_or_create(&peer).set(p.queued as i64);
            bytes.get_or_create(&peer).set(p.queued_bytes as i64);
            let _ = lost.get_or_create(&peer);
        }
    });
}
