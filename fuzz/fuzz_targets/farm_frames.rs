//! Farm links (`shared/net/src/farm.rs`): the frame decoder (`Framed::recv_el`: 4-byte length,
//! one element) and both sides of the link handshake, fed by an unauthenticated peer.
//!
//! Input: one byte, then what the peer sends. The byte's low two bits pick the scenario:
//! 0 frames only (`recv_el` until it fails), 1 we accept a connection
//! (`handshake_accept`, as node `slave1` that takes links from `master` and relays), 2 and 3
//! we connect (`handshake_connect` as `master` to `slave1`, for a link or a relay). Its high
//! six bits pick how the bytes are chunked by the reads (see `Chunks`).
//!
//! Properties:
//! - no panic; every read and write completes at once (the in-memory peer never blocks);
//! - before authentication no single allocation exceeds [`MAX_ONE_ALLOC`] and the heap never
//!   grows by more than [`MAX_HEAP_GROWTH`], whatever length prefix the peer sends
//!   (the bound is `HANDSHAKE_FRAME`, 4 KiB a frame);
//! - every element `recv_el` yields is within that frame limit and parses back equal after
//!   `write_to(.., jabber:server)` (what the other side's `frame_of` sends);
//! - a handshake never succeeds: the peer cannot know the farm secret, and our nonce is fresh.

#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::future::Future;
use std::path::Path;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::task::{Context, Poll, Waker};

use jabberfarm_fuzz::{
    Chunks, LINK_HEADER, content_bytes, element_depth, known_finding, reparse, skip_known,
};
use jabberfarm_config::{FarmConfig, SharedTopology};
use jabberfarm_net::farm::{FarmLinks, Framed, HANDSHAKE_FRAME, Purpose, RelayHandler};
use jabberfarm_proto::ns;
use jabberfarm_proto::xml::ParserLimits;
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest single allocation allowed before authentication: a value of up to one frame,
/// grown by doubling (rxml's token buffer, a `String` being filled).
const MAX_ONE_ALLOC: usize = 2 * HANDSHAKE_FRAME;
/// Largest heap growth during one scenario: a frame, its element tree, the parser's buffers,
/// our own replies — a few frames' worth, never the peer's length prefix.
const MAX_HEAP_GROWTH: isize = 16 * HANDSHAKE_FRAME as isize;

// ---- allocation tracking -------------------------------------------------------------------

/// The system allocator, counting what is allocated while [`ARMED`] (single-threaded target).
struct Tracking;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);
static LIVE: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

fn grew(by: isize, request: usize) {
    if ARMED.load(Ordering::Relaxed) {
        LARGEST.fetch_max(request, Ordering::Relaxed);
        let live = LIVE.fetch_add(by, Ordering::Relaxed) + by;
        PEAK.fetch_max(live, Ordering::Relaxed);
    }
}

// A global allocator cannot be written without `unsafe`; this one only forwards to `System`.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize, layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as isize, layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        grew(-(layout.size() as isize), 0);
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as isize - layout.size() as isize, new_size);
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Run `f` counting its allocations; check them against the pre-auth bounds.
fn bounded<T>(what: &str, f: impl FnOnce() -> T) -> T {
    LARGEST.store(0, Ordering::Relaxed);
    LIVE.store(0, Ordering::Relaxed);
    PEAK.store(0, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
    let out = f();
    ARMED.store(false, Ordering::Relaxed);
    let (largest, peak) = (
        LARGEST.load(Ordering::Relaxed),
        PEAK.load(Ordering::Relaxed),
    );
    assert!(
        largest <= MAX_ONE_ALLOC,
        "{what}: one allocation of {largest} bytes before authentication (> {MAX_ONE_ALLOC})"
    );
    assert!(
        peak <= MAX_HEAP_GROWTH,
        "{what}: heap grew by {peak} bytes before authentication (> {MAX_HEAP_GROWTH})"
    );
    out
}

// ---- the peer ------------------------------------------------------------------------------

/// The peer's side of the connection: reads give the fuzzer's bytes in its chunks, then
/// end-of-file; writes are kept (and never block).
struct Peer {
    chunks: VecDeque<Vec<u8>>,
    sent: Arc<Mutex<Vec<u8>>>,
}

impl AsyncRead for Peer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(chunk) = self.chunks.front_mut() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            chunk.drain(..n);
            if chunk.is_empty() {
                self.chunks.pop_front();
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Peer {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Ok(mut sent) = self.sent.lock() {
            sent.extend_from_slice(buf);
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Poll `fut` once: with a peer that never blocks, everything completes in one poll.
fn now<T>(fut: impl Future<Output = T>) -> T {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("blocked although the peer never blocks"),
    }
}

// ---- the farm ------------------------------------------------------------------------------

const FARM: &str = r#"
domain = "localhost"
secret = "fuzz-farm-secret"
[tls]
generate = true
[routing]
mode = "hash"
hash_key = "6a61626265726661726d2d64656d6f21"
[[node]]
name = "master"
role = "master"
c2s = "127.0.0.1:5222"
farm = "127.0.0.1:7100"
[[node]]
name = "slave1"
role = "slave"
c2s = "127.0.0.1:5322"
farm = "127.0.0.1:7101"
[[node]]
name = "slave2"
role = "slave"
c2s = "127.0.0.1:5422"
farm = "127.0.0.1:7102"
"#;

/// `master` (connects to the slaves) and `slave1` (accepts links and relays from `master`).
static NODES: LazyLock<(Arc<FarmLinks>, Arc<FarmLinks>)> = LazyLock::new(|| {
    let cfg = FarmConfig::from_str(
        FARM,
        Path::new("fuzz/farm.toml"),
        Some(Path::new("/nonexistent")),
    )
    .unwrap_or_else(|e| panic!("the fuzz farm config: {e}"));
    let topology = SharedTopology::new(cfg.topology());
    let (master, _) = FarmLinks::new(&cfg, &topology, "master", None);
    let (slave, _) = FarmLinks::new(&cfg, &topology, "slave1", None);
    let handler: RelayHandler = Arc::new(|_| Box::pin(async {}));
    slave.accept_relays(handler);
    (master, slave)
});

fuzz_target!(|data: &[u8]| {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let (master, slave) = &*NODES;
    let sent = Arc::new(Mutex::new(Vec::new()));
    let peer = Peer {
        chunks: Chunks::new(b >> 2, rest).map(<[u8]>::to_vec).collect(),
        sent: sent.clone(),
    };
    let mut link = Framed::new(Box::new(peer), HANDSHAKE_FRAME);
    match b & 3 {
        0 => frames(&mut link),
        1 => {
            let r = bounded(
                "handshake_accept",
                || now(slave.handshake_accept(&mut link)),
            );
            if let Ok((peer, purpose, _)) = r {
                panic!("a forged handshake authenticated {peer} for {purpose:?}");
            }
            let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
            assert!(
                !sent.windows(8).any(|w| w == b"<welcome"),
                "welcomed a forged peer: {:?}",
                String::from_utf8_lossy(&sent)
            );
        }
        mode => {
            let purpose = if mode == 2 {
                Purpose::Link
            } else {
                Purpose::Relay
            };
            let r = bounded("handshake_connect", || {
                now(master.handshake_connect(&mut link, "slave1", purpose))
            });
            assert!(r.is_err(), "a forged acceptor authenticated ({purpose:?})");
        }
    }
});

/// Frames until the decoder fails (end of input at the latest).
fn frames(link: &mut Framed) {
    loop {
        let Ok(el) = bounded("recv_el", || now(link.recv_el())) else {
            return;
        };
        let depth = element_depth(&el);
        let max_depth = ParserLimits::POST_AUTH.max_depth;
        assert!(
            depth <= max_depth,
            "frame element of depth {depth} > {max_depth}"
        );
        let size = content_bytes(&el);
        assert!(
            size <= HANDSHAKE_FRAME,
            "frame element with {size} content bytes"
        );
        if skip_known() && known_finding(&el, ns::SERVER).is_some() {
            continue;
        }
        let (text, back) = reparse(&el, ns::SERVER, LINK_HEADER);
        assert_eq!(
            back.as_ref(),
            Ok(&el),
            "a frame's element does not survive write_to + parse; serialized: {text:?}"
        );
    }
}
