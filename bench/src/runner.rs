//! A bounded pool of client tasks: `concurrency` workers take operation numbers from a shared
//! counter until `count` are taken or the deadline passes.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::error::{BenchError, Result};

#[derive(Default)]
pub struct PoolResult {
    /// One latency per completed operation, nanoseconds.
    pub latencies: Vec<u64>,
    pub completed: u64,
    pub error_kinds: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    /// From the first operation started to the last one finished.
    pub elapsed: Duration,
}

impl PoolResult {
    fn merge(&mut self, other: PoolResult) {
        self.latencies.extend(other.latencies);
        self.completed += other.completed;
        for (k, n) in other.error_kinds {
            *self.error_kinds.entry(k).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }

    pub fn errors(&self) -> u64 {
        self.error_kinds.values().sum()
    }
}

/// Run `op(i, worker)` for `i` in `0..count` on `concurrency` tasks, stopping at `deadline`.
/// `op` returns the latency it measured. An off-loopback target stops every worker.
pub async fn run_pool<F, Fut>(
    concurrency: usize,
    count: u64,
    deadline: Instant,
    op: F,
) -> PoolResult
where
    F: Fn(u64, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Duration>> + Send,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let (op, next, stop) = (op.clone(), next.clone(), stop.clone());
        tasks.spawn(async move {
            let mut r = PoolResult::default();
            loop {
                if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                    break;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    break;
                }
                match op(i, w).await {
                    Ok(lat) => {
                        r.completed += 1;
                        r.latencies.push(crate::measure::nanos(lat));
                    }
                    Err(e) => {
                        if matches!(e, BenchError::NotLoopback(_)) {
                            stop.store(true, Ordering::Relaxed);
                        }
                        *r.error_kinds.entry(e.kind()).or_default() += 1;
                        if r.first_error.is_none() {
                            r.first_error = Some(e.to_string());
                        }
                    }
                }
            }
            r
        });
    }
    let mut total = PoolResult::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(r) => total.merge(r),
            Err(e) => {
                *total.error_kinds.entry("task panicked".into()).or_default() += 1;
                total.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}
