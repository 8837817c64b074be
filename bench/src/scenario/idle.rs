//! `idle`: log in N sessions (bounded concurrency), hold them, and measure what they cost the
//! server in memory: RSS before the logins and with every session open, per session. Run it
//! on a freshly started server: memory freed by earlier runs stays in the process's heap and
//! would hide what new sessions take.
//!
//! With `--follow-moves`, a session the server ends with `<see-other-host/>` (live
//! rebalancing moving its user) logs in again at the address it names; the report counts the
//! moves, how long each client took from the redirect to its new session, and the window from
//! the first redirect to the last new session.

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
    follow_moves: bool,
) -> Result<Report> {
    let moves = follow_moves.then(|| Arc::new(Moves::default()));
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
    let (d, h, m) = (done.clone(), holders.clone(), moves.clone());
    let me = SelfCpu::start();
    let cpu0 = ctx.cpu()?;
    let pool = run_pool(concurrency, count, ctx.deadline(), move |i, _| {
        let (cfg, users, routes, done, holders, moves) = (
            cfg.clone(),
            users.clone(),
            routes.clone(),
            d.clone(),
            h.clone(),
            m.clone(),
        );
        async move {
            let user = users.name(i);
            let addr = routes.get(&user).copied().unwrap_or(start);
            let t0 = Instant::now();
            let resource = format!("idle{i}");
            let session = client::login(&cfg, addr, &user, &resource).await?;
            let lat = t0.elapsed();
            let again = moves.map(|moves| Again {
                relogin: client::Relogin {
                    cfg,
                    user,
                    resource,
                    home: start.to_string(),
                },
                moves,
            });
            let task = tokio::spawn(hold_session(session, done, again));
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
    if let Some(m) = &moves {
        m.report(&mut rep);
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

/// What a moved session needs to log in again, and where its figures go.
struct Again {
    relogin: client::Relogin,
    moves: Arc<Moves>,
}

/// The sessions the server moved (`--follow-moves`).
#[derive(Default)]
struct Moves {
    /// Redirect to new session, per move, in nanoseconds.
    latencies: Mutex<Vec<u64>>,
    failed: std::sync::atomic::AtomicU64,
    first_redirect: Mutex<Option<Instant>>,
    last_session: Mutex<Option<Instant>>,
}

impl Moves {
    fn report(&self, rep: &mut Report) {
        let lat = self.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        rep.param("moved", lat.len() as u64);
        rep.param(
            "move_failed",
            self.failed.load(std::sync::atomic::Ordering::Relaxed),
        );
        let first = self.first_redirect.lock().ok().and_then(|t| *t);
        let last = self.last_session.lock().ok().and_then(|t| *t);
        if let (Some(a), Some(b)) = (first, last) {
            let window = b.saturating_duration_since(a).as_secs_f64();
            rep.param("move_window_s", (window * 1000.0).round() / 1000.0);
        }
        let s = crate::measure::summarize(lat);
        rep.param("move_p50_ms", (s.p50_us / 10.0).round() / 100.0);
        rep.param("move_p99_ms", (s.p99_us / 10.0).round() / 100.0);
    }
}

/// How long a session whose server went away (killed: no `<see-other-host/>`) keeps trying
/// to log in again from the start, and how often — as a client's automatic reconnect does
/// while the farm fails its users over to another slave.
const RELOGIN_FOR: Duration = Duration::from_secs(60);
const RELOGIN_EVERY: Duration = Duration::from_millis(500);

/// Keep a session open: answer the server's pings (XEP-0199), ignore everything else, log
/// out when told; with `again`, log in again where the server sends a moved session, or from
/// the start (retrying for [`RELOGIN_FOR`]) when its connection ends without a word.
async fn hold_session(mut s: Session, done: CancellationToken, again: Option<Again>) {
    loop {
        tokio::select! {
            ev = s.conn.next() => match ev {
                Ok(StreamEvent::Element(el)) => {
                    if let (Some(to), Some(a)) = (client::Relogin::moved_to(&el), again.as_ref()) {
                        let t0 = Instant::now();
                        if let Ok(mut first) = a.moves.first_redirect.lock() {
                            first.get_or_insert(t0);
                        }
                        match a.relogin.login_at(&to).await {
                            Ok(new) => {
                                s = new;
                                let now = Instant::now();
                                if let Ok(mut l) = a.moves.latencies.lock() {
                                    l.push(now.duration_since(t0).as_nanos() as u64);
                                }
                                if let Ok(mut last) = a.moves.last_session.lock() {
                                    *last = Some(now);
                                }
                                continue;
                            }
                            Err(_) => {
                                a.moves.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                return;
                            }
                        }
                    }
                    if is_ping(&el) {
                        let id = el.attr("id").unwrap_or("");
                        let from = el.attr("from").unwrap_or("");
                        let reply = format!("<iq type='result' id='{}' to='{}'/>", esc(id), esc(from));
                        if s.conn.send(&reply).await.is_err() {
                            return;
                        }
                    }
                }
                // The connection ended without a word (its server was killed): from the start.
                Err(_) if again.is_some() && !done.is_cancelled() => {
                    let Some(a) = again.as_ref() else { return };
                    let t0 = Instant::now();
                    if let Ok(mut first) = a.moves.first_redirect.lock() {
                        first.get_or_insert(t0);
                    }
                    let until = t0 + RELOGIN_FOR;
                    let new = loop {
                        match a.relogin.login_at(&a.relogin.home).await {
                            Ok(new) => break Some(new),
                            Err(_) if Instant::now() < until && !done.is_cancelled() => {
                                tokio::time::sleep(RELOGIN_EVERY).await;
                            }
                            Err(_) => break None,
                        }
                    };
                    let Some(new) = new else {
                        a.moves.failed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        return;
                    };
                    s = new;
                    let now = Instant::now();
                    if let Ok(mut l) = a.moves.latencies.lock() {
                        l.push(now.duration_since(t0).as_nanos() as u64);
                    }
                    if let Ok(mut last) = a.moves.last_session.lock() {
                        *last = Some(now);
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
