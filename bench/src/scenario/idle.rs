//! `idle`: log in N sessions (bounded concurrency), hold them, and measure what they cost the
//! server in memory: RSS before the logins and with every session open, per session. Run it
//! on a freshly started server: memory freed by earlier runs stays in the process's heap and
//! would hide what new sessions take.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jabberfarm_proto::ns;
use jabberfarm_proto::xml::{Element, StreamEvent};
use tokio::signal::unix::SignalKind;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::client::{self, Session};
use crate::error::{BenchError, Result};
use crate::measure::SelfCpu;
use crate::report::{IdleFigures, Report};
use crate::runner::run_pool;

/// Time for the server to settle before RSS is read.
const SETTLE: Duration = Duration::from_secs(1);

pub async fn run(
    ctx: &Ctx,
    concurrency: usize,
    count: u64,
    hold: Duration,
    ready_file: Option<&Path>,
) -> Result<Report> {
    let mut rep = ctx.report("idle", "login");
    rep.param("concurrency", concurrency);
    rep.param("sessions", count);
    rep.param("hold_s", hold.as_secs());
    let routes = Arc::new(
        ctx.discover(count.min(ctx.users.count), concurrency)
            .await?,
    );
    tokio::time::sleep(SETTLE).await;
    let rss_before = rss(ctx)?;

    let done = CancellationToken::new();
    let holders = Arc::new(Mutex::new(Vec::new()));
    let (cfg, start, users) = (ctx.cfg.clone(), ctx.start, ctx.users.clone());
    let (d, h) = (done.clone(), holders.clone());
    let me = SelfCpu::start();
    let cpu0 = ctx.cpu()?;
    let pool = run_pool(concurrency, count, ctx.deadline(), move |i, _| {
        let (cfg, users, routes, done, holders) = (
            cfg.clone(),
            users.clone(),
            routes.clone(),
            d.clone(),
            h.clone(),
        );
        async move {
            let user = users.name(i);
            let addr = routes.get(&user).copied().unwrap_or(start);
            let t0 = Instant::now();
            let session = client::login(&cfg, addr, &user, &format!("idle{i}")).await?;
            let lat = t0.elapsed();
            let task = tokio::spawn(hold_session(session, done));
            holders
                .lock()
                .map_err(|_| BenchError::Setup("holder list poisoned".into()))?
                .push(task);
            Ok(lat)
        }
    })
    .await;
    ctx.login_figures(&mut rep, cpu0.as_ref(), pool.completed)?;
    rep.set_cpu(&me);
    rep.record_pool(pool);

    tokio::time::sleep(SETTLE).await;
    let rss_after = rss(ctx)?;
    let held_since = Instant::now();
    match ready_file {
        Some(path) => {
            // Ask for SIGUSR1 before saying we are ready, so an early signal is not lost.
            let mut release = tokio::signal::unix::signal(SignalKind::user_defined1())
                .map_err(|e| BenchError::Setup(format!("SIGUSR1: {e}")))?;
            let open = open_count(&holders);
            std::fs::write(path, format!("{open}\n"))
                .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
            let released = tokio::select! {
                _ = release.recv() => true,
                () = tokio::time::sleep(hold) => false,
            };
            rep.param("released_by_signal", u64::from(released));
        }
        None => tokio::time::sleep(hold).await,
    }
    let alive = open_count(&holders);
    let hold_s = held_since.elapsed().as_secs_f64();
    rep.param("still_open_after_hold", alive as u64);
    done.cancel();
    let tasks: Vec<_> = holders
        .lock()
        .map(|mut h| h.drain(..).collect())
        .unwrap_or_default();
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::sleep(SETTLE).await;
    let rss_after_close = rss(ctx)?;
    if let (Some(before), Some(after), Some(closed)) = (rss_before, rss_after, rss_after_close) {
        let n = rep.completed.max(1);
        rep.idle = Some(IdleFigures {
            sessions: rep.completed,
            rss_before_kib: before,
            rss_after_kib: after,
            kib_per_session: (after as f64 - before as f64) / n as f64,
            rss_after_close_kib: closed,
            hold_s,
        });
    }
    Ok(rep)
}

/// Sessions whose holder still runs (the server has not closed them).
fn open_count(holders: &Mutex<Vec<tokio::task::JoinHandle<()>>>) -> usize {
    holders
        .lock()
        .map(|h| h.iter().filter(|t| !t.is_finished()).count())
        .unwrap_or(0)
}

fn rss(ctx: &Ctx) -> Result<Option<u64>> {
    if ctx.servers.is_empty() {
        return Ok(None);
    }
    ctx.servers.rss_kib().map(Some)
}

/// Keep a session open: answer the server's pings (XEP-0199), ignore everything else, log
/// out when told.
async fn hold_session(mut s: Session, done: CancellationToken) {
    loop {
        tokio::select! {
            ev = s.conn.next() => match ev {
                Ok(StreamEvent::Element(el)) => {
                    if is_ping(&el) {
                        let id = el.attr("id").unwrap_or("");
                        let from = el.attr("from").unwrap_or("");
                        let reply = format!("<iq type='result' id='{}' to='{}'/>", esc(id), esc(from));
                        if s.conn.send(&reply).await.is_err() {
                            return;
                        }
                    }
                }
                // The server ended the session.
                Ok(StreamEvent::Close) | Ok(StreamEvent::Open(_)) | Err(_) => return,
            },
            _ = done.cancelled() => break,
        }
    }
    s.conn.close().await;
}

fn is_ping(el: &Element) -> bool {
    el.is("iq", ns::CLIENT)
        && el.attr("type") == Some("get")
        && el.child("ping", ns::PING).is_some()
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    jabberfarm_proto::xml::escape_into(&mut out, s);
    out
}
