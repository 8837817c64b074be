//! Relayed client streams multiplexed over one connection from a master to a slave
//! (DESIGN.md D1b).
//!
//! A master keeps one relay connection to each slave (opened on its first relayed client,
//! authenticated like a farm link with `purpose='relay'`), and every client it relays there
//! is a channel of it. Each channel is an [`Io`] at both ends ([`MuxStream`]): the master's
//! pump copies a client's bytes into it, the slave serves it as it serves any client stream.
//!
//! Why: with a connection per relayed client, every crossing of the master was one read and
//! one write of its own; here the writes of all channels go out together (one `write` per
//! batch under load) and one `read` brings in what many channels sent. It also halves the
//! master's file descriptors per relayed client (one, the client's).
//!
//! Frames, after the link handshake: a 9-byte header — payload length (u32, big-endian),
//! channel (u32), kind (u8) — then the payload.
//!
//! | kind | payload | |
//! |---|---|---|
//! | `OPEN` | the [`crate::relay::Handoff`] element | master → slave: a new client |
//! | `DATA` | stream bytes, at most [`MAX_DATA`] | both ways, within the receiver's credit |
//! | `CREDIT` | u32: bytes the receiver took | both ways: the sender may send that much more |
//! | `END` | – | the sender sends no more on this channel (a half-close) |
//! | `RESET` | – | the sender's end is gone: no more either way |
//! | `PING` | – | channel 0, when nothing else was written for `farm.heartbeat` |
//!
//! **Bounded**: each direction of a channel has a window of [`WINDOW`] bytes; the sender
//! stops when it is used up and the receiver gives it back as it reads (so one slow client
//! holds at most a window at each end, and never slows the others). The bytes waiting for the
//! connection are capped ([`OUT_HIGH`]): past it, writers wait. A frame beyond its kind's
//! size, data beyond the window, or an `OPEN` the receiver does not take ends the connection.
//! A connection that hears nothing for `farm.dead_after` is dead.
//!
//! **Ending**: the connection's end ends every channel (reads end, writes fail), as a closed
//! socket did for a connection per client; the master opens a new connection for the next
//! relayed client. A node that stops closes the connection once its channels are gone.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::stream::Io;

/// Bytes a channel's sender may have in flight in each direction.
pub const WINDOW: usize = 64 * 1024;
/// Largest `DATA` payload.
pub const MAX_DATA: usize = 16 * 1024;
/// Bytes waiting for the connection beyond which channels wait to write.
pub const OUT_HIGH: usize = 1 << 20;
const HEADER: usize = 9;
/// A receiver gives credit back once it has read this much.
const CREDIT_AT: usize = WINDOW / 4;
/// Read this much from the connection at once.
const READ_CHUNK: usize = 64 * 1024;

const OPEN: u8 = 1;
const DATA: u8 = 2;
const CREDIT: u8 = 3;
const END: u8 = 4;
const RESET: u8 = 5;
const PING: u8 = 6;

fn frame(buf: &mut Vec<u8>, chan: u32, kind: u8, payload: &[u8]) {
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    buf.extend_from_slice(&len.to_be_bytes());
    buf.extend_from_slice(&chan.to_be_bytes());
    buf.push(kind);
    buf.extend_from_slice(payload);
}

/// Which end of the connection this is: the master opens channels, the slave takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Opener,
    Taker,
}

/// The connection's timing (the farm links' own).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Write a `PING` when nothing else was written for this long.
    pub heartbeat: Duration,
    /// The connection is dead when nothing was read for this long.
    pub dead_after: Duration,
}

#[derive(Default)]
struct Out {
    buf: Vec<u8>,
    /// Channels waiting for `buf` to go below [`OUT_HIGH`].
    room: Vec<Waker>,
}

struct Shared {
    end: End,
    out: Mutex<Out>,
    /// Wakes the writer: something to write, or a channel went (it may be time to close).
    wake_writer: Notify,
    chans: Mutex<HashMap<u32, Arc<Chan>>>,
    next: AtomicU32,
    /// Cancelled when the connection is gone (either task ended it).
    closed: CancellationToken,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Queue a frame; wakes the writer if it was idle.
    fn push(&self, chan: u32, kind: u8, payload: &[u8]) {
        let was_empty = {
            let mut out = lock(&self.out);
            let e = out.buf.is_empty();
            frame(&mut out.buf, chan, kind, payload);
            e
        };
        if was_empty {
            self.wake_writer.notify_one();
        }
    }

    /// The connection is gone: every channel's reads end and writes fail.
    fn kill(&self) {
        self.closed.cancel();
        let chans: Vec<Arc<Chan>> = lock(&self.chans).drain().map(|(_, c)| c).collect();
        for c in chans {
            c.reset();
        }
        let room = std::mem::take(&mut lock(&self.out).room);
        room.into_iter().for_each(Waker::wake);
        self.wake_writer.notify_one();
    }

    /// A new channel: `id` (the taker's end, from an `OPEN`; `None` if it is in use), or the
    /// next free number (the opener's end: numbers wrap after 2³² channels, and skip 0 and
    /// the channels still open).
    fn add(self: &Arc<Self>, id: Option<u32>) -> Option<MuxStream> {
        let mut chans = lock(&self.chans);
        let id = match id {
            Some(id) if chans.contains_key(&id) => return None,
            Some(id) => id,
            None => loop {
                let id = self.next.fetch_add(1, Ordering::Relaxed);
                if id != 0 && !chans.contains_key(&id) {
                    break id;
                }
            },
        };
        let chan = Arc::new(Chan {
            id,
            st: Mutex::new(ChanState {
                credit: WINDOW,
                granted: WINDOW,
                ..Default::default()
            }),
        });
        chans.insert(id, chan.clone());
        Some(MuxStream {
            shared: self.clone(),
            chan,
        })
    }

    fn chan(&self, id: u32) -> Option<Arc<Chan>> {
        lock(&self.chans).get(&id).cloned()
    }
}

struct Chan {
    id: u32,
    st: Mutex<ChanState>,
}

#[derive(Default)]
struct ChanState {
    /// Received, not read yet (unallocated while idle).
    inbound: Vec<u8>,
    pos: usize,
    /// The peer sent `END` (or the channel is reset): reads end once `inbound` is read.
    ended: bool,
    /// The peer's end is gone, or the connection: writes fail.
    reset: bool,
    reader: Option<Waker>,
    /// Bytes we may still send.
    credit: usize,
    writer: Option<Waker>,
    /// Bytes the peer may still send us.
    granted: usize,
    /// Bytes read and not yet given back as credit.
    unacked: usize,
    /// We sent `END`.
    shut: bool,
}

impl Chan {
    fn st(&self) -> std::sync::MutexGuard<'_, ChanState> {
        lock(&self.st)
    }

    fn reset(&self) {
        let (r, w) = {
            let mut st = self.st();
            st.ended = true;
            st.reset = true;
            (st.reader.take(), st.writer.take())
        };
        r.into_iter().chain(w).for_each(Waker::wake);
    }
}

/// One relayed client's stream over the shared connection.
pub struct MuxStream {
    shared: Arc<Shared>,
    chan: Arc<Chan>,
}

impl std::fmt::Debug for MuxStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MuxStream({})", self.chan.id)
    }
}

impl AsyncRead for MuxStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let mut st = self.chan.st();
        let avail = st.inbound.len() - st.pos;
        if avail == 0 {
            if st.ended {
                return Poll::Ready(Ok(()));
            }
            st.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = avail.min(buf.remaining());
        buf.put_slice(&st.inbound[st.pos..st.pos + n]);
        st.pos += n;
        if st.pos == st.inbound.len() {
            // Nothing held while the stream is idle.
            st.inbound = Vec::new();
            st.pos = 0;
        }
        st.unacked += n;
        if st.unacked >= CREDIT_AT && !st.reset {
            let back = std::mem::take(&mut st.unacked);
            st.granted += back;
            drop(st);
            let n = u32::try_from(back).unwrap_or(u32::MAX);
            self.shared.push(self.chan.id, CREDIT, &n.to_be_bytes());
        }
        Poll::Ready(Ok(()))
    }
}

fn broken(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, what.to_owned())
}

impl AsyncWrite for MuxStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let mut st = self.chan.st();
        if st.reset {
            return Poll::Ready(Err(broken("the relayed stream's other end is gone")));
        }
        if st.shut {
            return Poll::Ready(Err(broken("write after shutdown")));
        }
        if st.credit == 0 {
            st.writer = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(st.credit).min(MAX_DATA);
        let was_empty = {
            let mut out = lock(&self.shared.out);
            if out.buf.len() >= OUT_HIGH {
                if !out.room.iter().any(|w| w.will_wake(cx.waker())) {
                    out.room.push(cx.waker().clone());
                }
                return Poll::Pending;
            }
            let e = out.buf.is_empty();
            frame(&mut out.buf, self.chan.id, DATA, &buf[..n]);
            e
        };
        st.credit -= n;
        drop(st);
        if was_empty {
            self.shared.wake_writer.notify_one();
        }
        Poll::Ready(Ok(n))
    }

    /// Written frames go out as soon as the connection takes them.
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut st = self.chan.st();
        if !st.shut && !st.reset {
            st.shut = true;
            drop(st);
            self.shared.push(self.chan.id, END, &[]);
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for MuxStream {
    fn drop(&mut self) {
        lock(&self.shared.chans).remove(&self.chan.id);
        if !self.chan.st().reset {
            self.shared.push(self.chan.id, RESET, &[]);
        } else {
            // The writer may be waiting for the last channel to go.
            self.shared.wake_writer.notify_one();
        }
    }
}

/// One end of a relay connection.
#[derive(Clone)]
pub struct Mux {
    shared: Arc<Shared>,
}

impl Mux {
    /// The opener's end (a master) of the connection `io`, its handshake done: channels come
    /// from [`Self::open`]. The writer runs on a task of its own; the returned future reads
    /// (run it, or spawn it) and ends when the connection does. Once `stop` is cancelled, the
    /// connection closes when its last channel is gone.
    pub fn opener(
        io: Box<dyn Io>,
        timing: Timing,
        stop: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
    ) -> (
        Mux,
        impl std::future::Future<Output = Result<(), String>> + Send + 'static,
    ) {
        let refuse = |_, _: &[u8]| Err("the other end opened a channel".to_owned());
        Self::start(io, End::Opener, timing, stop, tracker, 0, refuse)
    }

    /// The taker's end (a slave): [`Self::opener`], but the reader calls `on_open` with each
    /// channel the other end opens and its `OPEN` payload (at most `max_open` bytes).
    pub fn taker(
        io: Box<dyn Io>,
        timing: Timing,
        stop: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
        max_open: usize,
        on_open: impl FnMut(MuxStream, &[u8]) -> Result<(), String> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send + 'static {
        Self::start(io, End::Taker, timing, stop, tracker, max_open, on_open).1
    }

    fn start(
        io: Box<dyn Io>,
        end: End,
        timing: Timing,
        stop: CancellationToken,
        tracker: &tokio_util::task::TaskTracker,
        max_open: usize,
        mut on_open: impl FnMut(MuxStream, &[u8]) -> Result<(), String> + Send + 'static,
    ) -> (
        Mux,
        impl std::future::Future<Output = Result<(), String>> + Send + 'static,
    ) {
        let shared = Arc::new(Shared {
            end,
            out: Mutex::new(Out::default()),
            wake_writer: Notify::new(),
            chans: Mutex::new(HashMap::new()),
            next: AtomicU32::new(1),
            closed: CancellationToken::new(),
        });
        let (rd, wr) = tokio::io::split(io);
        let s = shared.clone();
        tracker.spawn(async move {
            let r = write_loop(&s, wr, timing.heartbeat, stop).await;
            if let Err(e) = r {
                tracing::debug!("relay connection: {e}");
            }
            s.kill();
        });
        let s = shared.clone();
        let reader = async move {
            let r = tokio::select! {
                r = read_loop(&s, rd, timing.dead_after, max_open, &mut on_open) => r,
                _ = s.closed.cancelled() => Ok(()),
            };
            s.kill();
            r
        };
        (Mux { shared }, reader)
    }

    /// A new channel with its `OPEN` payload (the opener's end), or `None` if the
    /// connection is gone.
    pub fn open(&self, payload: &[u8]) -> Option<MuxStream> {
        if self.is_closed() || self.shared.end != End::Opener {
            return None;
        }
        let s = self.shared.add(None)?;
        self.shared.push(s.chan.id, OPEN, payload);
        // The connection may have gone in between: the channel then reads as ended.
        if self.is_closed() {
            s.chan.reset();
        }
        Some(s)
    }

    pub fn is_closed(&self) -> bool {
        self.shared.closed.is_cancelled()
    }

    /// Channels open now.
    pub fn channels(&self) -> usize {
        lock(&self.shared.chans).len()
    }
}

async fn write_loop(
    shared: &Shared,
    mut wr: tokio::io::WriteHalf<Box<dyn Io>>,
    heartbeat: Duration,
    stop: CancellationToken,
) -> Result<(), String> {
    let mut batch = Vec::new();
    let mut stopping = false;
    loop {
        {
            let mut out = lock(&shared.out);
            std::mem::swap(&mut out.buf, &mut batch);
            std::mem::take(&mut out.room)
                .into_iter()
                .for_each(Waker::wake);
        }
        if batch.is_empty() {
            if shared.closed.is_cancelled() {
                break;
            }
            stopping = stopping || stop.is_cancelled();
            if stopping && lock(&shared.chans).is_empty() {
                break;
            }
            tokio::select! {
                _ = shared.wake_writer.notified() => {}
                _ = tokio::time::sleep(heartbeat) => shared.push(0, PING, &[]),
                _ = stop.cancelled(), if !stopping => {}
                _ = shared.closed.cancelled() => break,
            }
            // Let the other tasks that are ready run first: what they write joins this
            // batch (one write for many channels under load; at rest, one more poll).
            tokio::task::yield_now().await;
            continue;
        }
        wr.write_all(&batch).await.map_err(|e| e.to_string())?;
        wr.flush().await.map_err(|e| e.to_string())?;
        batch.clear();
        if batch.capacity() > 4 * READ_CHUNK {
            batch = Vec::new();
        }
    }
    let _ = wr.shutdown().await;
    Ok(())
}

async fn read_loop(
    shared: &Arc<Shared>,
    mut rd: tokio::io::ReadHalf<Box<dyn Io>>,
    dead_after: Duration,
    max_open: usize,
    on_open: &mut (impl FnMut(MuxStream, &[u8]) -> Result<(), String> + Send),
) -> Result<(), String> {
    let mut buf: Vec<u8> = Vec::new();
    let mut start = 0;
    loop {
        // Parse every whole frame read so far.
        while buf.len() - start >= HEADER {
            let h = &buf[start..start + HEADER];
            let len = u32::from_be_bytes([h[0], h[1], h[2], h[3]]) as usize;
            let id = u32::from_be_bytes([h[4], h[5], h[6], h[7]]);
            let kind = h[8];
            let max = match kind {
                OPEN => max_open,
                DATA => MAX_DATA,
                CREDIT => 4,
                END | RESET | PING => 0,
                k => return Err(format!("unknown frame kind {k}")),
            };
            if len > max {
                return Err(format!(
                    "frame of kind {kind} with {len} bytes (at most {max})"
                ));
            }
            if buf.len() - start < HEADER + len {
                // Room for the whole frame, at once.
                buf.reserve(HEADER + len);
                break;
            }
            let payload = &buf[start + HEADER..start + HEADER + len];
            dispatch(shared, id, kind, payload, on_open)?;
            start += HEADER + len;
        }
        if start == buf.len() {
            buf.clear();
            start = 0;
            if buf.capacity() > 4 * READ_CHUNK {
                buf = Vec::new();
            }
        } else if start > 0 {
            buf.drain(..start);
            start = 0;
        }
        buf.reserve(READ_CHUNK);
        match tokio::time::timeout(dead_after, rd.read_buf(&mut buf)).await {
            Ok(Ok(0)) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err(format!("silent for {} s", dead_after.as_secs())),
        }
    }
}

fn dispatch(
    shared: &Arc<Shared>,
    id: u32,
    kind: u8,
    payload: &[u8],
    on_open: &mut (impl FnMut(MuxStream, &[u8]) -> Result<(), String> + Send),
) -> Result<(), String> {
    if kind == PING {
        return Ok(());
    }
    if kind == OPEN {
        let taken = (shared.end == End::Taker && id != 0)
            .then(|| shared.add(Some(id)))
            .flatten();
        let Some(s) = taken else {
            return Err(format!("unexpected OPEN of channel {id}"));
        };
        return on_open(s, payload);
    }
    // A channel we dropped already: what was on its way is dropped too.
    let Some(chan) = shared.chan(id) else {
        return Ok(());
    };
    match kind {
        DATA => {
            let w = {
                let mut st = chan.st();
                if payload.len() > st.granted {
                    return Err(format!("channel {id} sent beyond its window"));
                }
                st.granted -= payload.len();
                st.inbound.extend_from_slice(payload);
                st.reader.take()
            };
            w.into_iter().for_each(Waker::wake);
        }
        CREDIT => {
            let n = u32::from_be_bytes(payload.try_into().map_err(|_| "short CREDIT")?) as usize;
            let w = {
                let mut st = chan.st();
                st.credit = st.credit.saturating_add(n).min(WINDOW);
                st.writer.take()
            };
            w.into_iter().for_each(Waker::wake);
        }
        END => {
            let w = {
                let mut st = chan.st();
                st.ended = true;
                st.reader.take()
            };
            w.into_iter().for_each(Waker::wake);
        }
        _ => {
            // RESET: the peer's end is gone.
            lock(&shared.chans).remove(&id);
            chan.reset();
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio_util::task::TaskTracker;

    const TIMING: Timing = Timing {
        heartbeat: Duration::from_secs(5),
        dead_after: Duration::from_secs(15),
    };

    /// An opener and a taker over an in-memory pipe; the taker's channels arrive on the
    /// receiver with their `OPEN` payloads.
    fn pair(stop: &CancellationToken) -> (Mux, mpsc::UnboundedReceiver<(MuxStream, Vec<u8>)>) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let tracker = TaskTracker::new();
        let (tx, rx) = mpsc::unbounded_channel();
        let (opener, r1) = Mux::opener(Box::new(a), TIMING, stop.clone(), &tracker);
        let r2 = Mux::taker(
            Box::new(b),
            TIMING,
            stop.clone(),
            &tracker,
            4096,
            move |s, p| {
                tx.send((s, p.to_vec())).map_err(|e| e.to_string())?;
                Ok(())
            },
        );
        tokio::spawn(r1);
        tokio::spawn(r2);
        (opener, rx)
    }

    #[tokio::test]
    async fn channels_carry_both_ways_and_end_like_a_socket() {
        let stop = CancellationToken::new();
        let (mux, mut taken) = pair(&stop);
        let mut a = mux.open(b"<relay user='a'/>").unwrap();
        let mut b = mux.open(b"<relay user='b'/>").unwrap();
        let (mut ta, pa) = taken.recv().await.unwrap();
        let (mut tb, pb) = taken.recv().await.unwrap();
        assert_eq!(
            (&pa[..], &pb[..]),
            (&b"<relay user='a'/>"[..], &b"<relay user='b'/>"[..])
        );
        assert_eq!(mux.channels(), 2);

        // More than a window each way, on two channels at once: nothing lost or mixed.
        let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (b1, b2) = (big.clone(), big.clone());
        let w = tokio::spawn(async move {
            a.write_all(&b1).await.unwrap();
            a
        });
        let w2 = tokio::spawn(async move {
            tb.write_all(&b2).await.unwrap();
            tb
        });
        let mut got = vec![0u8; big.len()];
        ta.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        let (mut a, tb) = (w.await.unwrap(), w2.await.unwrap());

        // A half-close: the other end reads its end, and can still answer.
        a.shutdown().await.unwrap();
        let mut rest = Vec::new();
        ta.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
        ta.write_all(b"</stream:stream>").await.unwrap();
        drop(ta);
        a.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"</stream:stream>");
        // Dropped at one end: the other's writes fail, its reads end.
        drop(tb);
        let mut buf = [0u8; 8];
        assert_eq!(b.read(&mut buf).await.unwrap(), 0);
        assert!(b.write_all(b"x").await.is_err());
        drop((a, b));
        tokio::time::timeout(Duration::from_secs(5), async {
            while mux.channels() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        // Stopping closes the connection once no channel is left.
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), async {
            while !mux.is_closed() {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .unwrap();
        assert!(mux.open(b"late").is_none());
    }

    #[tokio::test]
    async fn channel_numbers_wrap_around_the_ones_still_open() {
        let stop = CancellationToken::new();
        let (mux, mut taken) = pair(&stop);
        let mut first = mux.open(b"1").unwrap();
        let (mut first_far, _) = taken.recv().await.unwrap();
        mux.shared.next.store(u32::MAX, Ordering::Relaxed);
        let last = mux.open(b"max").unwrap();
        // 0 is skipped, and so is 1, still open.
        let mut wrapped = mux.open(b"wrapped").unwrap();
        assert_eq!(
            (first.chan.id, last.chan.id, wrapped.chan.id),
            (1, u32::MAX, 2)
        );
        let (_, p) = taken.recv().await.unwrap();
        assert_eq!(p, b"max");
        let (mut wrapped_far, p) = taken.recv().await.unwrap();
        assert_eq!(p, b"wrapped");
        first.write_all(b"one").await.unwrap();
        wrapped.write_all(b"two").await.unwrap();
        let mut b = [0u8; 3];
        first_far.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"one");
        wrapped_far.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"two");
    }

    #[tokio::test]
    async fn a_channel_nobody_reads_holds_one_window_and_does_not_stop_the_others() {
        let stop = CancellationToken::new();
        let (mux, mut taken) = pair(&stop);
        let mut slow = mux.open(b"slow").unwrap();
        let mut fast = mux.open(b"fast").unwrap();
        let (mut slow_far, _) = taken.recv().await.unwrap();
        let (mut fast_far, _) = taken.recv().await.unwrap();
        // The slow channel's sender is held once it sent a window.
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let s2 = sent.clone();
        let writer = tokio::spawn(async move {
            let chunk = [7u8; 4096];
            loop {
                slow.write_all(&chunk).await.unwrap();
                s2.fetch_add(chunk.len(), Ordering::Relaxed);
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sent.load(Ordering::Relaxed), WINDOW);
        // Meanwhile another channel goes on.
        for i in 0..100u32 {
            fast.write_all(&i.to_be_bytes()).await.unwrap();
            let mut b = [0u8; 4];
            fast_far.read_exact(&mut b).await.unwrap();
            assert_eq!(u32::from_be_bytes(b), i);
        }
        // Reading the slow one lets its sender go on, a window at a time.
        let mut buf = vec![0u8; WINDOW];
        slow_far.read_exact(&mut buf).await.unwrap();
        assert!(buf.iter().all(|b| *b == 7));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(sent.load(Ordering::Relaxed), 2 * WINDOW);
        writer.abort();
    }

    #[tokio::test]
    async fn a_lost_connection_ends_every_channel_and_a_broken_frame_ends_the_connection() {
        // The connection goes: reads end, writes fail.
        let (a, b) = tokio::io::duplex(64 * 1024);
        let tracker = TaskTracker::new();
        let stop = CancellationToken::new();
        let (mux, reader) = Mux::opener(Box::new(a), TIMING, stop.clone(), &tracker);
        let r = tokio::spawn(reader);
        let mut s = mux.open(b"x").unwrap();
        drop(b);
        assert!(r.await.unwrap().is_ok());
        let mut buf = [0u8; 4];
        assert_eq!(s.read(&mut buf).await.unwrap(), 0);
        assert!(s.write_all(b"y").await.is_err());
        assert!(mux.is_closed() && mux.open(b"z").is_none());

        // A peer that sends beyond the window, or a kind nobody knows, is cut off.
        for bad in [
            {
                let mut f = Vec::new();
                frame(&mut f, 1, OPEN, b"o");
                for _ in 0..(WINDOW / MAX_DATA + 1) {
                    frame(&mut f, 1, DATA, &[0u8; MAX_DATA]);
                }
                f
            },
            {
                let mut f = Vec::new();
                frame(&mut f, 1, 99, b"");
                f
            },
            {
                let mut f = Vec::new();
                frame(&mut f, 1, OPEN, &[b'x'; 5000]);
                f
            },
        ] {
            let (a, mut b) = tokio::io::duplex(256 * 1024);
            let reader = Mux::taker(Box::new(a), TIMING, stop.clone(), &tracker, 4096, {
                let mut kept = Vec::new();
                move |s, _| {
                    kept.push(s);
                    Ok(())
                }
            });
            let r = tokio::spawn(reader);
            b.write_all(&bad).await.unwrap();
            let e = r.await.unwrap().unwrap_err();
            assert!(
                e.contains("window") || e.contains("kind") || e.contains("at most"),
                "{e}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_dead_after_dead_after() {
        let (a, _b) = tokio::io::duplex(1024);
        let tracker = TaskTracker::new();
        let (mux, reader) = Mux::opener(Box::new(a), TIMING, CancellationToken::new(), &tracker);
        let e = reader.await.unwrap_err();
        assert!(e.contains("silent"), "{e}");
        assert!(mux.is_closed());
    }
}
