//! A raw XMPP client for tests: a blocking socket (plain, or TLS after STARTTLS), exact wire
//! text out, everything received kept as text to search. No parsing: tests assert what is on
//! the wire, as a packet capture would show it.
//!
//! Waits read until what they look for arrives after the cursor (just after the previous
//! match), or panic with what did arrive: a test that waits can fail, it never hangs.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;

/// A client stream header for `localhost`, the test farms' domain.
pub const HEADER: &str = "<?xml version='1.0'?><stream:stream to='localhost' version='1.0' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>";

/// How long one read waits before a wait checks its deadline again.
const POLL: Duration = Duration::from_millis(100);

enum Io {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
    /// Only while STARTTLS swaps the socket.
    Gone,
}

pub struct Raw {
    io: Io,
    /// Everything received so far.
    pub got: String,
    /// Where the next wait starts looking: just after the last match.
    pub pos: usize,
}

impl Raw {
    pub fn connect(addr: SocketAddr) -> Raw {
        let sock =
            TcpStream::connect(addr).unwrap_or_else(|e| panic!("cannot connect to {addr}: {e}"));
        Raw::from_stream(sock)
    }

    /// A client on a connection made elsewhere (another network namespace, say).
    pub fn from_stream(sock: TcpStream) -> Raw {
        set_timeout(&sock, POLL);
        Raw {
            io: Io::Plain(sock),
            got: String::new(),
            pos: 0,
        }
    }

    /// The TCP socket under a plain stream, for what a test does below XMPP (timeouts, raw
    /// reads, shutdown). Panics after STARTTLS.
    pub fn tcp(&self) -> &TcpStream {
        match &self.io {
            Io::Plain(s) => s,
            _ => panic!("the stream is under TLS"),
        }
    }

    pub fn send(&mut self, data: &str) {
        self.send_bytes(data.as_bytes());
    }

    pub fn send_bytes(&mut self, data: &[u8]) {
        let sent = match &mut self.io {
            Io::Plain(s) => s.write_all(data),
            Io::Tls(s) => s.write_all(data),
            Io::Gone => unreachable!("STARTTLS in progress"),
        };
        sent.unwrap_or_else(|e| panic!("send failed: {e}"));
    }

    /// Read until `needle` appears after the previous match (text that arrived earlier but
    /// was not matched yet counts), or panic after `secs`. Returns everything received from
    /// the previous match on, and moves the cursor past this match.
    pub fn wait_for(&mut self, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let start = self.pos;
        loop {
            if let Some(i) = self.got[start..].find(needle) {
                self.pos = start + i + needle.len();
                return self.got[start..].to_owned();
            }
            if self.read_some() == Some(0) {
                assert!(
                    self.got[start..].contains(needle),
                    "connection closed before {needle:?}; got {:?}",
                    &self.got[start..]
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {needle:?}; got {:?}",
                &self.got[start..]
            );
        }
    }

    /// Read until `done` holds for the text after the cursor (or the stream ends, or `secs`
    /// pass: then it panics); returns that text and moves the cursor past all of it.
    pub fn wait_until(&mut self, what: &str, secs: u64, done: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let text = &self.got[self.pos..];
            if done(text) {
                let text = text.to_owned();
                self.pos = self.got.len();
                return text;
            }
            let eof = self.read_some() == Some(0);
            assert!(
                !eof || done(&self.got[self.pos..]),
                "connection closed while waiting for {what}; got {:?}",
                &self.got[self.pos..]
            );
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; got {:?}",
                &self.got[self.pos..]
            );
        }
    }

    /// Everything up to the end of the `<iq/>` with this id.
    pub fn wait_iq(&mut self, id: &str) -> String {
        let needle = format!("id='{id}'");
        self.wait_until(&needle.clone(), 10, |t| {
            t.find(&needle).is_some_and(|i| {
                let tag_end = t[i..].find('>').map(|e| i + e);
                // `<iq … id='x'/>`, or `<iq … id='x'>…</iq>`.
                tag_end.is_some_and(|e| t[..e].ends_with('/') || t[e..].contains("</iq>"))
            })
        })
    }

    /// The outcome of a SASL exchange: `<success…>` or `<failure…>…</failure>` (or a stream
    /// error that ended the stream).
    pub fn wait_sasl_result(&mut self, secs: u64) -> String {
        self.wait_until("a SASL outcome", secs, |t| {
            t.contains("</failure>")
                || t.contains("</stream:stream>")
                || t.find("<success")
                    .is_some_and(|i| t[i..].contains("/>") || t[i..].contains("</success>"))
        })
    }

    /// A barrier instead of a sleep: pings `to` and waits for the answer. A session handles
    /// its client's stanzas in order, and a slave one user's stanzas in order, so what this
    /// client sent before — to `to`'s owner, or to its own server with `to = "localhost"` —
    /// has been handled when this returns. What arrived meanwhile stays to be matched.
    pub fn sync(&mut self, to: &str) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let id = format!(
            "sync-{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        self.send(&format!(
            "<iq type='get' id='{id}' to='{to}'><ping xmlns='urn:xmpp:ping'/></iq>"
        ));
        let pos = self.pos;
        self.wait_for(&format!("id='{id}'"), 10);
        self.pos = pos;
    }

    /// Read until `needle` arrives or the server closes (at most `secs`); returns all text.
    pub fn wait_closed_or(&mut self, needle: &str, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while !self.got.contains(needle) && self.read_some() != Some(0) {
            assert!(
                Instant::now() < deadline,
                "neither {needle:?} nor a close: {:?}",
                self.got
            );
        }
        self.got.clone()
    }

    /// Wait until the server closes the connection; returns all received text.
    pub fn wait_closed(&mut self, secs: u64) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while self.read_some() != Some(0) {
            assert!(
                Instant::now() < deadline,
                "server did not close; got {:?}",
                self.got
            );
        }
        self.got.clone()
    }

    /// Opens (or restarts) the stream to `localhost`; returns the features.
    pub fn open(&mut self) -> String {
        self.open_at("localhost")
    }

    /// Opens (or restarts) the stream to `domain`; returns the features.
    pub fn open_at(&mut self, domain: &str) -> String {
        self.send(&HEADER.replace("to='localhost'", &format!("to='{domain}'")));
        self.wait_for("</stream:features>", 10)
    }

    /// STARTTLS, trusting the farm's CA (`ca`) for `localhost`; returns the new features.
    pub fn starttls(&mut self, ca: &Path) -> String {
        self.send("<starttls xmlns='urn:ietf:params:xml:ns:xmpp-tls'/>");
        self.wait_until("<proceed/>", 10, |t| {
            t.find("<proceed").is_some_and(|i| t[i..].contains('>'))
        });
        let Io::Plain(mut sock) = std::mem::replace(&mut self.io, Io::Gone) else {
            panic!("STARTTLS twice");
        };
        let config = jabberfarm_net::tls::client_config(ca)
            .unwrap_or_else(|e| panic!("the farm's CA {}: {e}", ca.display()));
        let name =
            rustls::pki_types::ServerName::try_from("localhost").unwrap_or_else(|e| panic!("{e}"));
        let mut conn = rustls::ClientConnection::new(config, name)
            .unwrap_or_else(|e| panic!("TLS client: {e}"));
        set_timeout(&sock, Duration::from_secs(10));
        while conn.is_handshaking() {
            conn.complete_io(&mut sock)
                .unwrap_or_else(|e| panic!("TLS handshake: {e}"));
        }
        set_timeout(&sock, POLL);
        self.io = Io::Tls(Box::new(rustls::StreamOwned::new(conn, sock)));
        self.got.clear();
        self.pos = 0;
        self.open()
    }

    /// Restart after `<success/>` and bind `resource` for `user@localhost`.
    pub fn bind(&mut self, user: &str, resource: &str) {
        self.bind_at("localhost", user, resource);
    }

    /// Restart after `<success/>` and bind `resource` for `user@domain`.
    pub fn bind_at(&mut self, domain: &str, user: &str, resource: &str) {
        self.open_at(domain);
        self.send(&format!(
            "<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>\
             <resource>{resource}</resource></bind></iq>"
        ));
        let r = self.wait_for("</iq>", 10);
        assert!(
            r.contains(&format!("<jid>{user}@{domain}/{resource}</jid>")),
            "{r}"
        );
    }

    /// Open the stream and log in with SASL PLAIN, bind `resource`; panics on failure.
    pub fn login(addr: SocketAddr, user: &str, password: &str, resource: &str) -> Raw {
        Raw::login_at(addr, "localhost", user, password, resource)
    }

    /// [`Raw::login`] for a server of another domain.
    pub fn login_at(
        addr: SocketAddr,
        domain: &str,
        user: &str,
        password: &str,
        resource: &str,
    ) -> Raw {
        Raw::login_over(Raw::connect(addr), domain, user, password, resource)
    }

    /// [`Raw::login_at`] on the connection `c` is.
    pub fn login_over(mut c: Raw, domain: &str, user: &str, password: &str, resource: &str) -> Raw {
        c.open_at(domain);
        c.send(&plain_auth(user, password));
        let r = c.wait_for("urn:ietf:params:xml:ns:xmpp-sasl", 10);
        assert!(r.contains("<success"), "login of {user} failed: {r}");
        c.bind_at(domain, user, resource);
        c
    }

    /// Read what arrives; `Some(0)` at the end of the stream, `None` when nothing came in
    /// one poll.
    fn read_some(&mut self) -> Option<usize> {
        let mut buf = [0u8; 8192];
        let r = match &mut self.io {
            Io::Plain(s) => s.read(&mut buf),
            Io::Tls(s) => s.read(&mut buf),
            Io::Gone => unreachable!("STARTTLS in progress"),
        };
        match r {
            Ok(n) => {
                self.got.push_str(&String::from_utf8_lossy(&buf[..n]));
                Some(n)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                Some(0)
            }
            Err(_) => None,
        }
    }
}

fn set_timeout(sock: &TcpStream, t: Duration) {
    sock.set_read_timeout(Some(t))
        .unwrap_or_else(|e| panic!("set_read_timeout: {e}"));
}

/// `<auth mechanism='PLAIN'>` for `user` and `password`.
pub fn plain_auth(user: &str, password: &str) -> String {
    let p = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    format!("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{p}</auth>")
}
