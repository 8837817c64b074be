//! The master: every login starts here and is redirected to the slave that owns the username
//! (DESIGN.md D1), or relayed to it for clients that do not follow redirects (D1b). The master
//! never checks a password and serves no sessions.
//!
//! Data path: socket → [`jabberfarm_net::listen`] → [`jabberfarm_net::c2s::negotiate`]
//! with [`Redirector`] as the policy → `<see-other-host/>` (or the iq:auth 302), or
//! [`relay::Relayer`]: handoff to the slave, then bytes both ways.
//! Inbound s2s ([`s2s`]): dialback, the dialback authority for keys the slaves hand out, and
//! the relay of remote stanzas to the owning slave over its farm link.

pub mod relay;
pub mod reload;
pub mod s2s;

use std::sync::Arc;
use std::time::Duration;

use jabberfarm_config::{FarmConfig, NodeConfig, RedirectMode, RelayConfig, SharedTopology};
use jabberfarm_net::c2s::{self, C2sSettings, LoginPolicy, LoginRoute, Negotiated};
use jabberfarm_net::farm::{FarmLinks, LINK_NS, LinkEvent, LinkTls};
use jabberfarm_net::listen::{self, BoundListener};
use jabberfarm_net::node::NodeRuntime;
use jabberfarm_net::relay::RelayReason;
use jabberfarm_net::s2s::{Outbound, S2sSettings};
use jabberfarm_proto::ns;
use jabberfarm_proto::xml::Element;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What the master's connections share.
pub struct Master {
    pub config: Arc<FarmConfig>,
    /// Who owns which user (the s2s relay asks it).
    pub topology: SharedTopology,
    pub links: Arc<FarmLinks>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub s2s_settings: Arc<S2sSettings>,
    /// The master's own outbound s2s (answers for the bare domain, errors).
    pub outbound: Arc<Outbound>,
    pub shutdown: CancellationToken,
}

/// The login policy of the master: "go to the owner", or "stay, and I relay you there".
pub struct Redirector {
    /// Who owns which user, and where each node takes logins.
    pub topology: SharedTopology,
    /// `[relay]`: the default redirect mode.
    pub relay: RelayConfig,
    /// This master's node name (its listeners' redirect modes).
    pub me: String,
    /// Which slaves are alive (their farm link is up).
    pub links: Arc<FarmLinks>,
    /// `redirect = "auto"`: who did not follow a redirect.
    pub memory: relay::RelayMemory,
    /// Logins sent to another slave than the user's owner, which was failed.
    pub failovers: prometheus_client::metrics::counter::Counter,
}

impl LoginPolicy for Redirector {
    fn route(&self, localpart: &str, direct_tls: bool) -> LoginRoute {
        let topology = self.topology.load();
        let owner = topology.owner(localpart);
        // With central data, the users of a failed slave go to the next in their ranking.
        let serving = self.links.serving(&topology, localpart);
        let Some(node) = topology.node(serving) else {
            // Unreachable with a validated config; never redirect to ourselves.
            return LoginRoute::Unavailable(format!("no node {serving} in the farm"));
        };
        if !node.in_service() {
            return LoginRoute::Unavailable(format!(
                "the server for this account ({serving}) is out of service; try again later"
            ));
        }
        if !self.links.is_up(serving) {
            let why = if self.links.fails_over() {
                "not reachable right now (another slave takes its users once it is marked failed)"
            } else {
                "not reachable right now (its users' data is on it: no other slave can serve them)"
            };
            return LoginRoute::Unavailable(format!(
                "the server for this account ({serving}) is {why}; try again later"
            ));
        }
        if serving != owner {
            self.failovers.inc();
            info!(
                user = localpart,
                owner,
                to = serving,
                "failover: the owner is failed"
            );
        }
        let owner = serving;
        let mode = topology.node(&self.me).map_or(self.relay.redirect, |me| {
            me.redirect_mode(&self.relay, direct_tls)
        });
        let relay = |reason| LoginRoute::Relay {
            node: owner.to_owned(),
            reason,
        };
        match mode {
            RedirectMode::Always => {}
            RedirectMode::Never => return relay(RelayReason::Never),
            RedirectMode::Auto => {
                let now = std::time::Instant::now();
                if let Some(reason) = self.memory.relay_reason(localpart, now) {
                    return relay(reason);
                }
                self.memory.redirected(localpart, now);
            }
        }
        LoginRoute::Redirect(c2s::redirect_address(node, direct_tls))
    }

    fn accounts(&self) -> Option<&dyn c2s::Accounts> {
        None
    }
}

/// How often the `auto` memory is written to the data dir (and once more on stop).
const MEMORY_SAVE_EVERY: Duration = Duration::from_secs(300);

fn save_memory(memory: &relay::RelayMemory, path: &std::path::Path) {
    if let Some(dir) = path.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    if let Err(e) = memory.save(path) {
        warn!("cannot write {}: {e}", path.display());
    }
}

/// What follows a negotiation at the master, as its own (boxed) future.
fn after_login(
    outcome: Option<Negotiated>,
    relayer: Arc<relay::Relayer>,
    settings: Arc<C2sSettings>,
) -> Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> {
    match outcome? {
        Negotiated::Relay(login) => {
            relayer.start(login);
            None
        }
        // Only possible if the routing table named the master as an owner.
        Negotiated::Authenticated(mut a) => Some(Box::pin(async move {
            let e = jabberfarm_proto::xml::StreamError::new(
                jabberfarm_proto::xml::Condition::InternalServerError,
                "the master serves no sessions",
            );
            a.stream.fail(&e, &settings.domain).await;
        })),
    }
}

/// Run the master node until `shutdown` is cancelled.
pub async fn run(
    cfg: Arc<FarmConfig>,
    node: NodeConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    link_tls: Option<LinkTls>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    // The master closes every client stream right after the handshake (a redirect), so TLS
    // 1.3 session tickets (rustls sends 2 by default) would be wasted work: resumption is for
    // the slaves. s2s keeps the default.
    let c2s_tls = tls.as_ref().map(|t| {
        let mut c = (**t).clone();
        c.send_tls13_tickets = 0;
        Arc::new(c)
    });
    let (mut rt, events) = NodeRuntime::bind(&cfg, &node, c2s_tls, link_tls, shutdown).await?;
    let s2s_listener = match node.s2s {
        Some(addr) => Some(listen::bind(addr, "s2s").await?),
        None => None,
    };
    let policy = Arc::new(Redirector {
        topology: rt.topology.clone(),
        relay: cfg.relay.clone(),
        me: node.name.clone(),
        links: rt.links.clone(),
        memory: relay::RelayMemory::new(
            cfg.relay.window,
            cfg.relay.remember,
            cfg.relay.max_remembered,
        ),
        failovers: Default::default(),
    });
    rt.metrics.register(
        "jabberfarm_failovers",
        "Logins sent to another slave than the user's owner because the owner was failed",
        policy.failovers.clone(),
    );
    // Who needed the relay, kept across restarts (redirect = "auto").
    let memory_file = cfg.data_dir.join(format!("{}.relayed", node.name));
    match policy.memory.load(&memory_file) {
        Ok(0) => {}
        Ok(n) => info!(
            "{n} users relayed before the restart are relayed again ({})",
            memory_file.display()
        ),
        Err(e) => warn!(
            "cannot read {}: {e}; relaying starts afresh",
            memory_file.display()
        ),
    }
    let relayer = Arc::new(relay::Relayer {
        links: rt.links.clone(),
        domain: cfg.domain.clone(),
        slots: Arc::new(Semaphore::new(cfg.relay.max_sessions)),
        max_sessions: cfg.relay.max_sessions,
        stats: relay::RelayStats::default(),
        stop: rt.shutdown.clone(),
        grace: cfg.limits.shutdown_grace.max(Duration::from_secs(1)),
        tracker: rt.tracker.clone(),
        write_timeout: cfg.limits.write_timeout,
    });
    relay::register_metrics(&rt.metrics, &relayer);
    // A master with no slave to send logins to serves nobody: a load balancer in front of
    // several masters takes it out.
    let links = Arc::downgrade(&rt.links);
    rt.metrics.health_check(move || {
        let links = links.upgrade()?;
        (!links.peer_states().iter().any(|p| p.up)).then(|| "no slave is reachable".to_owned())
    });
    let reloader = Arc::new(reload::Reloader::new(
        cfg.clone(),
        rt.links.clone(),
        cfg.data_dir.join(format!("{}.drained", node.name)),
    ));
    // Several masters answer logins and remote servers alike; the primary (the first in the
    // config) is the one that hands out changes: reloads and drains go to it.
    let primary = cfg.master().name.clone();
    let is_primary = primary == node.name;
    if is_primary {
        reloader.start().await;
        reloader.on_sighup(&rt.tracker, rt.shutdown.clone());
    } else {
        info!(
            node = %node.name,
            "a secondary master: {primary}, the primary, hands out changes (reload, drain); \
             this one takes logins and remote servers as it does"
        );
    }
    let (re, r6, p6) = (reloader.clone(), relayer.clone(), primary.clone());
    rt.links.answer_admin(Arc::new(move |request, status| {
        let (reloader, relayer, primary) = (re.clone(), r6.clone(), p6.clone());
        Box::pin(async move {
            let changes = ["reload", "drain", "undrain"];
            if !is_primary && changes.iter().any(|c| request.is(c, LINK_NS)) {
                Some(Element::new("error", LINK_NS).with_attr(
                    "reason",
                    format!("a secondary master: send it to the primary master, {primary}"),
                ))
            } else if request.is("reload", LINK_NS) {
                Some(reloader.answer().await)
            } else if request.is("drain", LINK_NS) {
                let node = request.attr("node").unwrap_or_default();
                let over = request
                    .attr("over")
                    .and_then(|o| o.parse().ok())
                    .map(Duration::from_secs);
                Some(reloader.drain(node, over, false).await)
            } else if request.is("undrain", LINK_NS) {
                Some(
                    reloader
                        .undrain(request.attr("node").unwrap_or_default())
                        .await,
                )
            } else if request.is("status", LINK_NS) {
                Some(status.with_attr("relayed", relayer.open().to_string()))
            } else {
                None
            }
        })
    }));
    rt.start_links();
    // Servers offer the ALPN protocol "xmpp-server" (XEP-0368); rustls refuses a client whose
    // protocols it does not list, so the s2s listener gets its own list.
    let s2s_tls = tls.as_ref().map(|t| {
        let mut c = (**t).clone();
        c.alpn_protocols = vec![b"xmpp-server".to_vec()];
        Arc::new(c)
    });
    let master = Arc::new(Master {
        config: cfg.clone(),
        topology: rt.topology.clone(),
        links: rt.links.clone(),
        tls: s2s_tls,
        outbound: rt.outbound.clone(),
        s2s_settings: rt.s2s_settings.clone(),
        shutdown: rt.shutdown.clone(),
    });
    // The master's own replies that could not be delivered are not answered again.
    let (sd, mut bounces) = (rt.shutdown.clone(), events.bounces);
    rt.tracker.spawn(async move {
        loop {
            tokio::select! {
                b = bounces.recv() => if b.is_none() { break },
                _ = sd.cancelled() => break,
            }
        }
    });
    if let Some(l) = s2s_listener {
        let s2s_opts = rt.serve_options(
            ns::SERVER,
            master.s2s_settings.limits,
            Arc::new(Semaphore::new(cfg.limits.max_connections)),
        );
        let m = master.clone();
        listen::serve(
            vec![BoundListener {
                listener: l,
                direct_tls: None,
            }],
            s2s_opts,
            rt.shutdown.clone(),
            rt.tracker.clone(),
            move |stream, _peer| s2s::serve(m.clone(), stream),
        )
        .await;
    }
    let (sd, p2, mut link_events) = (rt.shutdown.clone(), policy.clone(), events.links);
    let (m2, re2, tr2) = (master.clone(), reloader.clone(), rt.tracker.clone());
    rt.tracker.spawn(async move {
        loop {
            let ev = tokio::select! {
                ev = link_events.recv() => ev,
                _ = sd.cancelled() => None,
            };
            let Some(ev) = ev else { break };
            match ev {
                LinkEvent::Up(n) => info!("slave {n} is up"),
                // The master makes the changes; it hears of none.
                LinkEvent::Topology(_) => {}
                LinkEvent::Down(n) => warn!("slave {n} is down: its users cannot log in until it is back or, with central data, marked failed (then the next slave takes them)"),
                // A slave that drained itself on SIGTERM is gone: its drain ends with it.
                LinkEvent::Lost(n) if is_primary => {
                    let re = re2.clone();
                    tr2.spawn(async move { re.lost(&n).await });
                }
                LinkEvent::Lost(_) => {}
                // A slave stopping on SIGTERM asks to be drained first.
                LinkEvent::Stanza {
                    from_node, stanza, ..
                } if is_primary && stanza.is("stopping", LINK_NS) => {
                    let over = stanza
                        .attr("over")
                        .and_then(|o| o.parse().ok())
                        .map(Duration::from_secs);
                    info!("{from_node} is stopping: draining it first");
                    let re = re2.clone();
                    tr2.spawn(async move {
                        re.drain(&from_node, over, true).await;
                    });
                }
                // A stanza from another server that its slave never got: the sender hears.
                LinkEvent::Undelivered { stanza, .. } => {
                    if let Some(error) =
                        jabberfarm_proto::stanza::StanzaError::server_unreachable().answer(&stanza)
                    {
                        m2.outbound.send(error);
                    }
                }
                // A slave saw a login: the redirect worked, or the relay did.
                LinkEvent::Stanza { stanza, .. } if stanza.is("login", LINK_NS) => {
                    if let Some(user) = stanza.attr("user") {
                        let relayed = stanza.attr("relayed") == Some("true");
                        tracing::debug!(user, relayed, "a slave saw a login");
                        if relayed {
                            p2.memory.relayed_login(user, std::time::Instant::now());
                        } else {
                            p2.memory.logged_in_at_slave(user);
                        }
                    }
                }
                LinkEvent::Stanza {
                    from_node, stanza, ..
                } => {
                    tracing::debug!(from_node, "stanza for the master dropped: {}", stanza.name)
                }
            }
        }
    });
    // And written every few minutes, so that a crash loses little of it; the relay's
    // counters go to the log at the same pace when they moved.
    let (p4, f4, sd4, r4) = (
        policy.clone(),
        memory_file.clone(),
        rt.shutdown.clone(),
        relayer.clone(),
    );
    rt.tracker.spawn(async move {
        let (mut saved, mut said) = ((0, 0), String::new());
        loop {
            tokio::select! {
                _ = sd4.cancelled() => break,
                _ = tokio::time::sleep(MEMORY_SAVE_EVERY) => {}
            }
            let now = p4.memory.sizes();
            if now != saved {
                save_memory(&p4.memory, &f4);
                saved = now;
            }
            let summary = r4.stats.summary(r4.open());
            if summary != said {
                info!("relay: {summary}; users remembered {}", now.1);
                said = summary;
            }
        }
    });
    let mode = |tls| node.redirect_mode(&cfg.relay, tls).name();
    info!(
        node = %node.name,
        "master up: logins for {} (redirect = {:?}{})",
        cfg.domain,
        mode(false),
        if node.c2s_tls.is_some() { format!(", direct TLS {:?}", mode(true)) } else { String::new() }
    );
    let (r2, p3, settings) = (relayer.clone(), policy.clone(), rt.settings.clone());
    let slots = Arc::new(Semaphore::new(cfg.limits.max_connections));
    rt.serve_c2s(slots, move |stream, _peer| {
        let (settings, policy, relayer) = (settings.clone(), policy.clone(), r2.clone());
        async move {
            // The login is boxed and its outcome consumed inside this block, so a relayed
            // session's task keeps only the relay's state, not the login's.
            let next = {
                let outcome = Box::pin(c2s::negotiate(stream, &settings, policy.as_ref())).await;
                after_login(outcome, relayer, settings.clone())
            };
            if let Some(next) = next {
                next.await;
            }
        }
    })
    .await;
    if !rt.drain().await {
        warn!(node = %node.name, "some connections did not close in time");
    }
    save_memory(&p3.memory, &memory_file);
    let (noted, remembered) = p3.memory.sizes();
    info!(
        node = %node.name,
        "{}; users redirected and not yet seen at their slave {noted}, remembered as relayed {remembered}",
        relayer.stats.summary(relayer.open())
    );
    info!(node = %node.name, "master stopped");
    Ok(())
}

#[cfg(test)]
mod policy_tests;
