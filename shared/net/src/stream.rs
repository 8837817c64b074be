//! An XML stream over any async byte stream: read one [`StreamEvent`] at a time, write
//! elements, restart after STARTTLS/SASL, upgrade to TLS, close with a stream error.
//!
//! The transport is boxed (`Box<dyn Io>`) so a plain TCP stream and its TLS upgrade are one type.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use jabberfarm_proto::ns;
use jabberfarm_proto::xml::{
    Condition, Element, ParserLimits, StreamError, StreamEvent, StreamHeader, StreamParser,
    escape_attr_into,
};

/// Anything a stream can run over: TCP, TLS, an in-memory duplex.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// How reading the next event ended, when it did not give an event.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The peer closed the connection (not an error on our side).
    #[error("connection closed by peer")]
    Eof,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// The peer broke the protocol; send this stream error and close.
    #[error(transparent)]
    Stream(#[from] StreamError),
    /// A relayed stream's master ended the relay (DESIGN.md D1b): the client left, or the
    /// master stops. A client still there reads what is written now through the master:
    /// [`ReadError::relay_ended_error`] tells it, unless its session waits to be resumed.
    #[error("the master ended the relay")]
    RelayEnded,
}

impl ReadError {
    /// What a relayed client is told when its relay ended under it.
    pub fn relay_ended_error() -> StreamError {
        StreamError::new(Condition::SystemShutdown, "the server is stopping")
    }
}

/// How long one write may wait for the peer to take data, unless the node's config says
/// otherwise (`limits.write_timeout`): a peer that stops reading does not pin its task.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// Read chunk. It lives on the stack only while a read is polled, so an idle stream (a pending
/// read) holds no buffer at all.
const READ_CHUNK: usize = 4096;

/// Polls one read of up to 4 KiB from `io` and appends what came to `out`; `Ok(0)` at end of
/// stream. The chunk is on the stack, so a pending read holds no buffer.
pub fn poll_read_chunk(
    io: &mut (dyn Io + '_),
    cx: &mut std::task::Context<'_>,
    out: &mut Vec<u8>,
) -> std::task::Poll<std::io::Result<usize>> {
    // Uninitialised: zeroing 4 KiB on every poll (most of them find nothing) is measurable.
    let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = tokio::io::ReadBuf::uninit(&mut chunk);
    match std::pin::Pin::new(io).poll_read(cx, &mut rb) {
        std::task::Poll::Ready(Ok(())) => {
            out.extend_from_slice(rb.filled());
            std::task::Poll::Ready(Ok(rb.filled().len()))
        }
        std::task::Poll::Ready(Err(e)) => std::task::Poll::Ready(Err(e)),
        std::task::Poll::Pending => std::task::Poll::Pending,
    }
}

/// What a relay carries on with: see [`XmlStream::into_relay_parts`].
pub struct RelayParts {
    pub io: Box<dyn Io>,
    pub pending: Vec<u8>,
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

pub struct XmlStream {
    io: Box<dyn Io>,
    parser: StreamParser,
    /// Bytes read but not yet parsed (left over after an event).
    pending: Vec<u8>,
    pos: usize,
    /// Default namespace of the stream content (`jabber:client` or `jabber:server`).
    content_ns: &'static str,
    /// Whether we have sent our stream header (a stream error must follow one).
    header_sent: bool,
    /// Our stream header, not yet written: it goes out with the next write (header and
    /// features in one segment), or before the next read at the latest.
    unsent: String,
    /// Whether the stream is encrypted (for a relayed stream: the client's leg to the master).
    pub secure: bool,
    /// The peer's address (for a relayed stream: the client's, as the master saw it).
    pub peer: Option<std::net::SocketAddr>,
    /// The master relays this stream (DESIGN.md D1b): end-of-file means the client left or
    /// the master is stopping, so [`Self::next`] reports it as the stream error
    /// `<system-shutdown/>`, which every reader answers (the client still reads what we write
    /// through the master).
    pub relayed: bool,
    /// The connection slot this stream holds (`limits.max_connections`), freed with it.
    pub slot: Option<tokio::sync::OwnedSemaphorePermit>,
    /// A write that waits longer than this for the peer fails (`TimedOut`).
    pub write_timeout: Duration,
    /// Bytes read from the peer so far (for the session shaper).
    bytes_in: u64,
}

impl XmlStream {
    pub fn new(io: Box<dyn Io>, content_ns: &'static str, limits: ParserLimits) -> Self {
        XmlStream {
            io,
            parser: StreamParser::new(limits),
            pending: Vec::new(),
            pos: 0,
            content_ns,
            header_sent: false,
            unsent: String::new(),
            secure: false,
            peer: None,
            relayed: false,
            slot: None,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            bytes_in: 0,
        }
    }

    /// A stream picked up in the middle (a relayed client, DESIGN.md D1b): the peer's header
    /// was read and ours sent by the master, so the next thing to arrive is a top-level
    /// element.
    pub fn resumed(io: Box<dyn Io>, content_ns: &'static str, limits: ParserLimits) -> Self {
        let mut s = XmlStream::new(io, content_ns, limits);
        let header = format!(
            "<stream:stream xmlns='{content_ns}' xmlns:stream='{}'>",
            ns::STREAM
        );
        let _ = s.parser.parse(&mut header.as_bytes());
        s.header_sent = true;
        s
    }

    /// Give up the stream for relaying: the connection, the bytes read from it that were not
    /// parsed yet, and its connection slot. Whatever we queued is written first.
    pub async fn into_relay_parts(mut self) -> std::io::Result<RelayParts> {
        self.flush_unsent().await?;
        let pending = self.pending.split_off(self.pos.min(self.pending.len()));
        Ok(RelayParts {
            io: self.io,
            pending,
            slot: self.slot,
        })
    }

    /// Bytes read from the peer so far.
    pub fn bytes_in(&self) -> u64 {
        self.bytes_in
    }

    pub fn content_ns(&self) -> &'static str {
        self.content_ns
    }

    /// Read until the next stream event.
    pub async fn next(&mut self) -> Result<StreamEvent, ReadError> {
        self.flush_unsent().await?;
        loop {
            if self.pos < self.pending.len() {
                let mut slice = &self.pending[self.pos..];
                let before = slice.len();
                let ev = self.parser.parse(&mut slice)?;
                self.pos += before - slice.len();
                if let Some(ev) = ev {
                    return Ok(ev);
                }
            }
            // Everything buffered was handed to the parser (rxml keeps partial tokens itself):
            // free the buffer, so an idle stream holds none.
            self.pending = Vec::new();
            self.pos = 0;
            let io = &mut self.io;
            let pending = &mut self.pending;
            let parser = &mut self.parser;
            let mut idle = false;
            let n = std::future::poll_fn(|cx| {
                let r = poll_read_chunk(io.as_mut(), cx, pending);
                if r.is_pending() && !idle {
                    // Nothing to read: the parser's buffers go too (allocated again, untouched,
                    // on the next token).
                    parser.release_buffers();
                    idle = true;
                }
                r
            })
            .await?;
            self.bytes_in += n as u64;
            if n == 0 {
                return Err(if self.relayed {
                    ReadError::RelayEnded
                } else {
                    ReadError::Eof
                });
            }
        }
    }

    /// [`Self::next`], bounded in time: `connection-timeout` when nothing complete arrives.
    pub async fn next_within(&mut self, limit: Duration) -> Result<StreamEvent, ReadError> {
        match tokio::time::timeout(limit, self.next()).await {
            Ok(r) => r,
            Err(_) => Err(ReadError::Stream(StreamError::new(
                Condition::ConnectionTimeout,
                format!("nothing complete received within {} s", limit.as_secs()),
            ))),
        }
    }

    /// [`Self::next_within`] for a node that may stop: `None` when the stream is over — the
    /// node is stopping (the peer gets `<system-shutdown/>`), the peer broke the protocol or
    /// took too long (it gets that stream error), or it left. Every way out is answered here.
    pub async fn next_or_stop(
        &mut self,
        limit: Duration,
        shutdown: &tokio_util::sync::CancellationToken,
        domain: &str,
    ) -> Option<StreamEvent> {
        let r = tokio::select! {
            r = self.next_within(limit) => r,
            _ = shutdown.cancelled() => {
                let e = StreamError::new(Condition::SystemShutdown, "the server is stopping");
                self.fail(&e, domain).await;
                return None;
            }
        };
        match r {
            Ok(ev) => Some(ev),
            Err(ReadError::Stream(e)) => {
                tracing::debug!(peer = ?self.peer, "closing stream: {e}");
                self.fail(&e, domain).await;
                None
            }
            Err(ReadError::RelayEnded) => {
                self.fail(&ReadError::relay_ended_error(), domain).await;
                None
            }
            Err(ReadError::Eof | ReadError::Io(_)) => None,
        }
    }

    /// Drop the parser state: the next thing the peer sends is a new stream header
    /// (RFC 6120 §4.3.3: after STARTTLS and after SASL).
    pub fn restart(&mut self, limits: ParserLimits) {
        self.parser = StreamParser::new(limits);
        self.header_sent = false;
    }

    /// New bounds without a restart (legacy iq:auth logins never restart the stream).
    pub fn set_limits(&mut self, limits: ParserLimits) {
        self.parser.set_limits(limits);
    }

    /// Our stream header in reply to the peer's (RFC 6120 §4.7).
    pub async fn send_header(
        &mut self,
        from: &str,
        to: Option<&str>,
        id: &str,
        version: bool,
    ) -> std::io::Result<()> {
        let s = self.header(Some(from), to, Some(id), version);
        self.header_sent = true;
        // Written with what follows (the features, a stream error), saving a system call
        // and a segment; `next` writes it if nothing follows before the peer must answer.
        self.unsent.push_str(&s);
        Ok(())
    }

    /// The initiating entity's stream header (no id; RFC 6120 §4.7.3).
    pub async fn send_initial_header(&mut self, from: &str, to: &str) -> std::io::Result<()> {
        let s = self.header(Some(from), Some(to), None, true);
        self.header_sent = true;
        self.send_raw(&s).await
    }

    fn header(
        &self,
        from: Option<&str>,
        to: Option<&str>,
        id: Option<&str>,
        version: bool,
    ) -> String {
        let mut s = String::with_capacity(256);
        s.push_str("<?xml version='1.0'?><stream:stream xmlns='");
        s.push_str(self.content_ns);
        s.push_str("' xmlns:stream='");
        s.push_str(ns::STREAM);
        if self.content_ns == ns::SERVER {
            // Server dialback (XEP-0220) elements use the db: prefix declared here.
            s.push_str("' xmlns:db='");
            s.push_str(ns::DIALBACK);
        }
        for (name, value) in [("id", id), ("from", from), ("to", to)] {
            if let Some(v) = value {
                s.push_str("' ");
                s.push_str(name);
                s.push_str("='");
                escape_attr_into(&mut s, v);
            }
        }
        if version {
            s.push_str("' version='1.0");
        }
        s.push_str("' xml:lang='en'>");
        s
    }

    pub fn header_sent(&self) -> bool {
        self.header_sent
    }

    /// Serialize `el` into `buf` for a later [`Self::send_raw`] (batching several stanzas
    /// into one write).
    pub fn serialize_into(&self, el: &Element, buf: &mut String) {
        el.write_to(buf, self.content_ns);
    }

    pub async fn send(&mut self, el: &Element) -> std::io::Result<()> {
        let mut s = String::with_capacity(128);
        el.write_to(&mut s, self.content_ns);
        self.send_raw(&s).await
    }

    pub async fn send_raw(&mut self, s: &str) -> std::io::Result<()> {
        let limit = self.write_timeout;
        let write = async {
            if self.unsent.is_empty() {
                self.io.write_all(s.as_bytes()).await?;
            } else {
                let mut all = std::mem::take(&mut self.unsent);
                all.push_str(s);
                self.io.write_all(all.as_bytes()).await?;
            }
            self.io.flush().await
        };
        match tokio::time::timeout(limit, write).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the peer took nothing for {} s", limit.as_secs()),
            )),
        }
    }

    /// Write the queued header. Cancel-safe (it is polled inside `select!` through `next`):
    /// what was written is removed from the queue as it goes.
    async fn flush_unsent(&mut self) -> std::io::Result<()> {
        if self.unsent.is_empty() {
            return Ok(());
        }
        while !self.unsent.is_empty() {
            let n = self.io.write(self.unsent.as_bytes()).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            self.unsent.drain(..n);
        }
        self.unsent = String::new();
        self.io.flush().await
    }

    /// Send a stream error and close the stream (RFC 6120 §4.9.1.1). If our header is not out
    /// yet, it goes first, as §4.9.1.2 requires.
    pub async fn fail(&mut self, err: &StreamError, domain: &str) {
        self.send_error(err, domain).await;
        self.shutdown().await;
    }

    /// Send `err` and our closing tag, but leave the connection open: the caller still reads
    /// what the peer sends before its own close (RFC 6120 §4.4: wait for the other party to
    /// close), then calls [`Self::end`]. A client that answers an error by writing (an ack,
    /// its own close) before it reconnects elsewhere is not cut off mid-write.
    pub async fn send_error(&mut self, err: &StreamError, domain: &str) {
        if !self.header_sent {
            let _ = self.send_header(domain, None, &new_id(), true).await;
        }
        let mut s = String::with_capacity(256);
        err.to_element().write_to(&mut s, self.content_ns);
        s.push_str("</stream:stream>");
        let _ = self.send_raw(&s).await;
    }

    /// Close the connection after [`Self::send_error`] (TLS close_notify, then FIN).
    pub async fn end(&mut self) {
        self.shutdown().await;
    }

    /// Close our side of the stream.
    pub async fn close(&mut self) {
        let _ = self.send_raw("</stream:stream>").await;
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.io.shutdown()).await;
    }

    /// Upgrade to TLS (after `<proceed/>`). Fails if the peer pipelined data after `<starttls/>`
    /// (RFC 6120 §5.4.3.3: it must wait for `<proceed/>`); whitespace between top-level
    /// elements is allowed there as anywhere (go-sendxmpp sends `<starttls/>\n`).
    ///
    /// The handshake must end within `within` (the rest of the login deadline): a client that
    /// says nothing after `<proceed/>` loses its connection, not holds it.
    pub async fn upgrade_tls(
        mut self,
        config: Arc<rustls::ServerConfig>,
        limits: ParserLimits,
        within: Duration,
    ) -> Result<XmlStream, ReadError> {
        self.flush_unsent().await?;
        if !self.only_whitespace_pending() {
            return Err(ReadError::Stream(StreamError::new(
                Condition::PolicyViolation,
                "data sent before <proceed/>",
            )));
        }
        let (peer, slot, write_timeout) = (self.peer, self.slot.take(), self.write_timeout);
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = tokio::time::timeout(within, acceptor.accept(self.io))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no TLS handshake within {} s", within.as_secs()),
                )
            })??;
        let mut s = XmlStream::new(Box::new(tls), self.content_ns, limits);
        s.secure = true;
        s.peer = peer;
        s.slot = slot;
        s.write_timeout = write_timeout;
        Ok(s)
    }

    /// Client side of STARTTLS (after `<proceed/>`), for streams we initiate (s2s).
    pub async fn upgrade_tls_client(
        mut self,
        config: Arc<rustls::ClientConfig>,
        server_name: rustls_pki_types::ServerName<'static>,
        limits: ParserLimits,
    ) -> Result<XmlStream, ReadError> {
        self.flush_unsent().await?;
        if !self.only_whitespace_pending() {
            return Err(ReadError::Stream(StreamError::new(
                Condition::PolicyViolation,
                "data sent after <proceed/>",
            )));
        }
        let write_timeout = self.write_timeout;
        let connector = tokio_rustls::TlsConnector::from(config);
        let tls = connector.connect(server_name, self.io).await?;
        let mut s = XmlStream::new(Box::new(tls), self.content_ns, limits);
        s.secure = true;
        s.write_timeout = write_timeout;
        Ok(s)
    }

    /// Whether what was read but not parsed yet is nothing but XML whitespace (RFC 6120 §11.7:
    /// allowed between top-level elements), so dropping it at a TLS upgrade loses nothing.
    fn only_whitespace_pending(&self) -> bool {
        self.pending[self.pos.min(self.pending.len())..]
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
    }

    /// A TLS handshake on a fresh connection (direct TLS, XEP-0368).
    pub async fn accept_direct_tls(
        io: Box<dyn Io>,
        config: Arc<rustls::ServerConfig>,
        content_ns: &'static str,
        limits: ParserLimits,
    ) -> std::io::Result<XmlStream> {
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = acceptor.accept(io).await?;
        let mut s = XmlStream::new(Box::new(tls), content_ns, limits);
        s.secure = true;
        Ok(s)
    }
}

/// A fresh random stream / resource identifier (URL-safe, 16 random bytes).
pub fn new_id() -> String {
    use base64::Engine as _;
    let bytes: [u8; 12] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stream header check every listener does: right namespace, right version, our domain.
pub fn check_header(h: &StreamHeader, domain: &str) -> Result<(), StreamError> {
    match h.to.as_deref() {
        Some(to) if to.eq_ignore_ascii_case(domain) => {}
        Some(to) => {
            return Err(StreamError::new(
                Condition::HostUnknown,
                format!("this server serves {domain}, not {to}"),
            ));
        }
        None => {
            return Err(StreamError::new(
                Condition::HostUnknown,
                "the stream header has no 'to'",
            ));
        }
    }
    if let Some(v) = h.version.as_deref() {
        let major = v.split('.').next().and_then(|m| m.parse::<u32>().ok());
        if major != Some(1) {
            return Err(StreamError::new(
                Condition::UnsupportedVersion,
                format!("XMPP version {v} is not supported; use 1.0"),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn reads_elements_over_duplex_and_answers() {
        let (client, server) = tokio::io::duplex(64);
        let mut s = XmlStream::new(Box::new(server), ns::CLIENT, ParserLimits::PRE_AUTH);
        let writer = tokio::spawn(async move {
            let mut client = client;
            client
                .write_all(b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'><iq type='get' id='a'><ping xmlns='urn:xmpp:ping'/></iq>")
                .await
                .unwrap();
            let mut buf = vec![0u8; 4096];
            let mut got = String::new();
            while !got.contains("</stream:stream>") {
                let n = client.read(&mut buf).await.unwrap();
                if n == 0 {
                    break;
                }
                got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
            }
            got
        });
        let StreamEvent::Open(h) = s.next().await.unwrap() else {
            panic!()
        };
        check_header(&h, "localhost").unwrap();
        s.send_header("localhost", None, "id1", true).await.unwrap();
        let StreamEvent::Element(iq) = s.next().await.unwrap() else {
            panic!()
        };
        assert_eq!(iq.attr("id"), Some("a"));
        s.send(&Element::new("iq", ns::CLIENT).with_attr("type", "result"))
            .await
            .unwrap();
        s.close().await;
        let got = writer.await.unwrap();
        assert!(got.starts_with("<?xml version='1.0'?><stream:stream xmlns='jabber:client'"));
        assert!(got.contains("<iq type='result'/>"));
        assert!(got.ends_with("</stream:stream>"));
    }

    const HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

    async fn read_until(io: &mut (impl AsyncReadExt + Unpin), needle: &str) -> String {
        let mut buf = vec![0u8; 4096];
        let mut got = String::new();
        while !got.contains(needle) {
            let n = io.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before {needle:?}: {got:?}");
            got.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        got
    }

    /// Server side of STARTTLS over a duplex, the client writing `<starttls/>` and `after` in
    /// one write. On success the client opens a stream over TLS and the server reads it.
    async fn starttls_followed_by(after: &str) -> Result<(), ReadError> {
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::tls::ensure_dev_certs(dir.path(), "localhost", &[]).unwrap();
        let server_cfg = crate::tls::server_config(&certs.cert, &certs.key).unwrap();
        let client_cfg = crate::tls::client_config(&certs.ca).unwrap();
        let (mut client, server) = tokio::io::duplex(65536);
        client
            .write_all(format!("{HEADER}<starttls xmlns='{}'/>{after}", ns::TLS).as_bytes())
            .await
            .unwrap();
        let mut s = XmlStream::new(Box::new(server), ns::CLIENT, ParserLimits::PRE_AUTH);
        assert!(matches!(s.next().await.unwrap(), StreamEvent::Open(_)));
        let StreamEvent::Element(el) = s.next().await.unwrap() else {
            panic!()
        };
        assert!(el.is("starttls", ns::TLS));
        s.send(&Element::new("proceed", ns::TLS)).await.unwrap();
        read_until(&mut client, "<proceed").await;
        let client_side = tokio::spawn(async move {
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let connector = tokio_rustls::TlsConnector::from(client_cfg);
            let mut tls = connector.connect(name, client).await.unwrap();
            tls.write_all(HEADER.as_bytes()).await.unwrap();
            tls.flush().await.unwrap();
            tls
        });
        let server_side = async move {
            let mut s = s
                .upgrade_tls(server_cfg, ParserLimits::PRE_AUTH, Duration::from_secs(10))
                .await?;
            assert!(s.secure);
            assert!(matches!(s.next().await?, StreamEvent::Open(_)));
            Ok(())
        };
        let result: Result<(), ReadError> = server_side.await;
        if result.is_ok() {
            drop(client_side.await.unwrap());
        } else {
            // Refused before the handshake: the client waits for a ServerHello forever.
            client_side.abort();
        }
        result
    }

    #[tokio::test]
    async fn whitespace_after_starttls_is_allowed() {
        // go-sendxmpp writes `<starttls/>\n`: RFC 6120 §11.7 whitespace, not data.
        starttls_followed_by("\n").await.unwrap();
        starttls_followed_by(" \r\n\t ").await.unwrap();
    }

    #[tokio::test]
    async fn data_after_starttls_is_a_policy_violation() {
        // RFC 6120 §5.4.3.3: the client waits for <proceed/>.
        for after in ["<presence/>", "\n<presence/>", "\nx"] {
            match starttls_followed_by(after).await {
                Err(ReadError::Stream(e)) => {
                    assert_eq!(e.condition, Condition::PolicyViolation, "{after:?}")
                }
                other => panic!("{after:?}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn whitespace_after_proceed_is_allowed_client_side() {
        let dir = tempfile::tempdir().unwrap();
        let certs = crate::tls::ensure_dev_certs(dir.path(), "localhost", &[]).unwrap();
        let server_cfg = crate::tls::server_config(&certs.cert, &certs.key).unwrap();
        let client_cfg = crate::tls::client_config(&certs.ca).unwrap();
        let (client, mut server) = tokio::io::duplex(65536);
        let server_side = async move {
            read_until(&mut server, "<starttls").await;
            server
                .write_all(format!("{HEADER}<proceed xmlns='{}'/>\n", ns::TLS).as_bytes())
                .await
                .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(server_cfg);
            let mut tls = acceptor.accept(server).await.unwrap();
            read_until(&mut tls, "<stream:stream").await
        };
        let client_side = async move {
            let mut s = XmlStream::new(Box::new(client), ns::CLIENT, ParserLimits::PRE_AUTH);
            s.send_raw(&format!("<starttls xmlns='{}'/>", ns::TLS))
                .await
                .unwrap();
            assert!(matches!(s.next().await.unwrap(), StreamEvent::Open(_)));
            let StreamEvent::Element(el) = s.next().await.unwrap() else {
                panic!()
            };
            assert!(el.is("proceed", ns::TLS));
            let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
            let mut s = s
                .upgrade_tls_client(client_cfg, name, ParserLimits::PRE_AUTH)
                .await
                .unwrap();
            s.send_raw(HEADER).await.unwrap();
            s
        };
        let (got, _client) = tokio::join!(server_side, client_side);
        assert!(got.contains("<stream:stream"), "{got}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_never_opens_times_out() {
        let (_client, server) = tokio::io::duplex(64);
        let mut s = XmlStream::new(Box::new(server), ns::CLIENT, ParserLimits::PRE_AUTH);
        let e = s.next_within(Duration::from_secs(10)).await.unwrap_err();
        match e {
            ReadError::Stream(e) => assert_eq!(e.condition, Condition::ConnectionTimeout),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn header_checks() {
        let mut h = StreamHeader {
            to: Some("example.net".into()),
            version: Some("1.0".into()),
            ..Default::default()
        };
        assert_eq!(
            check_header(&h, "localhost").unwrap_err().condition,
            Condition::HostUnknown
        );
        h.to = Some("LOCALHOST".into());
        check_header(&h, "localhost").unwrap();
        h.version = Some("2.0".into());
        assert_eq!(
            check_header(&h, "localhost").unwrap_err().condition,
            Condition::UnsupportedVersion
        );
    }
}
