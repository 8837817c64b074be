//! Accept loops for client listeners (plain/STARTTLS and direct TLS), bounded in connections,
//! with the three-step shutdown: stop accepting, let each stream say `<system-shutdown/>`,
//! wait a bounded time (the caller waits on the [`TaskTracker`]).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::stream::XmlStream;
use jabberfarm_proto::xml::{Condition, ParserLimits, StreamError};

/// One bound listening socket.
pub struct BoundListener {
    pub listener: TcpListener,
    /// `Some` for a direct-TLS (XEP-0368) port: the TLS handshake comes first.
    pub direct_tls: Option<Arc<rustls::ServerConfig>>,
}

/// Pending connections the kernel queues before `accept` (capped by `net.core.somaxconn`).
/// Tokio's `TcpListener::bind` uses 128, which a burst of reconnecting clients (after a
/// master restart) overflows: they then wait for SYN retransmits (1 s, 3 s, …).
const LISTEN_BACKLOG: u32 = 4096;

/// Bind `addr`, naming it in the error (two nodes on one port is the usual mistake).
pub async fn bind(addr: SocketAddr, what: &str) -> std::io::Result<TcpListener> {
    let listen = || {
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        // As `TcpListener::bind` does (mio): a restarted node can bind at once.
        #[cfg(unix)]
        socket.set_reuseaddr(true)?;
        socket.bind(addr)?;
        socket.listen(LISTEN_BACKLOG)
    };
    listen().map_err(|e| {
        std::io::Error::new(e.kind(), format!("cannot listen for {what} on {addr}: {e}"))
    })
}

pub struct ServeOptions {
    pub domain: String,
    pub content_ns: &'static str,
    pub limits: ParserLimits,
    /// One permit per open connection (`limits.max_connections`); a node may share it with
    /// connections that arrive another way (relayed clients on a slave).
    pub slots: Arc<Semaphore>,
    pub tls_handshake_timeout: Duration,
    /// `limits.write_timeout`, for every stream accepted here.
    pub write_timeout: Duration,
}

/// Accept connections until `shutdown`, handing each stream to `handler` on its own task.
pub async fn serve<F, Fut>(
    listeners: Vec<BoundListener>,
    opts: Arc<ServeOptions>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    handler: F,
) where
    F: Fn(XmlStream, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = opts.slots.clone();
    for l in listeners {
        let (shutdown, tracker2, handler, opts, slots) = (
            shutdown.clone(),
            tracker.clone(),
            handler.clone(),
            opts.clone(),
            slots.clone(),
        );
        tracker.spawn(async move {
            if let Ok(a) = l.listener.local_addr() {
                info!(
                    "listening on {a}{}",
                    if l.direct_tls.is_some() {
                        " (direct TLS)"
                    } else {
                        ""
                    }
                );
            }
            loop {
                let (sock, peer) = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    r = l.listener.accept() => match r {
                        Ok(x) => x,
                        Err(e) => {
                            // Out of file descriptors and the like: back off, keep serving.
                            warn!("accept failed: {e}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                };
                let _ = sock.set_nodelay(true);
                let permit = slots.clone().try_acquire_owned();
                let (handler, opts, tls) = (handler.clone(), opts.clone(), l.direct_tls.clone());
                tracker2.spawn(async move {
                    if tls.is_some() && permit.is_err() {
                        // Full: no TLS handshake (CPU) for a connection that is refused anyway;
                        // without one there is no stream to say why on, so it is just closed.
                        warn!(%peer, "connection limit reached (direct TLS: closed)");
                        return;
                    }
                    let stream = match tls {
                        None => XmlStream::new(Box::new(sock), opts.content_ns, opts.limits),
                        Some(cfg) => {
                            // Boxed: the handshake's state is freed once it is done,
                            // instead of staying in the connection's task for its lifetime.
                            let hs = Box::pin(XmlStream::accept_direct_tls(
                                Box::new(sock),
                                cfg,
                                opts.content_ns,
                                opts.limits,
                            ));
                            match tokio::time::timeout(opts.tls_handshake_timeout, hs).await {
                                Ok(Ok(s)) => s,
                                Ok(Err(e)) => {
                                    debug!(%peer, "TLS handshake failed: {e}");
                                    return;
                                }
                                Err(_) => {
                                    debug!(%peer, "TLS handshake timed out");
                                    return;
                                }
                            }
                        }
                    };
                    let Ok(permit) = permit else {
                        let mut stream = stream;
                        warn!(%peer, "connection limit reached");
                        stream
                            .fail(
                                &StreamError::new(
                                    Condition::ResourceConstraint,
                                    "this server is full; try again later",
                                ),
                                &opts.domain,
                            )
                            .await;
                        return;
                    };
                    let mut stream = stream;
                    stream.peer = Some(peer);
                    stream.write_timeout = opts.write_timeout;
                    // The connection's slot travels with its stream (a relayed client's
                    // outlives this task).
                    stream.slot = Some(permit);
                    handler(stream, peer).await;
                });
            }
        });
    }
}

/// Wait for every task of `tracker` to end, at most `grace`; returns whether all ended.
pub async fn drain(tracker: &TaskTracker, grace: Duration) -> bool {
    tracker.close();
    tokio::time::timeout(grace, tracker.wait()).await.is_ok()
}
