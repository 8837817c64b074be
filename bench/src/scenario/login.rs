//! `login`: full logins (stream, STARTTLS when asked, SASL, restart, bind, initial presence
//! acknowledged by a ping), then logout. Latency: from connect to the acknowledgment.
//!
//! An unmeasured discovery pass first finds each user's server; the measured logins go there
//! directly (`--no-pre-route`: they start at `--host/--port` and follow redirects themselves).

use std::sync::Arc;

use tokio::time::Instant;

use super::Ctx;
use crate::client;
use crate::error::Result;
use crate::measure::SelfCpu;
use crate::report::Report;
use crate::runner::run_pool;

pub async fn run(ctx: &Ctx, concurrency: usize, count: u64, pre_route: bool) -> Result<Report> {
    let mut rep = ctx.report("login", "login");
    rep.param("concurrency", concurrency);
    rep.param("count", count);
    rep.param("users", count.min(ctx.users.count));
    rep.param("pre_route", pre_route);
    let routes = Arc::new(
        ctx.discover(count.min(ctx.users.count), concurrency)
            .await?,
    );
    let (cfg, start, users) = (ctx.cfg.clone(), ctx.start, ctx.users.clone());
    let me = SelfCpu::start();
    let cpu0 = ctx.cpu()?;
    let pool = run_pool(concurrency, count, ctx.deadline(), move |i, w| {
        let (cfg, users, routes) = (cfg.clone(), users.clone(), routes.clone());
        async move {
            let user = users.name(i);
            let addr = match routes.get(&user) {
                Some(a) if pre_route => *a,
                _ => start,
            };
            let t0 = Instant::now();
            let session = client::login(&cfg, addr, &user, &format!("bench{w}")).await?;
            let lat = t0.elapsed();
            session.conn.close().await;
            Ok(lat)
        }
    })
    .await;
    ctx.login_figures(&mut rep, cpu0.as_ref(), pool.completed)?;
    rep.set_cpu(&me);
    rep.record_pool(pool);
    Ok(rep)
}
