//! `redirect`: logins at the master that end in `<see-other-host/>` (DESIGN.md D1): connect,
//! open the stream, STARTTLS when asked, send the first SASL message, read the redirect.
//! Latency: from connect to the redirect read.

use std::path::Path;

use tokio::time::Instant;

use super::Ctx;
use crate::client;
use crate::error::{BenchError, Result};
use crate::measure::SelfCpu;
use crate::report::Report;
use crate::runner::run_pool;

pub async fn run(
    ctx: &Ctx,
    concurrency: usize,
    count: u64,
    floor: Option<&Path>,
) -> Result<Report> {
    let mut rep = ctx.report("redirect", "redirect");
    rep.param("concurrency", concurrency);
    rep.param("count", count);
    // One unmeasured redirect, to fail fast with a clear message.
    let user = ctx.users.name(0);
    let (_, mut conn) = client::redirect_once(&ctx.cfg, ctx.start, &user).await?;
    conn.drain().await;

    let floor_us = match floor {
        Some(p) => Some(read_floor(p)?),
        None => None,
    };
    let (cfg, start, users) = (ctx.cfg.clone(), ctx.start, ctx.users.clone());
    let me = SelfCpu::start();
    let cpu0 = ctx.cpu()?;
    let pool = run_pool(concurrency, count, ctx.deadline(), move |i, _| {
        let (cfg, users) = (cfg.clone(), users.clone());
        async move {
            let user = users.name(i);
            let t0 = Instant::now();
            let (_, mut conn) = client::redirect_once(&cfg, start, &user).await?;
            let lat = t0.elapsed();
            // The server closes after the redirect; read to its end like a client would.
            conn.drain().await;
            Ok(lat)
        }
    })
    .await;
    rep.server = ctx.server_figures(cpu0.as_ref(), pool.completed)?;
    rep.set_cpu(&me);
    if let (Some(s), Some(f)) = (rep.server.as_mut(), floor_us) {
        s.floor_ratio = Some(s.cpu_us_per_op / f);
    }
    rep.record_pool(pool);
    Ok(rep)
}

/// The floor's server CPU per exchange, from the JSON a `floor` run wrote.
fn read_floor(path: &Path) -> Result<f64> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))?;
    v.pointer("/server/cpu_us_per_op")
        .and_then(|x| x.as_f64())
        .filter(|x| *x > 0.0)
        .ok_or_else(|| {
            BenchError::Setup(format!(
                "{}: no server.cpu_us_per_op (run `floor` with --server-pid)",
                path.display()
            ))
        })
}
