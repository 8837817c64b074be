//! A minimal XMPP client (RFC 6120): connect, open the stream, STARTTLS, SASL (PLAIN, SCRAM),
//! follow `<see-other-host/>`, bind, initial presence, ping. Only what a load generator needs,
//! and only standard XMPP, so it can load any server.
//!
//! Reading uses the server's own incremental parser (`jabberfarm_proto::xml::StreamParser`);
//! the stream type is our own because a client has to take the socket back for STARTTLS.

use std::net::SocketAddr;
use std::time::Duration;

use jabberfarm_net::stream::{Io, poll_read_chunk};
use jabberfarm_proto::ns;
use jabberfarm_proto::sasl::{self, Mechanism};
use jabberfarm_proto::xml::{Element, ParserLimits, StreamEvent, StreamParser, escape_into};
use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;

use crate::error::{BenchError, Result};
use crate::scram::{KeyCache, ScramClient};
use crate::target::Resolver;

/// RFC 6120 does not bound redirects; a client must (we follow at most this many hops).
pub const MAX_HOPS: usize = 3;

/// What a client accepts from a server: generous, it is the server under test.
const LIMITS: ParserLimits = ParserLimits {
    max_stanza: 1 << 20,
    max_depth: 64,
};

/// How every connection of a run logs in.
pub struct ClientConfig {
    pub domain: String,
    pub password: String,
    pub mechanism: Mechanism,
    /// STARTTLS with this connector, verifying the certificate for `domain`.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    pub follow_redirects: bool,
    /// Bound on every single wait for the server.
    pub step_timeout: Duration,
    pub resolver: Resolver,
    pub keys: KeyCache,
    /// Enable XEP-0198 after binding, and answer the server's `<r/>`.
    pub sm: bool,
    /// Our stream header, written once.
    header: String,
}

impl ClientConfig {
    /// `resume`: let TLS resume earlier sessions (tickets); off, every handshake is a full
    /// one, the worst case and what a first connection costs.
    pub fn new(
        domain: &str,
        password: &str,
        mechanism: Mechanism,
        ca: Option<&std::path::Path>,
        resume: bool,
        follow_redirects: bool,
        step_timeout: Duration,
    ) -> Result<ClientConfig> {
        let tls = match ca {
            None => None,
            Some(ca) => {
                let shared = jabberfarm_net::tls::client_config(ca)
                    .map_err(|e| BenchError::Setup(e.to_string()))?;
                let mut cfg = (*shared).clone();
                if !resume {
                    cfg.resumption = rustls::client::Resumption::disabled();
                }
                let cfg = std::sync::Arc::new(cfg);
                let name = ServerName::try_from(domain.to_owned()).map_err(|e| {
                    BenchError::Setup(format!(
                        "{domain:?} cannot be checked in a certificate: {e}"
                    ))
                })?;
                Some((tokio_rustls::TlsConnector::from(cfg), name))
            }
        };
        let mut header = String::from("<?xml version='1.0'?><stream:stream to='");
        escape_into(&mut header, domain);
        header.push_str(
            "' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>",
        );
        Ok(ClientConfig {
            domain: domain.to_owned(),
            password: password.to_owned(),
            mechanism,
            tls,
            follow_redirects,
            sm: false,
            step_timeout,
            resolver: Resolver::default(),
            keys: KeyCache::default(),
            header,
        })
    }
}

/// One connection: bytes ↔ stream events.
pub struct Conn {
    io: Box<dyn Io>,
    parser: StreamParser,
    /// Bytes read but not yet parsed; empty (unallocated) while idle.
    pending: Vec<u8>,
    pos: usize,
    /// Where we are connected (after redirects: the server that serves us).
    pub addr: SocketAddr,
    step_timeout: Duration,
}

impl Conn {
    pub async fn connect(addr: SocketAddr, step_timeout: Duration) -> Result<Conn> {
        let tcp =
            match tokio::time::timeout(step_timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(BenchError::Connect(addr, e)),
                Err(_) => return Err(BenchError::Timeout("connect")),
            };
        tcp.set_nodelay(true)?;
        Ok(Conn {
            io: Box::new(tcp),
            parser: StreamParser::new(LIMITS),
            pending: Vec::new(),
            pos: 0,
            addr,
            step_timeout,
        })
    }

    /// The next stream event, however long it takes. Cancel-safe (for `select!`): bytes are
    /// only taken from the socket inside one poll.
    pub async fn next(&mut self) -> Result<StreamEvent> {
        loop {
            if self.pos < self.pending.len() {
                let mut slice = &self.pending[self.pos..];
                let before = slice.len();
                let ev = self.parser.parse(&mut slice).map_err(BenchError::Xml)?;
                self.pos += before - slice.len();
                if let Some(ev) = ev {
                    return Ok(ev);
                }
            }
            self.pending = Vec::new();
            self.pos = 0;
            let (io, pending) = (&mut self.io, &mut self.pending);
            let n = std::future::poll_fn(|cx| poll_read_chunk(io.as_mut(), cx, pending)).await?;
            if n == 0 {
                return Err(BenchError::Closed("read"));
            }
        }
    }

    /// The next top-level element within the step timeout. A stream error from the server
    /// becomes [`BenchError::Redirect`] (see-other-host) or [`BenchError::StreamError`].
    pub async fn element(&mut self, step: &'static str) -> Result<Element> {
        let ev = match tokio::time::timeout(self.step_timeout, self.next()).await {
            Ok(Ok(ev)) => ev,
            Ok(Err(BenchError::Closed(_))) => return Err(BenchError::Closed(step)),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(BenchError::Timeout(step)),
        };
        match ev {
            StreamEvent::Element(el) => check_stream_error(el),
            StreamEvent::Close => Err(BenchError::Closed(step)),
            StreamEvent::Open(_) => Err(BenchError::Protocol(format!(
                "a second stream header during {step}"
            ))),
        }
    }

    pub async fn send(&mut self, s: &str) -> Result<()> {
        self.io.write_all(s.as_bytes()).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// RFC 6120 §4.3.3: a new stream after STARTTLS and after SASL.
    fn restart(&mut self) {
        self.parser = StreamParser::new(LIMITS);
    }

    /// Close politely: our `</stream:stream>`, then wait (briefly) for the server's.
    pub async fn close(mut self) {
        if self.send("</stream:stream>").await.is_err() {
            return;
        }
        self.drain().await;
    }

    /// Read until the server closes the stream or the connection (bounded by the step
    /// timeout), then shut our side down.
    pub async fn drain(&mut self) {
        let limit = self.step_timeout;
        let _ = tokio::time::timeout(limit, async {
            while let Ok(ev) = self.next().await {
                if ev == StreamEvent::Close {
                    break;
                }
            }
        })
        .await;
        let _ = tokio::time::timeout(Duration::from_secs(1), self.io.shutdown()).await;
    }

    /// RFC 6120 §5.4.3.3: after `<proceed/>`, a TLS handshake on the same socket.
    async fn starttls(
        self,
        connector: &tokio_rustls::TlsConnector,
        name: &ServerName<'static>,
    ) -> Result<Conn> {
        if self.pos < self.pending.len() {
            return Err(BenchError::Protocol("data after <proceed/>".into()));
        }
        let tls =
            match tokio::time::timeout(self.step_timeout, connector.connect(name.clone(), self.io))
                .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return Err(BenchError::Tls(e.to_string())),
                Err(_) => return Err(BenchError::Timeout("TLS handshake")),
            };
        Ok(Conn {
            io: Box::new(tls),
            parser: StreamParser::new(LIMITS),
            pending: Vec::new(),
            pos: 0,
            addr: self.addr,
            step_timeout: self.step_timeout,
        })
    }
}

/// RFC 6120 §4.9: `<stream:error>` ends the stream; see-other-host carries `HOST:PORT`.
fn check_stream_error(el: Element) -> Result<Element> {
    if !el.is("error", ns::STREAM) {
        return Ok(el);
    }
    let cond = el
        .children()
        .find(|c| c.ns == ns::STREAMS && c.name != "text");
    match cond {
        Some(c) if c.name == "see-other-host" => Err(BenchError::Redirect(c.text().trim().into())),
        Some(c) => {
            let text = el
                .child("text", ns::STREAMS)
                .map(|t| format!(": {}", t.text()))
                .unwrap_or_default();
            Err(BenchError::StreamError(c.name.to_string(), text))
        }
        None => Err(BenchError::StreamError(
            "undefined-condition".into(),
            String::new(),
        )),
    }
}

/// Send our header, read the server's and its features (RFC 6120 §4.2, §4.3.2).
async fn open(conn: &mut Conn, cfg: &ClientConfig) -> Result<Element> {
    conn.send(&cfg.header).await?;
    match tokio::time::timeout(conn.step_timeout, conn.next()).await {
        Ok(Ok(StreamEvent::Open(_))) => {}
        Ok(Ok(StreamEvent::Element(el))) => {
            check_stream_error(el)?;
            return Err(BenchError::Protocol(
                "an element before the stream header".into(),
            ));
        }
        Ok(Ok(StreamEvent::Close)) | Ok(Err(BenchError::Closed(_))) => {
            return Err(BenchError::Closed("stream header"));
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => return Err(BenchError::Timeout("stream header")),
    }
    let features = conn.element("stream features").await?;
    if !features.is("features", ns::STREAM) {
        return Err(BenchError::Protocol(format!(
            "expected <stream:features/>, got <{}/>",
            features.name
        )));
    }
    Ok(features)
}

/// Connect, open the stream and, when configured, STARTTLS (RFC 6120 §5). Returns the
/// connection ready for SASL and the features offered there.
pub async fn connect_ready(cfg: &ClientConfig, addr: SocketAddr) -> Result<(Conn, Element)> {
    let mut conn = Conn::connect(addr, cfg.step_timeout).await?;
    let features = open(&mut conn, cfg).await?;
    let Some((connector, name)) = &cfg.tls else {
        return Ok((conn, features));
    };
    if features.child("starttls", ns::TLS).is_none() {
        return Err(BenchError::Protocol("the server offers no STARTTLS".into()));
    }
    conn.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>")
        .await?;
    let answer = conn.element("STARTTLS").await?;
    if !answer.is("proceed", ns::TLS) {
        return Err(BenchError::Protocol(format!(
            "STARTTLS answered with <{}/>",
            answer.name
        )));
    }
    let mut conn = conn.starttls(connector, name).await?;
    let features = open(&mut conn, cfg).await?;
    Ok((conn, features))
}

/// A SASL exchange after its first message was sent.
pub enum SaslState {
    Plain,
    Scram(ScramClient),
}

/// Send the first SASL message (RFC 6120 §6.4.2, with the initial response) and read the
/// server's answer. A redirect comes back as `Err(BenchError::Redirect)`.
pub async fn sasl_first(
    conn: &mut Conn,
    cfg: &ClientConfig,
    features: &Element,
    user: &str,
) -> Result<(Element, SaslState)> {
    let mech = cfg.mechanism;
    let offered = features
        .child("mechanisms", ns::SASL)
        .map(|m| {
            m.children()
                .filter(|c| c.is("mechanism", ns::SASL))
                .map(|c| c.text())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if !offered.iter().any(|m| m.trim() == mech.name()) {
        return Err(BenchError::Protocol(format!(
            "the server does not offer {} (it offers: {})",
            mech.name(),
            offered.join(" ")
        )));
    }
    let (initial, state) = match mech.scram_hash() {
        None => (
            format!("\0{user}\0{}", cfg.password).into_bytes(),
            SaslState::Plain,
        ),
        Some(hash) => {
            let c = ScramClient::new(hash, user);
            (c.first_message().into_bytes(), SaslState::Scram(c))
        }
    };
    conn.send(&format!(
        "<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='{}'>{}</auth>",
        mech.name(),
        sasl::encode_payload(&initial)
    ))
    .await?;
    let reply = conn.element("SASL").await?;
    Ok((reply, state))
}

fn sasl_failure(el: &Element, user: &str) -> BenchError {
    let cond = el
        .children()
        .find(|c| c.ns == ns::SASL && c.name != "text")
        .map(|c| c.name.to_string())
        .unwrap_or_else(|| "unknown".into());
    BenchError::Auth(cond, user.to_owned())
}

/// Finish SASL after [`sasl_first`]: answer the SCRAM challenge, check `<success/>`.
pub async fn sasl_finish(
    conn: &mut Conn,
    cfg: &ClientConfig,
    user: &str,
    reply: Element,
    state: SaslState,
) -> Result<()> {
    let payload = |el: &Element| {
        sasl::decode_payload(&el.text())
            .map_err(|_| BenchError::Protocol("SASL payload is not base64".into()))
    };
    if reply.is("failure", ns::SASL) {
        return Err(sasl_failure(&reply, user));
    }
    match state {
        SaslState::Plain => {
            if reply.is("success", ns::SASL) {
                return Ok(());
            }
            Err(BenchError::Protocol(format!(
                "PLAIN answered with <{}/>",
                reply.name
            )))
        }
        SaslState::Scram(client) => {
            if !reply.is("challenge", ns::SASL) {
                return Err(BenchError::Protocol(format!(
                    "SCRAM client-first answered with <{}/>",
                    reply.name
                )));
            }
            let sf = client.parse_server_first(&payload(&reply)?)?;
            let keys = cfg
                .keys
                .get(client.hash, &cfg.password, &sf.salt, sf.iterations)
                .await?;
            let (fin, expected) = client.final_message(&sf, &keys);
            conn.send(&format!(
                "<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'>{}</response>",
                sasl::encode_payload(fin.as_bytes())
            ))
            .await?;
            let outcome = conn.element("SASL").await?;
            if outcome.is("failure", ns::SASL) {
                return Err(sasl_failure(&outcome, user));
            }
            // RFC 6120 §6.3.10: server-final in <success/>, or (older servers) in a challenge
            // answered with an empty response.
            let data = if outcome.is("success", ns::SASL) {
                payload(&outcome)?
            } else if outcome.is("challenge", ns::SASL) {
                let d = payload(&outcome)?;
                conn.send("<response xmlns='urn:ietf:params:xml:ns:xmpp-sasl'/>")
                    .await?;
                let ok = conn.element("SASL").await?;
                if !ok.is("success", ns::SASL) {
                    return Err(sasl_failure(&ok, user));
                }
                d
            } else {
                return Err(BenchError::Protocol(format!(
                    "SCRAM client-final answered with <{}/>",
                    outcome.name
                )));
            };
            Ok(ScramClient::verify_server_final(&data, &expected)?)
        }
    }
}

/// A logged-in session.
pub struct Session {
    pub conn: Conn,
    /// The full JID the server bound.
    pub jid: String,
    /// Messages that arrived during the login (offline messages), in order.
    pub early: Vec<Element>,
    /// With stream management: the stanzas handled since `<enabled/>` (our `h`).
    pub sm: Option<u32>,
    /// With stream management: the stanzas we sent since `<enabled/>` (the server's `h`
    /// acknowledges them).
    pub sm_sent: u32,
}

impl Session {
    /// With stream management, every element from the server goes through here: a stanza is
    /// counted, an `<r/>` gets its `<a h/>` (returned, to be sent).
    pub fn handled(&mut self, el: &Element) -> Option<String> {
        handled(&mut self.sm, el)
    }
}

fn handled(sm: &mut Option<u32>, el: &Element) -> Option<String> {
    let h = sm.as_mut()?;
    if el.is("r", ns::SM) {
        return Some(format!("<a xmlns='{}' h='{h}'/>", ns::SM));
    }
    if el.ns == ns::CLIENT && matches!(&*el.name, "message" | "presence" | "iq") {
        *h = h.wrapping_add(1);
    }
    None
}

/// What a session the server moves needs to log in again where it is sent.
#[derive(Clone)]
pub struct Relogin {
    pub cfg: std::sync::Arc<ClientConfig>,
    pub user: String,
    pub resource: String,
    /// Where to log in again when a session ends without saying where to go (`HOST:PORT`,
    /// the address the run started at), as a client's automatic reconnect does.
    pub home: String,
}

impl Relogin {
    /// The address `el` sends the session to, when it is the server's
    /// `<stream:error><see-other-host>HOST:PORT</see-other-host>` (a move).
    pub fn moved_to(el: &Element) -> Option<String> {
        (el.name.as_ref() == "error")
            .then(|| el.child("see-other-host", ns::STREAMS))
            .flatten()
            .map(|h| h.text())
    }

    /// A full login at `to` (`HOST:PORT`), as the first one was.
    pub async fn login_at(&self, to: &str) -> Result<Session> {
        let addr = self.cfg.resolver.resolve_host_port(to).await?;
        login(&self.cfg, addr, &self.user, &self.resource).await
    }
}

/// Follow redirects from `start` while `attempt` answers `Redirect` (at most [`MAX_HOPS`]).
async fn with_redirects<T, F, Fut>(
    cfg: &ClientConfig,
    start: SocketAddr,
    mut attempt: F,
) -> Result<T>
where
    F: FnMut(SocketAddr) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut addr = start;
    for _ in 0..=MAX_HOPS {
        match attempt(addr).await {
            Err(BenchError::Redirect(to)) if cfg.follow_redirects => {
                addr = cfg.resolver.resolve_host_port(&to).await?;
            }
            other => return other,
        }
    }
    Err(BenchError::TooManyRedirects(MAX_HOPS))
}

/// Find the server that serves `user` and check its credentials: SASL from `start`,
/// following redirects, then close. For SCRAM this also fills the key cache, so the measured
/// logins do not pay for PBKDF2 on the client.
pub async fn discover(cfg: &ClientConfig, start: SocketAddr, user: &str) -> Result<SocketAddr> {
    with_redirects(cfg, start, |addr| async move {
        let (mut conn, features) = connect_ready(cfg, addr).await?;
        let (reply, state) = sasl_first(&mut conn, cfg, &features, user).await?;
        sasl_finish(&mut conn, cfg, user, reply, state).await?;
        // Authenticated; leave without opening a session.
        conn.close().await;
        Ok(addr)
    })
    .await
}

/// A full login (RFC 6120 §4–§7, RFC 6121 §4.2): stream, STARTTLS, SASL, restart, bind,
/// initial presence, then a ping to the domain whose answer acknowledges it all (any server
/// answers a ping, with a result or an error).
pub async fn login(
    cfg: &ClientConfig,
    start: SocketAddr,
    user: &str,
    resource: &str,
) -> Result<Session> {
    with_redirects(cfg, start, |addr| login_at(cfg, addr, user, resource)).await
}

async fn login_at(
    cfg: &ClientConfig,
    addr: SocketAddr,
    user: &str,
    resource: &str,
) -> Result<Session> {
    let (mut conn, features) = connect_ready(cfg, addr).await?;
    let (reply, state) = sasl_first(&mut conn, cfg, &features, user).await?;
    sasl_finish(&mut conn, cfg, user, reply, state).await?;
    conn.restart();
    let features = open(&mut conn, cfg).await?;
    if features.child("bind", ns::BIND).is_none() {
        return Err(BenchError::Protocol("no resource binding offered".into()));
    }
    let mut bind = String::with_capacity(160);
    bind.push_str(
        "<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'><resource>",
    );
    escape_into(&mut bind, resource);
    bind.push_str("</resource></bind></iq>");
    conn.send(&bind).await?;
    let reply = wait_iq(&mut conn, "bind", "resource binding").await?;
    let jid = reply
        .child("bind", ns::BIND)
        .and_then(|b| b.child("jid", ns::BIND))
        .map(|j| j.text())
        .ok_or_else(|| BenchError::Protocol("bind result without <jid/>".into()))?;
    // RFC 3921 §3: only servers that still require the session iq get it.
    if features
        .child("session", ns::SESSION)
        .is_some_and(|s| s.child("optional", ns::SESSION).is_none())
    {
        conn.send(
            "<iq type='set' id='sess'><session xmlns='urn:ietf:params:xml:ns:xmpp-session'/></iq>",
        )
        .await?;
        wait_iq(&mut conn, "sess", "session").await?;
    }
    let mut out = String::with_capacity(200);
    if cfg.sm {
        out.push_str("<enable xmlns='urn:xmpp:sm:3'/>");
    }
    out.push_str("<presence/><iq type='get' id='ack' to='");
    escape_into(&mut out, &cfg.domain);
    out.push_str("'><ping xmlns='urn:xmpp:ping'/></iq>");
    conn.send(&out).await?;
    let mut early = Vec::new();
    let mut sm = None;
    loop {
        let el = conn.element("presence acknowledgment").await?;
        if el.is("enabled", ns::SM) {
            sm = Some(0);
            continue;
        }
        if el.is("failed", ns::SM) {
            return Err(BenchError::Protocol("stream management refused".into()));
        }
        if let Some(a) = handled(&mut sm, &el) {
            conn.send(&a).await?;
        }
        if el.is("iq", ns::CLIENT) && el.attr("id") == Some("ack") {
            // A ping answered with an error still acknowledges everything before it.
            break;
        }
        if el.is("message", ns::CLIENT) {
            early.push(el);
        }
    }
    if cfg.sm && sm.is_none() {
        return Err(BenchError::Protocol(
            "no <enabled/> before the ping's answer".into(),
        ));
    }
    Ok(Session {
        conn,
        jid,
        early,
        sm,
        // The presence and the ping after the `<enable/>`.
        sm_sent: 2,
    })
}

/// Skip what arrives (our own presence, offline messages…) until the reply to IQ `id`.
async fn wait_iq(conn: &mut Conn, id: &str, step: &'static str) -> Result<Element> {
    loop {
        let el = conn.element(step).await?;
        if el.is("iq", ns::CLIENT) && el.attr("id") == Some(id) {
            return match el.attr("type") {
                Some("result") => Ok(el),
                // A ping answered with an error still acknowledges everything before it.
                Some("error") if id == "ack" => Ok(el),
                _ => Err(BenchError::Protocol(format!(
                    "{step} failed: {}",
                    el.to_xml()
                ))),
            };
        }
    }
}

/// Connect to `addr` and run the redirect exchange: stream, optional STARTTLS, the first SASL
/// message; returns the `HOST:PORT` of `<see-other-host/>`. The connection is left open for
/// the caller to drain.
pub async fn redirect_once(
    cfg: &ClientConfig,
    addr: SocketAddr,
    user: &str,
) -> Result<(String, Conn)> {
    let (mut conn, features) = connect_ready(cfg, addr).await?;
    match sasl_first(&mut conn, cfg, &features, user).await {
        Err(BenchError::Redirect(to)) => Ok((to, conn)),
        Err(e) => Err(e),
        Ok((el, _)) => Err(BenchError::Protocol(format!(
            "expected <see-other-host/>, got <{}/> (is this the master?)",
            el.name
        ))),
    }
}
