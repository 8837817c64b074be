//! A slave: serves the sessions of the users the routing rule gives it (DESIGN.md D1, D2).
//!
//! Data path: socket → [`jabberfarm_shared::listen`] → [`jabberfarm_shared::c2s::negotiate`]
//! (the same rule as the master: a login that belongs elsewhere is redirected; otherwise
//! SASL/iq:auth against the account store) → [`session`] (bind, stanza loop) →
//! [`router`] (local delivery; other nodes and other domains come with farm links and
//! federation) → [`server`] (what the server itself answers).

pub mod dispatch;
pub mod im;
pub mod router;
pub mod server;
pub mod session;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use jabberfarm_shared::auth::AccountStore;
use jabberfarm_shared::c2s::{self, C2sSettings, LoginPolicy, LoginRoute};
use jabberfarm_shared::config::{FarmConfig, NodeConfig};
use jabberfarm_shared::farm::{FarmLinks, LinkTls};
use jabberfarm_shared::listen::{self, BoundListener, ServeOptions};
use jabberfarm_shared::ns;
use jabberfarm_shared::s2s::outbound::{Outbound, S2sSettings};
use jabberfarm_shared::xml::{Condition, StreamError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::router::{Outgoing, Router};

/// Everything a slave's connections share.
pub struct Slave {
    pub config: Arc<FarmConfig>,
    pub router: Router,
    pub links: Arc<FarmLinks>,
    /// Streams to other domains, opened by this slave in the public domain's name (D4).
    pub outbound: Arc<Outbound>,
    pub store: AccountStore,
    /// Roster, offline messages, vCards (same database as the accounts).
    pub im: store::ImStore,
    pub shutdown: CancellationToken,
    /// How long a freshly authenticated client may take to bind.
    pub login_timeout: Duration,
}

impl LoginPolicy for Slave {
    fn route(&self, localpart: &str, direct_tls: bool) -> LoginRoute {
        let table = self.router.table.load();
        let owner = table.owner(localpart);
        if owner == self.router.node {
            return LoginRoute::Here;
        }
        match self.config.node(owner) {
            Some(node) => LoginRoute::Redirect(c2s::redirect_address(node, direct_tls)),
            None => LoginRoute::Here,
        }
    }

    fn store(&self) -> Option<&AccountStore> {
        Some(&self.store)
    }
}

/// Run the slave node `node` until `shutdown` is cancelled.
pub async fn run(
    cfg: Arc<FarmConfig>,
    node: NodeConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
    link_tls: Option<LinkTls>,
    shutdown: CancellationToken,
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
    let (links, link_rx) = FarmLinks::new(&cfg, &node.name, link_tls);
    let (bounce_tx, mut bounce_rx) = tokio::sync::mpsc::channel(256);
    let outbound = Outbound::new(Arc::new(S2sSettings::from_config(&cfg)), bounce_tx);
    let slave = Arc::new(Slave {
        config: cfg.clone(),
        router: Router::new(cfg.domain.clone(), node.name.clone(), cfg.routing.clone()),
        links: links.clone(),
        outbound,
        im: store::ImStore::for_accounts(&store),
        store,
        shutdown: shutdown.clone(),
        login_timeout: cfg.limits.login_timeout,
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
    let s3 = slave.clone();
    tracker.spawn(async move { s3.link_events(link_rx).await });
    // Stanzas that could not leave the farm come back to their senders as errors.
    let s4 = slave.clone();
    tracker.spawn(async move {
        loop {
            let b = tokio::select! {
                b = bounce_rx.recv() => b,
                _ = s4.shutdown.cancelled() => None,
            };
            let Some(b) = b else { break };
            s4.route(b, dispatch::Origin::Local).await;
        }
    });
    info!(node = %node.name, "slave up (accounts: {})", store_description(&cfg, &node.name));
    let s2 = slave.clone();
    listen::serve(
        listeners,
        opts,
        shutdown.clone(),
        tracker.clone(),
        move |stream, _peer| {
            let (settings, slave) = (settings.clone(), s2.clone());
            async move {
                // Boxed: a task is as large as its largest state, and the login's (SASL,
                // store lookups) would otherwise stay allocated for the whole session.
                let auth = Box::pin(c2s::negotiate(stream, &settings, slave.as_ref())).await;
                if let Some(auth) = auth {
                    session::run(slave, auth).await;
                }
            }
        },
    )
    .await;
    shutdown.cancelled().await;
    // Sessions see the token themselves; this also reaches any that are busy writing.
    for tx in slave.router.all_sessions() {
        let _ = tx.try_send(Outgoing::Close(Box::new(StreamError::new(
            Condition::SystemShutdown,
            "the server is stopping",
        ))));
    }
    if !listen::drain(
        &tracker,
        cfg.limits.shutdown_grace.max(Duration::from_millis(100)),
    )
    .await
    {
        warn!(node = %node.name, "some sessions did not close in time");
    }
    slave.store.close().await;
    info!(node = %node.name, "slave stopped");
    Ok(())
}

/// Where this node's accounts are, for the start-up log line (never a password).
fn store_description(cfg: &FarmConfig, node: &str) -> String {
    use jabberfarm_shared::config::{StorageBackend, redact_url_password};
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
