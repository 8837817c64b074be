//! The master's relay of client streams to their slave (DESIGN.md D1b), the part both roles
//! share: the handoff the master sends the slave, and the byte pump that carries the stream
//! afterwards.
//!
//! Data path of a relayed login:
//!
//! ```text
//! client ──TLS── master: stream header, STARTTLS, features, first SASL message (username)
//!                master ══relay connection══ slave: one per master and slave (crate::mux),
//!                                            a channel per client: OPEN = this Handoff
//! client ◀═════ pump (bytes, no parsing) ═════▶ channel ═▶ slave: SASL goes on, restart, bind,
//!                                                              session
//! ```
//!
//! The slave picks the stream up where the master left it (header and features already
//! sent, the handoff's first element just read) and authenticates as it does for a direct
//! client. The pump copies bytes without parsing them: one read and one write each way,
//! backpressure from the slower side (it reads no more until what it read is written), and no
//! buffer held while the stream is idle.
//!
//! Ending: the client leaves → the pump half-closes its channel to the slave; the slave ends
//! the session. The master stops → the same half-close; a slave that reads end-of-file on a
//! relayed stream answers `<system-shutdown/>`, which the pump still carries to the client.
//! The slave ends the stream → the pump closes the client's (TLS close_notify, FIN). Either
//! way the other direction gets `grace` to finish.

use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::ReadBuf;
use tokio_util::sync::CancellationToken;

use crate::farm::LINK_NS;
use crate::stream::Io;
use jabberfarm_proto::xml::Element;

/// Why the master relays a login instead of redirecting it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayReason {
    /// The listener never redirects (`redirect = "never"`).
    Never,
    /// The client came back after a redirect without logging in at its slave.
    CameBack,
    /// The user needed the relay before (`relay.remember`).
    Remembered,
}

impl RelayReason {
    pub fn name(self) -> &'static str {
        match self {
            RelayReason::Never => "never-redirect",
            RelayReason::CameBack => "came-back",
            RelayReason::Remembered => "remembered",
        }
    }
}

/// What the master tells the slave about a relayed client, in the `<relay/>` frame that
/// follows the relay handshake.
#[derive(Debug, Clone, PartialEq)]
pub struct Handoff {
    /// The client's own address (the slave logs and limits by it).
    pub client: SocketAddr,
    /// The client's connection to the master is encrypted.
    pub secure: bool,
    /// The client came in on the master's direct-TLS port.
    pub direct_tls: bool,
    /// Normalised localpart, as the master read it.
    pub user: String,
    /// The first element the slave handles: the SASL `<auth/>` with its initial response,
    /// or the `jabber:iq:auth` iq.
    pub first: Element,
}

impl Handoff {
    pub fn to_element(&self) -> Element {
        Element::new("relay", LINK_NS)
            .with_attr("client", self.client.to_string())
            .with_attr("secure", bool_attr(self.secure))
            .with_attr("direct-tls", bool_attr(self.direct_tls))
            .with_attr("user", &self.user)
            .with_child(self.first.clone())
    }

    pub fn from_element(el: &Element) -> Result<Handoff, String> {
        if !el.is("relay", LINK_NS) {
            return Err(format!("expected <relay/>, got <{}/>", el.name));
        }
        let client = el
            .attr("client")
            .and_then(|a| a.parse().ok())
            .ok_or("relay: no client address")?;
        let user = el.attr("user").ok_or("relay: no user")?.to_owned();
        let first = el.first_child().ok_or("relay: no first element")?.clone();
        Ok(Handoff {
            client,
            secure: el.attr("secure") == Some("true"),
            direct_tls: el.attr("direct-tls") == Some("true"),
            user,
            first,
        })
    }
}

fn bool_attr(b: bool) -> &'static str {
    if b { "true" } else { "false" }
}

/// How a relayed stream ended, and what it carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PumpStats {
    /// Bytes from the client to the slave (after the handoff).
    pub up: u64,
    /// Bytes from the slave to the client.
    pub down: u64,
    /// `grace` ran out before both directions finished.
    pub timed_out: bool,
}

/// One read per poll goes through this stack chunk; data that the other side does not take
/// at once moves to a heap buffer, which is freed as soon as it is written.
const CHUNK: usize = 16 * 1024;
/// Reads per direction per poll before yielding to other tasks.
const BUDGET: usize = 8;

#[derive(Default)]
struct Direction {
    /// Read but not yet written (empty, unallocated, most of the time).
    buf: Vec<u8>,
    pos: usize,
    flush: bool,
    /// The source ended (or we stopped reading it): shut the destination down.
    eof: bool,
    done: bool,
    bytes: u64,
    /// Bytes the destination took (progress, for the stall bound).
    written: u64,
}

impl Direction {
    /// Something read waits for the destination to take it.
    fn stalled(&self) -> bool {
        self.pos < self.buf.len() || self.flush
    }

    /// Copy from `from` to `to` until `from` is pending or ended. `Ready(Ok)` once `from`
    /// ended and `to` is shut down.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut (dyn Io + '_),
        to: &mut (dyn Io + '_),
    ) -> Poll<std::io::Result<()>> {
        let mut reads = 0;
        loop {
            while self.pos < self.buf.len() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.buf[self.pos..]))?;
                if n == 0 {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.written += n as u64;
                self.flush = true;
            }
            if !self.buf.is_empty() {
                self.buf = Vec::new();
                self.pos = 0;
            }
            if self.flush {
                ready!(Pin::new(&mut *to).poll_flush(cx))?;
                self.flush = false;
            }
            if self.eof {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            }
            if reads == BUDGET {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            reads += 1;
            let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
            let mut rb = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut *from).poll_read(cx, &mut rb))?;
            let data = rb.filled();
            if data.is_empty() {
                self.eof = true;
                continue;
            }
            self.bytes += data.len() as u64;
            let mut off = 0;
            while off < data.len() {
                match Pin::new(&mut *to).poll_write(cx, &data[off..]) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                    }
                    Poll::Ready(Ok(n)) => {
                        off += n;
                        self.written += n as u64;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => break,
                }
            }
            self.flush = true;
            if off < data.len() {
                // Backpressure: nothing more is read from `from` until this is written.
                self.buf = data[off..].to_vec();
                self.pos = 0;
            }
        }
    }
}

/// Carry a relayed stream between `client` and `slave` until both directions end, an error
/// ends one, or `grace` runs out after the first one ended or `stop` was cancelled. A side
/// that takes nothing of what waits for it for `write_timeout` ends the pump (`TimedOut`): a
/// client that stops reading does not hold the relay forever.
/// `client_pending`: bytes the client sent that the master read but did not parse (they go to
/// the slave first).
pub async fn pump(
    mut client: Box<dyn Io>,
    client_pending: Vec<u8>,
    mut slave: Box<dyn Io>,
    stop: CancellationToken,
    grace: Duration,
    write_timeout: Duration,
) -> std::io::Result<PumpStats> {
    let mut up = Direction {
        buf: client_pending,
        ..Default::default()
    };
    let mut down = Direction::default();
    let mut stopped = std::pin::pin!(stop.cancelled_owned());
    let mut deadline: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let mut timed_out = false;
    let mut stall: Option<Pin<Box<tokio::time::Sleep>>> = None;
    let r = std::future::poll_fn(|cx| {
        let progress = (up.written, down.written);
        if !up.eof && stopped.as_mut().poll(cx).is_ready() {
            // Stop reading the client; the slave sees the end and says <system-shutdown/>.
            up.eof = true;
        }
        if !up.done {
            match up.poll(cx, client.as_mut(), slave.as_mut()) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        if !down.done {
            match down.poll(cx, slave.as_mut(), client.as_mut()) {
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) | Poll::Pending => {}
            }
        }
        if up.done && down.done {
            return Poll::Ready(Ok(()));
        }
        if up.stalled() || down.stalled() {
            if stall.is_none() || progress != (up.written, down.written) {
                stall = Some(Box::pin(tokio::time::sleep(write_timeout)));
            }
            if let Some(t) = stall.as_mut()
                && t.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("a side took nothing for {} s", write_timeout.as_secs()),
                )));
            }
        } else {
            stall = None;
        }
        if up.eof || down.eof {
            let d = deadline.get_or_insert_with(|| Box::pin(tokio::time::sleep(grace)));
            if d.as_mut().poll(cx).is_ready() {
                timed_out = true;
                return Poll::Ready(Ok(()));
            }
        }
        Poll::Pending
    })
    .await;
    let stats = PumpStats {
        up: up.bytes,
        down: down.bytes,
        timed_out,
    };
    r.map(|()| stats)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use jabberfarm_proto::ns;
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

    /// Reads that never end, writes that always succeed.
    struct Silent;

    impl AsyncRead for Silent {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Silent {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn handoff_round_trips_through_a_frame_element() {
        let h = Handoff {
            client: "[2001:db8::7]:40000".parse().unwrap(),
            secure: true,
            direct_tls: false,
            user: "alice".into(),
            first: Element::new("auth", ns::SASL)
                .with_attr("mechanism", "SCRAM-SHA-1")
                .with_text("biwsbj1hbGljZSxyPWFiYw=="),
        };
        let el = h.to_element();
        assert_eq!(Handoff::from_element(&el).unwrap(), h);
        assert!(Handoff::from_element(&Element::new("relay", LINK_NS)).is_err());
    }

    #[tokio::test]
    async fn pump_carries_both_ways_pending_bytes_first_and_ends_with_the_client() {
        let (client, client_far) = tokio::io::duplex(64);
        let (slave, slave_far) = tokio::io::duplex(64);
        let p = tokio::spawn(pump(
            Box::new(client_far),
            b"<response/>".to_vec(),
            Box::new(slave_far),
            CancellationToken::new(),
            Duration::from_secs(5),
            Duration::from_secs(60),
        ));
        let (mut client, mut slave) = (client, slave);
        // More than both pipes hold: backpressure, not loss.
        let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let b2 = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&b2).await.unwrap();
            let mut back = vec![0u8; 5];
            client.read_exact(&mut back).await.unwrap();
            assert_eq!(&back, b"hello");
            client.shutdown().await.unwrap();
            // The slave's last words still arrive after the client stopped sending.
            let mut rest = Vec::new();
            client.read_to_end(&mut rest).await.unwrap();
            rest
        });
        let mut got = vec![0u8; 11 + big.len()];
        slave.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..11], b"<response/>");
        assert_eq!(&got[11..], &big[..]);
        slave.write_all(b"hello").await.unwrap();
        // The client's end reaches the slave as end-of-file.
        let mut tail = Vec::new();
        slave.read_to_end(&mut tail).await.unwrap();
        assert!(tail.is_empty());
        slave.write_all(b"</stream:stream>").await.unwrap();
        slave.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"</stream:stream>");
        let stats = p.await.unwrap().unwrap();
        assert_eq!(stats.up, big.len() as u64);
        assert_eq!(stats.down, 5 + 16);
        assert!(!stats.timed_out);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_ends_the_relay_after_the_write_timeout() {
        let (client, client_far) = tokio::io::duplex(64);
        let (slave, slave_far) = tokio::io::duplex(64);
        let p = tokio::spawn(pump(
            Box::new(client_far),
            Vec::new(),
            Box::new(slave_far),
            CancellationToken::new(),
            Duration::from_secs(3),
            Duration::from_secs(30),
        ));
        // The slave writes more than the pipes hold; the client never reads.
        let mut slave = slave;
        let _client = client;
        let _ = slave.write_all(&[b'x'; 1000]).await;
        let e = p.await.unwrap().unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn stop_half_closes_the_slave_side_and_waits_at_most_grace() {
        let (slave, slave_far) = tokio::io::duplex(64);
        let stop = CancellationToken::new();
        let p = tokio::spawn(pump(
            Box::new(Silent),
            Vec::new(),
            Box::new(slave_far),
            stop.clone(),
            Duration::from_secs(3),
            Duration::from_secs(60),
        ));
        let mut slave = slave;
        stop.cancel();
        let mut buf = Vec::new();
        slave.read_to_end(&mut buf).await.unwrap();
        // The slave never answers: the pump gives up after the grace.
        let stats = p.await.unwrap().unwrap();
        assert!(stats.timed_out);
    }
}
