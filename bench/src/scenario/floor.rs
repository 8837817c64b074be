//! `floor` and `floor-server`: the bare TCP exchange of the same shape as a plaintext
//! redirect — accept, read, write, read, write, close — with tokio and no XML, and the same
//! byte counts as jabberfarm's redirect exchange. What a redirect costs the master above this
//! floor is what the XMPP layer costs; the issue asks for the redirect's CPU as a ratio to it.
//!
//! Run the server pinned to one core like the farm (`taskset -c 0 jabberfarm-bench
//! floor-server`) and the client like every other scenario.
//!
//! `pbkdf2` is the other yardstick: what the server's key derivation costs, the part of a
//! PLAIN login that no protocol work can remove.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::Instant;

use crate::error::{BenchError, Result};
use crate::measure::{SelfCpu, Servers, summarize};
use crate::report::Report;
use crate::runner::run_pool;
use crate::target::is_loopback;

/// Bytes of jabberfarm's plaintext redirect exchange (demo config, PLAIN, user `bench0`):
/// our stream header; the server's header and features; `<auth/>`; the stream error with
/// `</stream:stream>`.
pub const CLIENT_HEADER: usize = 135;
pub const SERVER_FEATURES: usize = 473;
pub const CLIENT_AUTH: usize = 92;
pub const SERVER_REDIRECT: usize = 136;

/// Serve the floor exchange on `listen` until `duration` has passed.
pub async fn serve(listen: SocketAddr, duration: Duration) -> Result<()> {
    if !is_loopback(listen.ip()) {
        return Err(BenchError::NotLoopback(listen.to_string()));
    }
    let l = TcpListener::bind(listen)
        .await
        .map_err(|e| BenchError::Setup(format!("bind {listen}: {e}")))?;
    println!(
        "floor-server: listening on {} (pid {}) for at most {} s",
        l.local_addr()?,
        std::process::id(),
        duration.as_secs()
    );
    let stop = tokio::time::sleep(duration);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            r = l.accept() => {
                let Ok((sock, _)) = r else { continue };
                tokio::spawn(async move {
                    let _ = exchange_server(sock).await;
                });
            }
            _ = &mut stop => return Ok(()),
        }
    }
}

async fn exchange_server(mut s: tokio::net::TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    let mut buf = [0u8; 1024];
    s.read_exact(&mut buf[..CLIENT_HEADER]).await?;
    s.write_all(&[b'f'; SERVER_FEATURES]).await?;
    s.read_exact(&mut buf[..CLIENT_AUTH]).await?;
    s.write_all(&[b'r'; SERVER_REDIRECT]).await?;
    s.shutdown().await
}

async fn exchange_client(addr: SocketAddr) -> Result<Duration> {
    let t0 = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| BenchError::Connect(addr, e))?;
    s.set_nodelay(true)?;
    let mut buf = [0u8; 1024];
    s.write_all(&[b'h'; CLIENT_HEADER]).await?;
    s.read_exact(&mut buf[..SERVER_FEATURES]).await?;
    s.write_all(&[b'a'; CLIENT_AUTH]).await?;
    s.read_exact(&mut buf[..SERVER_REDIRECT]).await?;
    let lat = t0.elapsed();
    // Wait for the server's close, as the redirect client does.
    while s.read(&mut buf).await? > 0 {}
    Ok(lat)
}

pub async fn run(
    addr: SocketAddr,
    servers: &Servers,
    concurrency: usize,
    count: u64,
    duration: Duration,
    step_timeout: Duration,
) -> Result<Report> {
    let mut rep = Report {
        scenario: "floor".into(),
        op: "exchange".into(),
        target: addr.to_string(),
        domain: "-".into(),
        tls: "none".into(),
        mechanism: "-".into(),
        ..Default::default()
    };
    rep.param("concurrency", concurrency);
    rep.param("count", count);
    exchange_client(addr).await?;
    let me = SelfCpu::start();
    let cpu0 = if servers.is_empty() {
        None
    } else {
        Some(servers.cpu()?)
    };
    let pool = run_pool(
        concurrency,
        count,
        Instant::now() + duration,
        move |_, _| async move {
            match tokio::time::timeout(step_timeout, exchange_client(addr)).await {
                Ok(r) => r,
                Err(_) => Err(BenchError::Timeout("floor exchange")),
            }
        },
    )
    .await;
    if let Some(c) = cpu0 {
        let cpu_s = servers.cpu_since(&c)?;
        rep.server = Some(crate::report::ServerFigures {
            pids: servers.pids.clone(),
            cpu_s,
            cpu_us_per_op: if pool.completed == 0 {
                0.0
            } else {
                cpu_s * 1e6 / pool.completed as f64
            },
            ..Default::default()
        });
    }
    rep.set_cpu(&me);
    rep.record_pool(pool);
    Ok(rep)
}

/// Time `ScramCredentials::derive` (PBKDF2-HMAC-SHA-256, what the server runs for every PLAIN
/// login against stored SCRAM keys) on this thread.
pub fn pbkdf2(iterations: u32, count: u64) -> Report {
    use jabberfarm_proto::scram::{ScramCredentials, ScramHash};
    let mut rep = Report {
        scenario: "pbkdf2".into(),
        op: "derivation".into(),
        target: "-".into(),
        domain: "-".into(),
        tls: "-".into(),
        mechanism: "SCRAM-SHA-256 keys".into(),
        ..Default::default()
    };
    rep.param("iterations", iterations);
    rep.param("count", count);
    let me = SelfCpu::start();
    let mut lat = Vec::new();
    let start = std::time::Instant::now();
    for i in 0..count {
        let t0 = std::time::Instant::now();
        let c = ScramCredentials::derive(ScramHash::Sha256, "bench", &i.to_be_bytes(), iterations);
        std::hint::black_box(c);
        lat.push(crate::measure::nanos(t0.elapsed()));
    }
    rep.set_cpu(&me);
    rep.fill(count, start.elapsed());
    rep.latency_us = summarize(lat);
    rep
}
