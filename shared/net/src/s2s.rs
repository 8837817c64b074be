//! Streams to remote servers: open (resolve, connect, STARTTLS when offered), authenticate with
//! dialback (XEP-0220), carry stanzas out through one bounded queue per remote domain.
//!
//! A queue holds stanzas while its stream is being set up; when that fails every queued stanza
//! (but errors and results) bounces with `remote-server-not-found` or `remote-server-timeout`.
//! Idle streams close after `s2s.idle_timeout`. [`Resolver`] finds a remote domain's server:
//! static routes, then SRV, then A/AAAA.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use jabberfarm_config::SharedTopology;
use jabberfarm_proto::dialback::{dialback_key, domain_of, rewrite_internal, set_stanza_ns};
use jabberfarm_proto::ns;
use jabberfarm_proto::stanza::{ErrorCondition, StanzaError};
use jabberfarm_proto::xml::{Element, ParserLimits, StreamEvent};

use crate::stream::{ReadError, XmlStream};

/// How to find remote servers.
pub struct Resolver {
    /// Pinned addresses (`[s2s.routes]`), for private deployments and tests.
    pub routes: HashMap<String, SocketAddr>,
    dns: Option<Arc<hickory_resolver::TokioResolver>>,
}

impl Resolver {
    pub fn new(routes: HashMap<String, SocketAddr>) -> Resolver {
        let dns = hickory_resolver::TokioResolver::builder_tokio()
            .ok()
            .and_then(|b| b.build().ok())
            .map(Arc::new);
        Resolver { routes, dns }
    }

    /// RFC 6120 §3.2: `_xmpp-server._tcp` SRV (by priority), else A/AAAA on 5269.
    pub async fn resolve(&self, domain: &str) -> Vec<SocketAddr> {
        if let Some(a) = self.routes.get(&domain.to_ascii_lowercase()) {
            return vec![*a];
        }
        let Some(dns) = &self.dns else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if let Ok(srv) = dns.srv_lookup(format!("_xmpp-server._tcp.{domain}.")).await {
            let mut targets: Vec<(u16, u16, String, u16)> = srv
                .answers()
                .iter()
                .filter_map(|r| match &r.data {
                    hickory_resolver::proto::rr::RData::SRV(s) => {
                        Some((s.priority, u16::MAX - s.weight, s.target.to_utf8(), s.port))
                    }
                    _ => None,
                })
                .collect();
            targets.sort();
            for (_, _, target, port) in targets {
                // RFC 2782: "." means the service is decidedly not available.
                if target == "." {
                    return Vec::new();
                }
                if let Ok(ips) = dns.lookup_ip(target.as_str()).await {
                    out.extend(ips.iter().map(|ip| SocketAddr::new(ip, port)));
                }
            }
        }
        if out.is_empty()
            && let Ok(ips) = dns.lookup_ip(format!("{domain}.")).await
        {
            out.extend(ips.iter().map(|ip| SocketAddr::new(ip, 5269)));
        }
        out
    }
}

/// What every outbound stream of a node shares.
pub struct S2sSettings {
    /// The public domain: every stream is opened in its name (DESIGN.md D4).
    pub local_domain: String,
    pub secret: String,
    /// The farm's nodes: their names are rewritten to the public domain at the edge (D5).
    pub topology: SharedTopology,
    pub resolver: Resolver,
    /// TLS for STARTTLS to remote servers. Certificates are not required to verify: dialback
    /// authenticates the peer (as Prosody and ejabberd do with `s2s_secure_auth` off).
    pub tls: Arc<rustls::ClientConfig>,
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    /// Stanzas queued per remote domain.
    pub queue: usize,
    /// Remote domains with a stream (or one being set up) at once (`s2s.max_domains`).
    pub max_domains: usize,
    pub limits: ParserLimits,
    /// `limits.write_timeout`: a remote that takes no data loses its stream.
    pub write_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("no address for {0}")]
    NotFound(String),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Failed(String),
}

impl OpenError {
    /// The stanza error condition for stanzas that could not go out (RFC 6120 §8.3.3).
    pub fn condition(&self) -> ErrorCondition {
        match self {
            OpenError::NotFound(_) => ErrorCondition::RemoteServerNotFound,
            OpenError::Timeout => ErrorCondition::RemoteServerTimeout,
            OpenError::Failed(_) => ErrorCondition::RemoteServerNotFound,
        }
    }
}

/// Open a stream to `remote` in the name of the local domain: connect to the first address that
/// answers, exchange headers, do STARTTLS when offered. Returns the stream (features read) and
/// the stream id the remote gave (the input to the dialback key).
pub async fn open_stream(s: &S2sSettings, remote: &str) -> Result<(XmlStream, String), OpenError> {
    let addrs = s.resolver.resolve(remote).await;
    if addrs.is_empty() {
        return Err(OpenError::NotFound(remote.to_owned()));
    }
    let mut last = OpenError::NotFound(remote.to_owned());
    for addr in addrs {
        match tokio::time::timeout(s.connect_timeout, negotiate(s, remote, addr)).await {
            Ok(Ok(x)) => return Ok(x),
            Ok(Err(e)) => {
                debug!(remote, %addr, "s2s: {e}");
                last = e;
            }
            Err(_) => last = OpenError::Timeout,
        }
    }
    Err(last)
}

async fn negotiate(
    s: &S2sSettings,
    remote: &str,
    addr: SocketAddr,
) -> Result<(XmlStream, String), OpenError> {
    let fail = |what: &str, e: &dyn std::fmt::Display| OpenError::Failed(format!("{what}: {e}"));
    let sock = TcpStream::connect(addr)
        .await
        .map_err(|e| fail("connect", &e))?;
    let _ = sock.set_nodelay(true);
    let mut stream = XmlStream::new(Box::new(sock), ns::SERVER, s.limits);
    stream.write_timeout = s.write_timeout;
    let mut tls_done = false;
    loop {
        stream
            .send_initial_header(&s.local_domain, remote)
            .await
            .map_err(|e| fail("write", &e))?;
        let id = match stream.next().await.map_err(|e| fail("header", &e))? {
            StreamEvent::Open(h) => h.id.unwrap_or_default(),
            _ => return Err(OpenError::Failed("no stream header".into())),
        };
        let features = match stream.next().await.map_err(|e| fail("features", &e))? {
            StreamEvent::Element(f) if f.is("features", ns::STREAM) => f,
            // A pre-1.0 server sends no features: dialback right away.
            StreamEvent::Element(_) | StreamEvent::Close | StreamEvent::Open(_) => {
                return Err(OpenError::Failed("no stream features".into()));
            }
        };
        if !tls_done && features.child("starttls", ns::TLS).is_some() {
            stream
                .send(&Element::new("starttls", ns::TLS))
                .await
                .map_err(|e| fail("write", &e))?;
            match stream.next().await.map_err(|e| fail("starttls", &e))? {
                StreamEvent::Element(p) if p.is("proceed", ns::TLS) => {}
                _ => return Err(OpenError::Failed("STARTTLS refused".into())),
            }
            let name = rustls_pki_types::ServerName::try_from(remote.to_owned())
                .map_err(|e| fail("TLS name", &e))?;
            stream = stream
                .upgrade_tls_client(s.tls.clone(), name, s.limits)
                .await
                .map_err(|e| fail("TLS", &e))?;
            tls_done = true;
            continue;
        }
        return Ok((stream, id));
    }
}

/// Ask `remote`'s authoritative server whether `key` is valid for a stream it received from
/// us under `stream_id` (XEP-0220 §2.1.3–2.1.4, the master's side of inbound dialback).
pub async fn verify(
    s: &S2sSettings,
    remote: &str,
    stream_id: &str,
    key: &str,
) -> Result<bool, OpenError> {
    let (mut stream, _) = open_stream(s, remote).await?;
    let v = Element::new("verify", ns::DIALBACK)
        .with_attr("from", &s.local_domain)
        .with_attr("to", remote)
        .with_attr("id", stream_id)
        .with_text(key);
    stream
        .send(&v)
        .await
        .map_err(|e| OpenError::Failed(e.to_string()))?;
    let answer = tokio::time::timeout(s.connect_timeout, async {
        loop {
            match stream.next().await {
                Ok(StreamEvent::Element(el)) if el.is("verify", ns::DIALBACK) => {
                    return Ok(el.attr("type") == Some("valid"));
                }
                Ok(StreamEvent::Element(_)) => continue,
                Ok(_) => return Err(OpenError::Failed("stream closed".into())),
                Err(e) => return Err(OpenError::Failed(e.to_string())),
            }
        }
    })
    .await
    .map_err(|_| OpenError::Timeout)?;
    stream.close().await;
    answer
}

/// The node's outbound traffic: one worker and one bounded queue per remote domain.
pub struct Outbound {
    settings: Arc<S2sSettings>,
    queues: Mutex<HashMap<String, mpsc::Sender<Element>>>,
    /// Error replies for stanzas that could not go out, to be routed back to their senders.
    bounces: mpsc::Sender<Element>,
}

impl Outbound {
    pub fn new(settings: Arc<S2sSettings>, bounces: mpsc::Sender<Element>) -> Arc<Outbound> {
        Arc::new(Outbound {
            settings,
            queues: Mutex::new(HashMap::new()),
            bounces,
        })
    }

    pub fn settings(&self) -> &S2sSettings {
        &self.settings
    }

    /// Queue a stanza for its `to` domain. Returns the error reply when the queue is full.
    pub fn send(self: &Arc<Self>, el: Element) -> Option<Element> {
        let remote = el.attr("to").map(domain_of)?.to_ascii_lowercase();
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let mut el = el;
        for _ in 0..2 {
            let tx = match queues.get(&remote) {
                Some(tx) => tx.clone(),
                None if queues.len() >= self.settings.max_domains => {
                    // Each domain is a resolution, a connection and a task: bounded, so a
                    // user writing to ever new domains cannot make the node open without end.
                    debug!(
                        remote,
                        "s2s: {} remote domains are being served already \
                         (s2s.max_domains); refused",
                        queues.len()
                    );
                    return StanzaError::new(ErrorCondition::ResourceConstraint)
                        .text("too many remote servers are being contacted at once")
                        .answer(&el);
                }
                None => {
                    let (tx, rx) = mpsc::channel(self.settings.queue);
                    queues.insert(remote.clone(), tx.clone());
                    let me = self.clone();
                    let r = remote.clone();
                    let own = tx.downgrade();
                    tokio::spawn(async move { me.worker(r, rx, own).await });
                    tx
                }
            };
            match tx.try_send(el) {
                Ok(()) => return None,
                Err(mpsc::error::TrySendError::Full(back)) => {
                    return StanzaError::new(ErrorCondition::ResourceConstraint)
                        .text("too many stanzas waiting for that server")
                        .answer(&back);
                }
                // The worker ended between lookups: start a new one.
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    queues.remove(&remote);
                    el = back;
                }
            }
        }
        None
    }

    async fn worker(
        self: Arc<Self>,
        remote: String,
        mut rx: mpsc::Receiver<Element>,
        own: mpsc::WeakSender<Element>,
    ) {
        let s = &self.settings;
        let result = match open_stream(s, &remote).await {
            Ok((stream, id)) => self.authenticate(stream, &remote, &id).await,
            Err(e) => Err(e),
        };
        let mut stream = match result {
            Ok(st) => st,
            Err(e) => {
                warn!(remote, "s2s to {remote} failed: {e}");
                self.close_queue(&remote, &mut rx, &own, e.condition(), &e.to_string())
                    .await;
                return;
            }
        };
        info!(remote, "s2s to {remote} established");
        loop {
            tokio::select! {
                next = tokio::time::timeout(s.idle_timeout, rx.recv()) => match next {
                    Ok(Some(mut el)) => {
                        let mut buf = String::with_capacity(512);
                        {
                            // One snapshot for the batch, let go before the write.
                            let topology = s.topology.load();
                            let internal = |d: &str| topology.is_node(d);
                            rewrite_internal(&mut el, &internal, &s.local_domain);
                            set_stanza_ns(&mut el, ns::CLIENT, ns::SERVER);
                            stream.serialize_into(&el, &mut buf);
                            while buf.len() < 64 * 1024 {
                                match rx.try_recv() {
                                    Ok(mut more) => {
                                        rewrite_internal(&mut more, &internal, &s.local_domain);
                                        set_stanza_ns(&mut more, ns::CLIENT, ns::SERVER);
                                        stream.serialize_into(&more, &mut buf);
                                    }
                                    Err(_) => break,
                                }
                            }
                        }
                        if let Err(e) = stream.send_raw(&buf).await {
                            warn!(remote, "s2s to {remote} lost: {e}");
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(_) => {
                        debug!(remote, "s2s to {remote} idle, closing");
                        break;
                    }
                },
                ev = stream.next() => match ev {
                    // Outbound streams carry nothing inbound but dialback answers (RFC 6120
                    // §4.1: unidirectional); anything else is ignored, the end ends us.
                    Ok(StreamEvent::Element(_)) => {}
                    Ok(_) | Err(ReadError::Eof | ReadError::Io(_) | ReadError::RelayEnded) => break,
                    Err(ReadError::Stream(e)) => {
                        warn!(remote, "s2s to {remote}: {e}");
                        break;
                    }
                },
            }
        }
        stream.close().await;
        self.close_queue(
            &remote,
            &mut rx,
            &own,
            ErrorCondition::RemoteServerTimeout,
            "the connection to the remote server was lost",
        )
        .await;
    }

    /// XEP-0220 §2.1: send our key, wait for the verdict.
    async fn authenticate(
        &self,
        mut stream: XmlStream,
        remote: &str,
        id: &str,
    ) -> Result<XmlStream, OpenError> {
        let s = &self.settings;
        let key = dialback_key(&s.secret, remote, &s.local_domain, id);
        let result = Element::new("result", ns::DIALBACK)
            .with_attr("from", &s.local_domain)
            .with_attr("to", remote)
            .with_text(key);
        stream
            .send(&result)
            .await
            .map_err(|e| OpenError::Failed(e.to_string()))?;
        let verdict = tokio::time::timeout(s.connect_timeout * 3, async {
            loop {
                match stream.next().await {
                    Ok(StreamEvent::Element(el)) if el.is("result", ns::DIALBACK) => {
                        return Ok(el.attr("type") == Some("valid"));
                    }
                    Ok(StreamEvent::Element(_)) => continue,
                    Ok(_) => return Err(OpenError::Failed("stream closed during dialback".into())),
                    Err(e) => return Err(OpenError::Failed(e.to_string())),
                }
            }
        })
        .await
        .map_err(|_| OpenError::Timeout)??;
        if verdict {
            Ok(stream)
        } else {
            Err(OpenError::Failed(format!(
                "{remote} refused our dialback key"
            )))
        }
    }

    /// Take the queue out of service and bounce what is in it.
    async fn close_queue(
        &self,
        remote: &str,
        rx: &mut mpsc::Receiver<Element>,
        own: &mpsc::WeakSender<Element>,
        condition: ErrorCondition,
        text: &str,
    ) {
        {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let ours = own.upgrade();
            if queues
                .get(remote)
                .is_some_and(|tx| ours.as_ref().is_some_and(|o| o.same_channel(tx)))
            {
                queues.remove(remote);
            }
        }
        rx.close();
        while let Ok(el) = rx.try_recv() {
            if let Some(b) = StanzaError::new(condition).text(text).answer(&el) {
                let _ = self.bounces.send(b).await;
            }
        }
    }
}

/// A verifier that accepts any certificate: on s2s, dialback authenticates the peer; TLS only
/// encrypts (XEP-0344 §2, "dialback over TLS").
#[derive(Debug)]
pub struct DialbackOnly(Arc<rustls::crypto::CryptoProvider>);

impl DialbackOnly {
    pub fn client_config() -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(DialbackOnly(provider.clone()));
        let cfg = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            });
        match cfg {
            Ok(c) => Arc::new(c),
            // The ring provider supports the default versions; this cannot fail.
            Err(_) => Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            ),
        }
    }
}

impl rustls::client::danger::ServerCertVerifier for DialbackOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls_pki_types::CertificateDer<'_>,
        _intermediates: &[rustls_pki_types::CertificateDer<'_>],
        _server_name: &rustls_pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl S2sSettings {
    pub fn from_config(
        cfg: &jabberfarm_config::FarmConfig,
        topology: SharedTopology,
    ) -> S2sSettings {
        S2sSettings {
            local_domain: cfg.domain.clone(),
            secret: cfg.secret.clone(),
            topology,
            resolver: Resolver::new(cfg.s2s.routes.clone()),
            tls: DialbackOnly::client_config(),
            connect_timeout: cfg.s2s.connect_timeout,
            idle_timeout: cfg.s2s.idle_timeout,
            queue: cfg.s2s.queue,
            max_domains: cfg.s2s.max_domains,
            limits: ParserLimits {
                max_stanza: cfg.limits.max_stanza,
                max_depth: cfg.limits.max_depth,
            },
            write_timeout: cfg.limits.write_timeout,
        }
    }
}
