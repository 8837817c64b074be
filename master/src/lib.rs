//! The master: every login starts here and is redirected to the slave that owns the username
//! (DESIGN.md D1). The master never sees a password and serves no sessions.
//!
//! Data path: socket → [`jabberfarm_shared::listen`] → [`jabberfarm_shared::c2s::negotiate`]
//! with [`Redirector`] as the policy → `<see-other-host/>` (or the iq:auth 302).
//! Inbound s2s relay and the dialback authority arrive with federation.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use jabberfarm_shared::auth::AccountStore;
use jabberfarm_shared::c2s::{self, C2sSettings, LoginPolicy, LoginRoute};
use jabberfarm_shared::config::{FarmConfig, NodeConfig};
use jabberfarm_shared::farm::{FarmLinks, LinkEvent, LinkTls};
use jabberfarm_shared::listen::{self, BoundListener, ServeOptions};
use jabberfarm_shared::ns;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// The login policy of the master: always "go to the owner".
pub struct Redirector {
    /// Swappable at run time (live rebalancing reloads it).
    pub config: ArcSwap<FarmConfig>,
    /// Which slaves are alive (their farm link is up).
    pub links: Arc<FarmLinks>,
}

impl LoginPolicy for Redirector {
    fn route(&self, localpart: &str, direct_tls: bool) -> LoginRoute {
        let cfg = self.config.load();
        let owner = cfg.routing.owner(localpart);
        match cfg.node(owner) {
            // TODO(failover): the next live owner, once user data is central.
            Some(_) if !self.links.is_up(owner) => LoginRoute::Unavailable(format!(
                "the server for this account ({owner}) is not reachable right now; try again later"
            )),
            Some(node) => LoginRoute::Redirect(c2s::redirect_address(node, direct_tls)),
            // Unreachable with a validated config; never redirect to ourselves.
            None => LoginRoute::Here,
        }
    }

    fn store(&self) -> Option<&AccountStore> {
        None
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
    let mut listeners = vec![BoundListener {
        listener: listen::bind(node.c2s, "c2s").await?,
        direct_tls: None,
    }];
    if let (Some(addr), Some(tls)) = (node.c2s_tls, &tls) {
        listeners.push(BoundListener {
            listener: listen::bind(addr, "direct-TLS c2s").await?,
            direct_tls: Some(tls.clone()),
        });
    }
    let farm_listener = listen::bind(node.farm, "farm links").await?;
    let settings = Arc::new(C2sSettings::from_config(&cfg, tls, shutdown.clone()));
    let (links, mut link_rx) = FarmLinks::new(&cfg, &node.name, link_tls);
    let policy = Arc::new(Redirector {
        config: ArcSwap::from(cfg.clone()),
        links: links.clone(),
    });
    let opts = Arc::new(ServeOptions {
        domain: cfg.domain.clone(),
        content_ns: ns::CLIENT,
        limits: settings.pre_auth,
        max_connections: cfg.limits.max_connections,
        tls_handshake_timeout: cfg.limits.stream_open_timeout,
    });
    let tracker = TaskTracker::new();
    links.start(farm_listener, shutdown.clone(), &tracker);
    tracker.spawn(async move {
        while let Some(ev) = link_rx.recv().await {
            match ev {
                LinkEvent::Up(n) => info!("slave {n} is up"),
                LinkEvent::Down(n) => warn!("slave {n} is down: its users cannot log in"),
                // TODO(federation issue): stanzas for remote domains leave through here.
                LinkEvent::Stanza { from_node, stanza } => {
                    tracing::debug!(from_node, "stanza for the master dropped: {}", stanza.name)
                }
            }
        }
    });
    info!(node = %node.name, "master up: redirecting logins for {}", cfg.domain);
    listen::serve(
        listeners,
        opts,
        shutdown.clone(),
        tracker.clone(),
        move |stream, _peer| {
            let (settings, policy) = (settings.clone(), policy.clone());
            async move {
                if let Some(mut a) = c2s::negotiate(stream, &settings, policy.as_ref()).await {
                    // Only possible if the routing table named the master as an owner.
                    a.stream
                        .fail(
                            &jabberfarm_shared::xml::StreamError::new(
                                jabberfarm_shared::xml::Condition::InternalServerError,
                                "the master serves no sessions",
                            ),
                            &settings.domain,
                        )
                        .await;
                }
            }
        },
    )
    .await;
    shutdown.cancelled().await;
    if !listen::drain(
        &tracker,
        cfg.limits.shutdown_grace.max(Duration::from_millis(100)),
    )
    .await
    {
        warn!(node = %node.name, "some connections did not close in time");
    }
    info!(node = %node.name, "master stopped");
    Ok(())
}
