//! A slave: serves the sessions of the users the routing rule gives it (DESIGN.md D1, D2).
//!
//! Data path: socket → [`jabberfarm_net::listen`] → [`jabberfarm_net::c2s::negotiate`]
//! (the same rule as the master: a login that belongs elsewhere is redirected; otherwise
//! SASL/iq:auth against the account store, through [`LoginPolicy`] and
//! [`jabberfarm_net::c2s::Accounts`]) → [`session`] (bind, the stanza loop) → [`router`]
//! (where each stanza goes: [`sessions`] here, a farm link to another node, federation, or
//! [`server`] and [`im`] for what the server itself answers). A client the master relays
//! (DESIGN.md D1b) arrives on the farm port instead ([`FarmLinks::accept_relays`]) and joins
//! at [`jabberfarm_net::c2s::negotiate_relayed`].

pub mod handover;
pub mod held;
pub mod im;
pub mod mover;
pub mod router;
pub mod server;
pub mod session;
pub mod sessions;
pub mod stopping;
use std::sync::Arc;
use std::time::Duration;

use jabberfarm_config::{FarmConfig, NodeConfig, RedirectMode};
use jabberfarm_net::c2s::{self, Authenticated, C2sSettings, LoginPolicy, LoginRoute, Negotiated};
use jabberfarm_net::farm::{FarmLinks, LINK_NS, LinkTls, RelayedClient};
use jabberfarm_net::node::NodeRuntime;
use jabberfarm_net::s2s::Outbound;
use jabberfarm_net::stream::XmlStream;
use jabberfarm_proto::ns;
use jabberfarm_proto::xml::Element;
use jabberfarm_proto::xml::{Condition, StreamError};
use jabberfarm_store::accounts::AccountStore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::sessions::Sessions;

/// Everything a slave's connections share.
pub struct Slave {
    pub config: Arc<FarmConfig>,
    pub sessions: Sessions,
    pub links: Arc<FarmLinks>,
    /// Streams to other domains, opened by this slave in the public domain's name (D4).
    pub outbound: Arc<Outbound>,
    pub store: AccountStore,
    /// Roster, offline messages, vCards (same database as the accounts).
    pub im: jabberfarm_store::im::ImStore,
    pub shutdown: CancellationToken,
    /// How long a freshly authenticated client may take to bind.
    pub login_timeout: Duration,
    /// Masters with a listener in `redirect = "auto"`: they hear of every direct login here
    /// (so they know their redirect was followed).
    pub auto_masters: Vec<String>,
    /// The node's tasks (sessions among them), waited for on stop.
    pub tasks: TaskTracker,
    /// Sends connected users to their new slave after a routing change.
    pub mover: mover::Mover,
    /// Users' data on its way to or from other slaves (data on the slaves only).
    pub handover: handover::Handover,
    /// Sessions a client may resume (XEP-0198).
    pub resumable: session::Resumable,
    /// Nodes this slave holds messages for (they were down).
    pub holding: held::Holding,
}

impl Slave {
    /// Serve an authenticated client on a task of its own: the task that accepted and
    /// authenticated it ends, so an idle session keeps only the session's state (not the
    /// accept loop's, the TLS handshake's or the login's). Its connection slot goes with it.
    fn start_session(self: &Arc<Self>, auth: Authenticated) {
        let slave = self.clone();
        self.tasks.spawn(session::run(slave, auth));
    }

    /// Whether this slave is drained and done: no session left, nobody still to move.
    fn drained(&self) -> bool {
        let topology = self.sessions.topology.load();
        topology
            .node(&self.sessions.node)
            .is_some_and(|n| n.drain.is_some())
            && self.sessions.session_count() == 0
            && self.mover.pending() == 0
    }

    /// Tell the masters that need to know that `user` logged in here (best effort: a notice
    /// lost only means one more relayed login).
    fn login_notice(&self, user: &str, relayed_by: Option<&str>) {
        let mut notice = Element::new("login", LINK_NS).with_attr("user", user);
        match relayed_by {
            Some(master) => {
                notice = notice.with_attr("relayed", "true");
                let _ = self.links.try_send(master, &notice);
            }
            None => {
                for m in &self.auto_masters {
                    let _ = self.links.try_send(m, &notice);
                }
            }
        }
    }
}

/// The account store, which fetches a user's data from the slave that still has it when the
/// user logs in here first after a routing change (data on the slaves: [`handover::pull`]).
impl c2s::Accounts for Slave {
    fn plain_only(&self) -> bool {
        c2s::Accounts::plain_only(&self.store)
    }

    fn credentials<'a>(
        &'a self,
        user: &'a str,
        hash: jabberfarm_proto::scram::ScramHash,
    ) -> c2s::AccountsFuture<'a, Option<jabberfarm_proto::scram::ScramCredentials>> {
        Box::pin(async move {
            let found = c2s::Accounts::credentials(&self.store, user, hash).await?;
            if found.is_none() && handover::pull(self, user).await {
                return c2s::Accounts::credentials(&self.store, user, hash).await;
            }
            Ok(found)
        })
    }

    fn verify_password<'a>(
        &'a self,
        user: &'a str,
        password: &'a str,
    ) -> c2s::AccountsFuture<'a, bool> {
        c2s::Accounts::verify_password(&self.store, user, password)
    }
}

impl LoginPolicy for Slave {
    fn route(&self, localpart: &str, direct_tls: bool) -> LoginRoute {
        let topology = self.sessions.topology.load();
        // Its owner, or this slave when the owner is failed and this one is next (failover).
        let owner = self.links.serving_login(&topology, localpart);
        if owner == self.sessions.node {
            if topology.node(owner).is_some_and(|n| !n.in_service()) {
                // Out of service, and no other slave can take its users (data on the slaves).
                return LoginRoute::Unavailable(format!(
                    "this server ({owner}) is out of service; try again later"
                ));
            }
            return LoginRoute::Here;
        }
        match topology.node(owner) {
            Some(node) => LoginRoute::Redirect(c2s::redirect_address(node, direct_tls)),
            None => LoginRoute::Here,
        }
    }

    fn accounts(&self) -> Option<&dyn c2s::Accounts> {
        Some(self)
    }

    fn session_features(&self) -> Element {
        session::features()
    }
}

/// The topology a plan's question carries (its first child).
fn requested_table(request: &Element) -> Result<jabberfarm_config::Topology, String> {
    request
        .children()
        .next()
        .ok_or_else(|| "no topology".to_owned())
        .and_then(jabberfarm_config::Topology::from_element)
}

/// `jabberfarm plan`'s question: how many users online here the topology in `request` would
/// move, by node: `<online-moves><move to users/>…</online-moves>`, or `<online-moves
/// error/>` for a topology that does not read.
fn online_moves(slave: &Slave, request: &Element) -> Element {
    let answer = Element::new("online-moves", LINK_NS);
    match requested_table(request) {
        Ok(t) => slave
            .sessions
            .moved_by(&t)
            .into_iter()
            .fold(answer, |a, (to, n)| {
                a.with_child(
                    Element::new("move", LINK_NS)
                        .with_attr("to", to)
                        .with_attr("users", n.to_string()),
                )
            }),
        Err(e) => answer.with_attr("error", e),
    }
}

/// `jabberfarm plan`'s question when the data is on the slaves and the plan is asked of the
/// running farm: what the topology in `request` would move out of this slave's file, by new
/// owner — `<plan-count stay misplaced><move to users online roster pending offline vcards
/// bytes/>…</plan-count>` — counted from the file and the sessions, or `<plan-count error/>`.
async fn plan_count(slave: &Slave, request: &Element) -> Element {
    let answer = Element::new("plan-count", LINK_NS);
    let counted = async {
        let next = requested_table(request)?;
        let db = slave
            .store
            .sqlite()
            .ok_or("the data is central: the plan counts it from the database")?;
        let users = db.list_users().await.map_err(|e| e.to_string())?;
        let holdings = slave.im.holdings().await.map_err(|e| e.to_string())?;
        let current = slave.sessions.topology.load_full();
        let me = slave.sessions.node.as_str();
        let online = slave.sessions.moved_by(&next);
        let (mut stay, mut misplaced) = (0u64, 0u64);
        let mut moves: std::collections::BTreeMap<String, [u64; 6]> = Default::default();
        for user in users {
            misplaced += u64::from(current.owner(&user) != me);
            let to = next.owner(&user);
            if to == me {
                stay += 1;
                continue;
            }
            let m = moves.entry(to.to_owned()).or_default();
            m[0] += 1;
            if let Some(h) = holdings.as_ref().and_then(|all| all.get(&user)) {
                m[1] += h.roster_items;
                m[2] += h.pending_in;
                m[3] += h.offline_messages;
                m[4] += u64::from(h.vcard);
                m[5] += h.bytes;
            }
        }
        Ok::<_, String>(
            moves.into_iter().fold(
                answer
                    .clone()
                    .with_attr("stay", stay.to_string())
                    .with_attr("misplaced", misplaced.to_string()),
                |a, (to, m)| {
                    let online = online.get(&to).copied().unwrap_or(0);
                    a.with_child(
                        Element::new("move", LINK_NS)
                            .with_attr("to", to)
                            .with_attr("users", m[0].to_string())
                            .with_attr("online", online.to_string())
                            .with_attr("roster", m[1].to_string())
                            .with_attr("pending", m[2].to_string())
                            .with_attr("offline", m[3].to_string())
                            .with_attr("vcards", m[4].to_string())
                            .with_attr("bytes", m[5].to_string()),
                    )
                },
            ),
        )
    };
    counted
        .await
        .unwrap_or_else(|e| answer.with_attr("error", e))
}

/// Run the slave node `node` until `shutdown` is cancelled.
/// Serves until `shutdown` is cancelled, or until `term` is (SIGTERM): then the slave drains
/// first when it can ([`stopping`]) and stops.
pub async fn run(
    cfg: Arc<FarmConfig>,
    node: NodeConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    link_tls: Option<LinkTls>,
    shutdown: CancellationToken,
    term: CancellationToken,
) -> anyhow_like::Result<()> {
    let store = AccountStore::open(&cfg.storage, &cfg.data_dir, &node.name)
        .await
        .map_err(|e| anyhow_like::Error(format!("node {}: {e}", node.name)))?;
    // One TLS 1.3 session ticket per handshake (rustls sends 2 by default): a client resumes
    // with the newest one, a second is only work.
    let tls = tls.map(|t| {
        let mut c = (*t).clone();
        c.send_tls13_tickets = 1;
        Arc::new(c)
    });
    let (mut rt, events) = NodeRuntime::bind(&cfg, &node, tls, link_tls, shutdown).await?;
    let im = jabberfarm_store::im::ImStore::for_accounts(&store);
    // What this slave held for nodes that were down when it stopped is still to be written.
    let held_for = {
        use jabberfarm_store::im::HeldStore;
        im.held_for(&node.name).await.unwrap_or_else(|e| {
            warn!(node = %node.name, "cannot read what is held for other nodes: {e}");
            Vec::new()
        })
    };
    if !held_for.is_empty() {
        info!(node = %node.name, "holding messages for {}", held_for.join(", "));
    }
    let (holding, mut drains) = held::Holding::new(held_for);
    let slave = Arc::new(Slave {
        config: cfg.clone(),
        sessions: Sessions::new(
            cfg.domain.clone(),
            node.name.clone(),
            rt.topology.clone(),
            cfg.limits.max_resources,
        ),
        links: rt.links.clone(),
        outbound: rt.outbound.clone(),
        im,
        store,
        shutdown: rt.shutdown.clone(),
        login_timeout: cfg.limits.login_timeout,
        auto_masters: cfg
            .nodes
            .iter()
            .filter(|n| n.uses_redirect_mode(&cfg.relay, RedirectMode::Auto))
            .map(|n| n.name.clone())
            .collect(),
        tasks: rt.tracker.clone(),
        mover: mover::Mover::default(),
        handover: handover::Handover::default(),
        resumable: session::Resumable::default(),
        holding,
    });
    slave.sessions.use_links(rt.links.clone());
    register_metrics(&rt.metrics, &slave);
    let (s7, sd7) = (slave.clone(), rt.shutdown.clone());
    rt.tracker.spawn(async move {
        loop {
            tokio::select! {
                node = drains.recv() => match node {
                    Some(node) => s7.drain(&node),
                    None => break,
                },
                _ = sd7.cancelled() => break,
            }
        }
    });
    // Direct and relayed clients share one connection limit.
    let slots = Arc::new(tokio::sync::Semaphore::new(cfg.limits.max_connections));
    let (s5, set5) = (slave.clone(), rt.settings.clone());
    let relay_slots = slots.clone();
    rt.links
        .accept_relays(Arc::new(move |client: RelayedClient| {
            let (slave, settings, slots) = (s5.clone(), set5.clone(), relay_slots.clone());
            Box::pin(async move { serve_relayed(slave, settings, slots, client).await })
        }));
    let s6 = slave.clone();
    rt.links.answer_admin(Arc::new(move |request, status| {
        let slave = s6.clone();
        Box::pin(async move {
            if request.is("online-moves", LINK_NS) {
                return Some(online_moves(&slave, &request));
            }
            if request.is("plan-count", LINK_NS) {
                return Some(plan_count(&slave, &request).await);
            }
            request.is("status", LINK_NS).then(|| {
                let status = if slave.drained() {
                    status.with_attr("state", "drained")
                } else {
                    status
                };
                status
                    .with_attr("users", slave.sessions.user_count().to_string())
                    .with_attr("sessions", slave.sessions.session_count().to_string())
                    .with_attr("moving", slave.mover.pending().to_string())
            })
        })
    }));
    rt.start_links();
    rt.tracker.spawn(mover::run(slave.clone()));
    let s8 = slave.clone();
    rt.tracker.spawn(async move {
        tokio::select! {
            _ = term.cancelled() => {}
            _ = s8.shutdown.cancelled() => return,
        }
        tokio::select! {
            _ = stopping::drain_before_stop(&s8) => {}
            _ = s8.shutdown.cancelled() => {}
        }
        s8.shutdown.cancel();
    });
    rt.tracker.spawn(handover::run(slave.clone()));
    let s3 = slave.clone();
    rt.tracker
        .spawn(async move { s3.link_events(events.links).await });
    // Stanzas that could not leave the farm come back to their senders as errors.
    let (s4, mut bounces) = (slave.clone(), events.bounces);
    rt.tracker.spawn(async move {
        loop {
            let b = tokio::select! {
                b = bounces.recv() => b,
                _ = s4.shutdown.cancelled() => None,
            };
            let Some(b) = b else { break };
            s4.route(b, router::Origin::Local).await;
        }
    });
    info!(node = %node.name, "slave up (accounts: {})", store_description(&cfg, &node.name));
    let (s2, settings) = (slave.clone(), rt.settings.clone());
    rt.serve_c2s(slots, move |stream, _peer| {
        let (settings, slave) = (settings.clone(), s2.clone());
        async move {
            // Boxed: a task is as large as its largest state, and the login's (SASL,
            // store lookups) would otherwise stay allocated for the whole session.
            let auth = Box::pin(c2s::negotiate(stream, &settings, slave.as_ref())).await;
            match auth {
                Some(Negotiated::Authenticated(auth)) => {
                    slave.login_notice(&auth.username, None);
                    slave.start_session(auth);
                }
                Some(Negotiated::Relay(mut r)) => {
                    // A slave's policy never relays.
                    r.stream
                        .fail(
                            &StreamError::bare(Condition::InternalServerError),
                            &settings.domain,
                        )
                        .await;
                }
                None => {}
            }
        }
    })
    .await;
    // Sessions see the token themselves; this also reaches any that are busy writing.
    slave.sessions.close_all(&StreamError::new(
        Condition::SystemShutdown,
        "the server is stopping",
    ));
    if !rt.drain().await {
        warn!(node = %node.name, "some sessions did not close in time");
    }
    slave.store.close().await;
    info!(node = %node.name, "slave stopped");
    Ok(())
}

/// A client the master relays: pick its stream up at the handoff, then serve it as any other.
async fn serve_relayed(
    slave: Arc<Slave>,
    settings: Arc<C2sSettings>,
    slots: Arc<tokio::sync::Semaphore>,
    client: RelayedClient,
) {
    let RelayedClient {
        io,
        from_node,
        handoff,
    } = client;
    let mut stream = XmlStream::resumed(io, ns::CLIENT, settings.pre_auth);
    stream.secure = handoff.secure;
    stream.peer = Some(handoff.client);
    stream.relayed = true;
    stream.write_timeout = slave.config.limits.write_timeout;
    let Ok(permit) = slots.try_acquire_owned() else {
        warn!(peer = %handoff.client, "connection limit reached (relayed client)");
        let e = StreamError::new(
            Condition::ResourceConstraint,
            "this server is full; try again later",
        );
        stream.fail(&e, &settings.domain).await;
        return;
    };
    stream.slot = Some(permit);
    tracing::debug!(user = handoff.user, peer = %handoff.client, master = from_node, "relayed client");
    let auth: Option<Authenticated> = Box::pin(c2s::negotiate_relayed(
        stream,
        &settings,
        slave.as_ref(),
        handoff.first,
        handoff.direct_tls,
    ))
    .await;
    if let Some(auth) = auth {
        slave.login_notice(&auth.username, Some(&from_node));
        slave.start_session(auth);
    }
}

/// Where this node's accounts are, for the start-up log line (never a password).
fn store_description(cfg: &FarmConfig, node: &str) -> String {
    use jabberfarm_config::{StorageBackend, redact_url_password};
    match &cfg.storage.backend {
        StorageBackend::Mysql(m) => format!("mysql {}", redact_url_password(&m.url)),
        StorageBackend::Ldap(l) => format!("ldap {}", l.url),
        StorageBackend::Sqlite { .. } => match cfg.storage.sqlite_path(&cfg.data_dir, node) {
            Some(path) => format!("sqlite {}", path.display()),
            None => "sqlite".to_owned(),
        },
    }
}

/// A minimal error type for `run` (the binary prints it).
pub mod anyhow_like {
    #[derive(Debug)]
    pub struct Error(pub String);
    impl std::fmt::Display for Error {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(&self.0)
        }
    }
    impl std::error::Error for Error {}
    impl From<std::io::Error> for Error {
        fn from(e: std::io::Error) -> Self {
            Error(e.to_string())
        }
    }
    pub type Result<T> = std::result::Result<T, Error>;
}

/// A slave's own figures in its metrics (MongooseIM's names where it has one).
fn register_metrics(m: &jabberfarm_net::metrics::Metrics, slave: &Arc<Slave>) {
    use prometheus_client::metrics::gauge::Gauge;
    let sessions = Gauge::<i64>::default();
    m.register(
        "sm_node_sessions",
        "Client sessions bound on this slave",
        sessions.clone(),
    );
    let users = Gauge::<i64>::default();
    m.register(
        "sm_unique_sessions",
        "Users with at least one session on this slave",
        users.clone(),
    );
    m.register(
        "jabberfarm_sessions_moved",
        "Sessions sent to another slave: reason=drain (this slave drained or out of service), \
         rebalance (the routing table changed), home (their slave is back after a failover)",
        slave.mover.moved.clone(),
    );
    // A drained or out-of-service slave says so to whatever watches it.
    let me = Arc::downgrade(slave);
    m.health_check(move || {
        let slave = me.upgrade()?;
        let topology = slave.sessions.topology.load();
        let node = topology.node(&slave.sessions.node)?;
        if slave.drained() {
            Some("drained".to_owned())
        } else if node.drain.is_some() {
            let n = slave.sessions.session_count();
            Some(format!("draining: {n} session(s) left"))
        } else if !node.inservice {
            Some("out of service".to_owned())
        } else {
            None
        }
    });
    let resumable = Gauge::<i64>::default();
    m.register(
        "sm_resumable_sessions",
        "Sessions that enabled resumption (XEP-0198), connected or waiting for their client",
        resumable.clone(),
    );
    let me = Arc::downgrade(slave);
    m.on_scrape(move || {
        let Some(slave) = me.upgrade() else { return };
        sessions.set(slave.sessions.session_count() as i64);
        users.set(slave.sessions.user_count() as i64);
        resumable.set(slave.resumable.count() as i64);
    });
}
