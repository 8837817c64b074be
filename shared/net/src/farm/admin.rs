//! Admin requests on the farm port: `jabberfarm status` and `jabberfarm reload` open one
//! connection to a node with `purpose='admin'`, prove they know the farm secret (from the
//! config, as the nodes do), send one request element and read one answer. No table check:
//! nothing is routed. A node answers `<status/>` itself (its epoch, fingerprint and links);
//! the node's own [`AdminHandler`] adds what only it knows (sessions, relayed clients) and the
//! master's adds `<reload/>`.

use std::sync::Arc;

use jabberfarm_config::{FarmConfig, Topology};
use jabberfarm_proto::link::{ADMIN_NAME, Connector, LINK_NS, Purpose, Table, link_key, new_nonce};
use jabberfarm_proto::xml::Element;
use tracing::{debug, warn};

use super::{FarmLinks, Framed, HANDSHAKE_FRAME, HANDSHAKE_TIMEOUT, dial, failed};

/// What a node answers to an admin request: the request, and the links' own `<status/>` to
/// extend; `None` for a request it does not know.
pub type AdminHandler = Arc<
    dyn Fn(
            Element,
            Element,
        ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Element>> + Send>>
        + Send
        + Sync,
>;

impl FarmLinks {
    /// Answer admin requests with `handler` too (a node calls this before [`Self::start`]).
    pub fn answer_admin(&self, handler: AdminHandler) {
        let _ = self.admin_handler.set(handler);
    }

    /// This node as the links see it: `<status node role state epoch fingerprint>` (`state`:
    /// `up`, `out-of-service` or `draining`) with one `<link node up failed queued/>` per peer (`failed`:
    /// this node counts it failed; `queued`: frames its outbox keeps).
    pub fn status(&self) -> Element {
        let topology = self.topology.load();
        let role = topology
            .node(&self.me)
            .map_or("?".to_owned(), |n| n.role.to_string());
        let peers = self.peers.load();
        let mut names: Vec<&String> = peers.keys().collect();
        names.sort();
        names.into_iter().fold(
            Element::new("status", LINK_NS)
                .with_attr("node", &self.me)
                .with_attr("role", role)
                .with_attr(
                    "state",
                    match topology.node(&self.me) {
                        Some(n) if n.drain.is_some() => "draining",
                        Some(n) if !n.inservice => "out-of-service",
                        _ => "up",
                    },
                )
                .with_attr("epoch", topology.epoch.to_string())
                .with_attr("fingerprint", topology.fingerprint()),
            |el, peer| {
                el.with_child(
                    Element::new("link", LINK_NS)
                        .with_attr("node", peer)
                        .with_attr("up", self.is_up(peer).to_string())
                        .with_attr("failed", self.is_failed(peer).to_string())
                        .with_attr("queued", self.queued(peer).0.to_string()),
                )
            },
        )
    }

    /// One authenticated admin connection: one request, one answer.
    pub(super) async fn serve_admin(&self, mut link: Framed) {
        let request = match tokio::time::timeout(HANDSHAKE_TIMEOUT, link.recv_el()).await {
            Ok(Ok(el)) => el,
            Ok(Err(e)) => return debug!("admin request: {e}"),
            Err(_) => return debug!("admin request: none in time"),
        };
        let status = self.status();
        let answer = match self.admin_handler.get() {
            Some(handler) => handler(request.clone(), status.clone()).await,
            None => None,
        };
        let answer = answer.unwrap_or_else(|| {
            if request.is("status", LINK_NS) {
                status
            } else if request.is("topology", LINK_NS) {
                // The topology this node runs (`jabberfarm plan` without `--from`).
                self.topology.load().to_element()
            } else {
                Element::new("error", LINK_NS)
                    .with_attr("reason", format!("unknown request <{}/>", request.name))
            }
        });
        if let Err(e) = link.send_el(&answer).await {
            warn!("admin answer not sent: {e}");
        }
    }
}

/// The admin side: `request` to `node` of `cfg`, its answer. `tls`: the client config for
/// farm links with TLS (`farm.tls`), checked against the farm's domain.
pub async fn admin_request(
    cfg: &FarmConfig,
    node: &str,
    tls: Option<&Arc<rustls::ClientConfig>>,
    request: &Element,
    wait: std::time::Duration,
) -> Result<Element, String> {
    let key = link_key(&cfg.secret);
    let addr = cfg
        .node(node)
        .map(|n| n.farm)
        .ok_or_else(|| format!("no node {node} in the config"))?;
    let io = dial(addr, tls.map(|c| (c, cfg.domain.as_str()))).await?;
    let mut link = Framed::new(io, HANDSHAKE_FRAME);
    let topology = Topology::of(cfg);
    let table = Table {
        fingerprint: topology.fingerprint(),
        epoch: 0,
    };
    let c = Connector::new(&key, ADMIN_NAME, node, table, Purpose::Admin, new_nonce());
    let handshake = async {
        link.send_el(&c.hello()).await?;
        let answer = link.recv_el().await?;
        let (auth, _) = match c.on_hello(&answer) {
            Ok(x) => x,
            Err(f) => return Err(failed(&mut link, node, f).await),
        };
        link.send_el(&auth).await?;
        let last = link.recv_el().await?;
        c.on_answer(&last).map_err(|f| f.reason)
    };
    tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| "handshake timed out".to_owned())??;
    // Answers can be as large as a node's status with every link.
    link.authenticated(cfg.limits.max_stanza + super::FRAME_SLACK);
    link.send_el(request).await?;
    tokio::time::timeout(wait, link.recv_el())
        .await
        .map_err(|_| format!("no answer in {} s", wait.as_secs()))?
}
