//! Metrics and health over HTTP (issue 15). A node whose `[[node]]` sets `metrics = "IP:PORT"`
//! serves there:
//!
//! - `GET /metrics`: its metrics in the OpenMetrics text format (Prometheus scrapes it), encoded
//!   by `prometheus-client`. XMPP figures use the names operators know from MongooseIM
//!   (`sm_*`, `c2s_*`); what only a farm has is `jabberfarm_*` (links, topology, relays).
//!   The list, with what each means: docs/operations.md.
//! - `GET /health`: `200 ok` while the node serves, `503` and the reason once it stops (a load
//!   balancer or an orchestrator takes it out before its listeners close).
//!
//! Served by hyper, bounded: at most [`MAX_CONNECTIONS`] at once (more are closed as they
//! come), [`CONNECTION_TIME`] each, one request per connection, only `GET`.
//!
//! Values that mirror a node's state (sessions, links) are read when a scrape comes
//! ([`Metrics::on_scrape`]); events (logins, relays) are counted as they happen.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Metric, Registry};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

/// Scrapes served at once.
pub const MAX_CONNECTIONS: usize = 16;
/// How long one connection may take, from accept to the end of its answer.
pub const CONNECTION_TIME: Duration = Duration::from_secs(10);

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Label sets: `[("peer", "slave1")]`.
pub type Labels = Vec<(String, String)>;
/// A gauge per label set.
pub type Gauges = Family<Labels, Gauge>;
/// A counter per label set.
pub type Counters = Family<Labels, Counter>;

/// One label.
pub fn label(key: &str, value: &str) -> Labels {
    vec![(key.to_owned(), value.to_owned())]
}

type Refresh = Box<dyn Fn() + Send + Sync>;
type Check = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// A node's metrics: what is registered, what is read at each scrape, and its health.
pub struct Metrics {
    registry: Mutex<Registry>,
    refresh: Mutex<Vec<Refresh>>,
    /// Why the node is not healthy (set once it stops); `None`: it serves.
    unhealthy: Mutex<Option<String>>,
    /// The role's own check, asked at each `/health`.
    checks: Mutex<Vec<Check>>,
}

impl Metrics {
    /// Metrics of node `node` (role `role`): `jabberfarm_node_info{node, role, version} 1`.
    pub fn new(node: &str, role: &str) -> Arc<Metrics> {
        let m = Arc::new(Metrics {
            registry: Mutex::new(Registry::default()),
            refresh: Mutex::default(),
            unhealthy: Mutex::default(),
            checks: Mutex::default(),
        });
        let info = Gauges::default();
        info.get_or_create(&vec![
            ("node".to_owned(), node.to_owned()),
            ("role".to_owned(), role.to_owned()),
            ("version".to_owned(), env!("CARGO_PKG_VERSION").to_owned()),
        ])
        .set(1);
        m.register(
            "jabberfarm_node_info",
            "This node: its name, role and version",
            info,
        );
        m
    }

    /// Add `metric` as `name` (a counter's name gets `_total`).
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        lock(&self.registry).register(name, help, metric);
    }

    /// Run `f` before each scrape (to set gauges that mirror the node's state).
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        lock(&self.refresh).push(Box::new(f));
    }

    /// The node no longer serves, for `why` (`/health` says 503 and this).
    pub fn set_unhealthy(&self, why: impl Into<String>) {
        *lock(&self.unhealthy) = Some(why.into());
    }

    /// Ask `check` at each `/health`: `Some(why)` when the node cannot serve.
    pub fn health_check(&self, check: impl Fn() -> Option<String> + Send + Sync + 'static) {
        lock(&self.checks).push(Box::new(check));
    }

    /// `None` while the node serves, else why not.
    pub fn health(&self) -> Option<String> {
        if let Some(why) = lock(&self.unhealthy).clone() {
            return Some(why);
        }
        lock(&self.checks).iter().find_map(|c| c())
    }

    /// Everything, in the OpenMetrics text format.
    pub fn render(&self) -> String {
        for f in lock(&self.refresh).iter() {
            f();
        }
        let mut out = String::with_capacity(4096);
        // Writing into a String does not fail.
        let _ = encode(&mut out, &lock(&self.registry));
        out
    }

    /// Serve `/metrics` and `/health` on `listener` until `shutdown` (tasks on `tracker`).
    pub fn serve(
        self: &Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tracker: &TaskTracker,
    ) {
        let (me, tasks) = (self.clone(), tracker.clone());
        if let Ok(addr) = listener.local_addr() {
            info!("metrics on http://{addr}/metrics, health on http://{addr}/health");
        }
        tracker.spawn(async move { me.accept(listener, shutdown, tasks).await });
    }

    async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) {
        let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        loop {
            let sock = tokio::select! {
                r = listener.accept() => match r {
                    Ok((sock, _)) => sock,
                    Err(e) => {
                        warn!("metrics listener: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = shutdown.cancelled() => {
                    self.set_unhealthy("stopping");
                    return;
                }
            };
            // Full: the connection is closed as it comes.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            let me = self.clone();
            tasks.spawn(async move {
                let _permit = permit;
                let service = service_fn(move |req| {
                    let me = me.clone();
                    async move { Ok::<_, Infallible>(me.answer(&req)) }
                });
                let conn = http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(sock), service);
                let _ = tokio::time::timeout(CONNECTION_TIME, conn).await;
            });
        }
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let (status, kind, body) = match (req.method(), req.uri().path()) {
            (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS, self.render()),
            (&Method::GET, "/health") => match self.health() {
                None => (StatusCode::OK, TEXT, "ok\n".to_owned()),
                Some(why) => (StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{why}\n")),
            },
            (&Method::GET, _) => (
                StatusCode::NOT_FOUND,
                TEXT,
                "not found: GET /metrics or /health\n".to_owned(),
            ),
            _ => (
                StatusCode::METHOD_NOT_ALLOWED,
                TEXT,
                "only GET\n".to_owned(),
            ),
        };
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        resp.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(kind));
        if status == StatusCode::METHOD_NOT_ALLOWED {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
        }
        resp
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Bring `counter` up to `total` (a count kept elsewhere, as an atomic; it only grows).
pub fn mirror(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_and_refreshes_them_per_scrape() {
        let m = Metrics::new("slave1", "slave");
        let sessions = Gauge::<i64>::default();
        m.register(
            "sm_node_sessions",
            "Sessions on this node",
            sessions.clone(),
        );
        let logins = Counters::default();
        m.register("c2s_logins", "Logins", logins.clone());
        logins.get_or_create(&label("route", "redirect")).inc();
        let n = Arc::new(std::sync::atomic::AtomicI64::new(3));
        let n2 = n.clone();
        m.on_scrape(move || {
            sessions.set(n2.load(std::sync::atomic::Ordering::Relaxed));
        });
        let text = m.render();
        assert!(
            text.contains(&format!(
                "jabberfarm_node_info{{node=\"slave1\",role=\"slave\",version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )),
            "{text}"
        );
        assert!(text.contains("sm_node_sessions 3"), "{text}");
        assert!(
            text.contains("c2s_logins_total{route=\"redirect\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        n.store(5, std::sync::atomic::Ordering::Relaxed);
        assert!(m.render().contains("sm_node_sessions 5"));
        let c = Counter::<u64>::default();
        mirror(&c, 7);
        mirror(&c, 7);
        assert_eq!(c.get(), 7);
    }
}
