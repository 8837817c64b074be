//! Figures: latency percentiles, and the server's CPU time and memory from /proc.
//!
//! CPU is `utime + stime` of `/proc/PID/stat` (fields 14 and 15, in clock ticks; they include
//! threads that have already exited), memory is `VmRSS` of `/proc/PID/status`.

use std::time::Duration;

use serde::Serialize;

use crate::error::{BenchError, Result};

/// Latency percentiles in microseconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LatencySummary {
    pub count: usize,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Summarise latencies given in nanoseconds.
pub fn summarize(mut ns: Vec<u64>) -> LatencySummary {
    if ns.is_empty() {
        return LatencySummary::default();
    }
    ns.sort_unstable();
    let us = |v: u64| v as f64 / 1000.0;
    let sum: u128 = ns.iter().map(|&v| v as u128).sum();
    LatencySummary {
        count: ns.len(),
        mean_us: sum as f64 / ns.len() as f64 / 1000.0,
        p50_us: us(percentile(&ns, 0.50)),
        p99_us: us(percentile(&ns, 0.99)),
        p999_us: us(percentile(&ns, 0.999)),
        max_us: us(ns[ns.len() - 1]),
    }
}

pub fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on every Linux we know).
pub fn clk_tck() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|v| *v > 0.0)
        .unwrap_or(100.0)
}

/// `utime + stime` of a process, in ticks.
fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::Setup(format!("{path}: {e} (is the server running?)")))?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .ok_or_else(|| BenchError::Setup(format!("{path}: unexpected format")))?;
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let num = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(|| BenchError::Setup(format!("{path}: field {} missing", i + 3)))
    };
    Ok(num(11)? + num(12)?)
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| BenchError::Setup(format!("{path}: {e} (is the server running?)")))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or_else(|| BenchError::Setup(format!("{path}: no VmRSS")))
}

/// The server processes under test (a farm in one process has one pid; separate processes
/// several). Empty: no server figures.
#[derive(Clone, Debug)]
pub struct Servers {
    pub pids: Vec<u32>,
    tck: f64,
}

/// CPU seconds of every server process at one moment.
#[derive(Clone, Debug)]
pub struct CpuSnapshot(Vec<u64>);

impl Servers {
    pub fn new(pids: Vec<u32>) -> Result<Servers> {
        let s = Servers {
            pids,
            tck: clk_tck(),
        };
        // Fail early on a wrong pid.
        s.cpu()?;
        Ok(s)
    }

    pub fn is_empty(&self) -> bool {
        self.pids.is_empty()
    }

    pub fn cpu(&self) -> Result<CpuSnapshot> {
        self.pids
            .iter()
            .map(|&p| cpu_ticks(p))
            .collect::<Result<Vec<_>>>()
            .map(CpuSnapshot)
    }

    /// CPU seconds used by all servers since `before`.
    pub fn cpu_since(&self, before: &CpuSnapshot) -> Result<f64> {
        let now = self.cpu()?;
        let ticks: u64 = now
            .0
            .iter()
            .zip(&before.0)
            .map(|(n, b)| n.saturating_sub(*b))
            .sum();
        Ok(ticks as f64 / self.tck)
    }

    /// Total RSS of all servers, KiB.
    pub fn rss_kib(&self) -> Result<u64> {
        self.pids.iter().map(|&p| rss_kib(p)).sum()
    }
}

/// CPU seconds over a measured phase: this process's own (to show when the load client, not
/// the server, is the bottleneck) and the whole machine's (what other processes took shows how
/// noisy the phase was).
pub struct SelfCpu {
    start: u64,
    machine_start: Option<u64>,
    tck: f64,
}

/// Busy ticks of all CPUs together (`/proc/stat`: everything but idle and iowait).
fn machine_busy_ticks() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user)
    let busy = [0usize, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| v.get(i))
        .sum();
    Some(busy)
}

impl SelfCpu {
    pub fn start() -> SelfCpu {
        SelfCpu {
            start: cpu_ticks(std::process::id()).unwrap_or(0),
            machine_start: machine_busy_ticks(),
            tck: clk_tck(),
        }
    }

    pub fn seconds(&self) -> f64 {
        let now = cpu_ticks(std::process::id()).unwrap_or(self.start);
        now.saturating_sub(self.start) as f64 / self.tck
    }

    /// CPU seconds the whole machine was busy since the start.
    pub fn machine_seconds(&self) -> Option<f64> {
        let (a, b) = (self.machine_start?, machine_busy_ticks()?);
        Some(b.saturating_sub(a) as f64 / self.tck)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s = summarize((1..=1000).map(|i| i * 1000).collect());
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50_us, 500.0);
        assert_eq!(s.p99_us, 990.0);
        assert_eq!(s.p999_us, 999.0);
        assert_eq!(s.max_us, 1000.0);
        assert_eq!(s.mean_us, 500.5);
        let one = summarize(vec![7000]);
        assert_eq!((one.p50_us, one.p999_us), (7.0, 7.0));
        assert_eq!(summarize(vec![]).count, 0);
    }

    #[test]
    fn reads_our_own_proc_entries() {
        let me = std::process::id();
        assert!(rss_kib(me).unwrap() > 0);
        cpu_ticks(me).unwrap();
        assert!(Servers::new(vec![u32::MAX]).is_err());
    }
}
