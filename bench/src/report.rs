//! One run's figures: printed as a table, written as JSON (`--json FILE`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{BenchError, Result};
use crate::measure::LatencySummary;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub scenario: String,
    /// What one operation is: `redirect`, `login`, `message`, `exchange`.
    pub op: String,
    /// `HOST:PORT` the run started at.
    pub target: String,
    pub domain: String,
    pub tls: String,
    pub mechanism: String,
    /// The run's parameters (concurrency, count, pairs, rate, …).
    pub params: BTreeMap<String, serde_json::Value>,
    /// Operations that completed (in the measured phase).
    pub completed: u64,
    pub errors: u64,
    pub error_kinds: BTreeMap<String, u64>,
    /// The first error, in full, to tell what went wrong.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
    /// Length of the measured phase.
    pub duration_s: f64,
    /// `completed / duration_s`.
    pub rate_per_s: f64,
    pub latency_us: LatencySummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerFigures>,
    /// CPU seconds of the load client itself during the measured phase (if it is near
    /// `duration_s`, the client was the bottleneck).
    pub client_cpu_s: f64,
    /// CPU seconds the rest of the machine used during the measured phase (all busy time
    /// minus the server's and the client's): other tenants. High means noisy figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<IdleFigures>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatFigures>,
}

#[derive(Debug, Default, Serialize)]
pub struct ServerFigures {
    pub pids: Vec<u32>,
    /// utime + stime of the server processes during the measured phase.
    pub cpu_s: f64,
    pub cpu_us_per_op: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_ms_per_1000_logins: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_100k_messages: Option<f64>,
    /// `cpu_us_per_op` divided by the floor's (`--floor FILE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub floor_ratio: Option<f64>,
}

#[derive(Debug, Default, Serialize)]
pub struct IdleFigures {
    pub sessions: u64,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub kib_per_session: f64,
    /// After every session was closed again (how much the server gives back).
    pub rss_after_close_kib: u64,
    pub hold_s: f64,
}

#[derive(Debug, Default, Serialize)]
pub struct ChatFigures {
    /// `closed` (each message sent when the previous arrived) or `open` (fixed rate).
    pub mode: String,
    pub pairs: u64,
    /// Open loop: the rate asked for, and the rate the client managed to send.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offered_per_s: Option<f64>,
    pub sent: u64,
    pub delivered: u64,
    /// Sent in the measured phase but not received by the end of the grace period.
    pub lost: u64,
    pub sent_per_s: f64,
    /// Open loop: how late the client sent against its schedule (client overload shows here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub send_lag_us: Option<LatencySummary>,
}

impl Report {
    /// The client's CPU and the rest of the machine's over the measured phase; call after
    /// `server` is set.
    pub fn set_cpu(&mut self, me: &crate::measure::SelfCpu) {
        self.client_cpu_s = me.seconds();
        let server = self.server.as_ref().map(|s| s.cpu_s).unwrap_or(0.0);
        self.other_cpu_s = me
            .machine_seconds()
            .map(|m| (m - self.client_cpu_s - server).max(0.0));
    }

    pub fn count_error(&mut self, e: &BenchError) {
        self.errors += 1;
        *self.error_kinds.entry(e.kind()).or_default() += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e.to_string());
        }
    }

    /// Completed operations and the rate over the measured phase.
    pub fn fill(&mut self, completed: u64, elapsed: std::time::Duration) {
        self.completed = completed;
        self.duration_s = elapsed.as_secs_f64();
        self.rate_per_s = if self.duration_s > 0.0 {
            completed as f64 / self.duration_s
        } else {
            0.0
        };
    }

    /// What a pool of operations did: how many, how fast, what failed, how long each took.
    pub fn record_pool(&mut self, pool: crate::runner::PoolResult) {
        self.fill(pool.completed, pool.elapsed);
        self.add_errors(pool.error_kinds, pool.first_error);
        self.latency_us = crate::measure::summarize(pool.latencies);
    }

    pub fn add_errors(&mut self, kinds: BTreeMap<String, u64>, first: Option<String>) {
        for (k, n) in kinds {
            self.errors += n;
            *self.error_kinds.entry(k).or_default() += n;
        }
        if self.first_error.is_none() {
            self.first_error = first;
        }
    }

    pub fn param(&mut self, key: &str, v: impl Into<serde_json::Value>) {
        self.params.insert(key.to_owned(), v.into());
    }

    pub fn write_json(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| BenchError::Setup(format!("JSON: {e}")))?;
        std::fs::write(path, text + "\n")
            .map_err(|e| BenchError::Setup(format!("{}: {e}", path.display())))
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = Vec::new();
        let mut row = |k: &str, v: String| rows.push((k.to_owned(), v));
        let params: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        row("target", format!("{} ({})", self.target, self.domain));
        row(
            "tls / mechanism",
            format!("{} / {}", self.tls, self.mechanism),
        );
        row("parameters", params.join(" "));
        row(
            &format!("{}s completed", self.op),
            format!("{}   errors {}", self.completed, self.errors),
        );
        for (k, n) in &self.error_kinds {
            row("  error", format!("{n} × {k}"));
        }
        if let Some(e) = &self.first_error {
            row("  first error", e.clone());
        }
        row("measured phase", format!("{:.2} s", self.duration_s));
        row(
            &format!("{}s/s", self.op),
            format!("{:.0}", self.rate_per_s),
        );
        let l = &self.latency_us;
        if l.count > 0 {
            row(
                "latency",
                format!(
                    "p50 {}   p99 {}   p99.9 {}   max {}",
                    ms(l.p50_us),
                    ms(l.p99_us),
                    ms(l.p999_us),
                    ms(l.max_us)
                ),
            );
        }
        if let Some(c) = &self.chat {
            row(
                "messages",
                format!(
                    "{} loop, {} pairs: sent {} ({:.0}/s), delivered {}, lost {}",
                    c.mode, c.pairs, c.sent, c.sent_per_s, c.delivered, c.lost
                ),
            );
            if let Some(o) = c.offered_per_s {
                row("offered rate", format!("{o:.0}/s"));
            }
            if let Some(lag) = &c.send_lag_us {
                row(
                    "send lag",
                    format!("p50 {}   p99 {}", ms(lag.p50_us), ms(lag.p99_us)),
                );
            }
        }
        if let Some(i) = &self.idle {
            row(
                "server RSS",
                format!(
                    "{} KiB before, {} KiB with {} sessions, {} KiB after closing",
                    i.rss_before_kib, i.rss_after_kib, i.sessions, i.rss_after_close_kib
                ),
            );
            row("per session", format!("{:.1} KiB", i.kib_per_session));
        }
        if let Some(s) = &self.server {
            row(
                "server CPU",
                format!(
                    "{:.3} s (pids {:?}) = {:.1} µs per {}",
                    s.cpu_s, s.pids, s.cpu_us_per_op, self.op
                ),
            );
            if let Some(v) = s.cpu_ms_per_1000_logins {
                row("  per 1,000 logins", format!("{v:.1} ms"));
            }
            if let Some(v) = s.cpu_s_per_100k_messages {
                row("  per 100,000 messages", format!("{v:.2} s"));
            }
            if let Some(r) = s.floor_ratio {
                row("  vs bare TCP floor", format!("{r:.2}×"));
            }
        }
        row("client CPU", format!("{:.2} s", self.client_cpu_s));
        if let Some(o) = self.other_cpu_s {
            row("other processes' CPU", format!("{o:.2} s"));
        }
        let width = rows
            .iter()
            .map(|(k, _)| k.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = format!("== {}\n", self.scenario);
        for (k, v) in rows {
            let pad = width - k.chars().count();
            out.push_str(&format!("  {k}{}  {v}\n", " ".repeat(pad)));
        }
        out
    }
}

fn ms(us: f64) -> String {
    if us >= 1000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

/// One Markdown table from the JSON of several runs (the row is named after the file).
pub fn summary(files: &[std::path::PathBuf]) -> Result<String> {
    let mut out = String::from(
        "| run | scenario | tls / mechanism | parameters | ops/s | p50 | p99 | p99.9 | server CPU per op | KiB per session | errors | others' CPU |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for f in files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| BenchError::Setup(format!("{}: {e}", f.display())))?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| BenchError::Setup(format!("{}: {e}", f.display())))?;
        let s = |p: &str| {
            v.pointer(p)
                .map(|x| match x {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_default()
        };
        let n = |p: &str| v.pointer(p).and_then(|x| x.as_f64());
        let lat = |p: &str| n(p).map(ms).unwrap_or_default();
        let params = v
            .get("params")
            .and_then(|p| p.as_object())
            .map(|m| {
                m.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "count" | "body_size" | "mode"))
                    .map(|(k, x)| format!("{k}={}", x.to_string().trim_matches('"')))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default();
        let scenario = match v.pointer("/chat/mode").and_then(|m| m.as_str()) {
            Some(mode) => format!("{} ({mode} loop)", s("/scenario")),
            None => s("/scenario"),
        };
        let cpu = n("/server/cpu_us_per_op")
            .map(|c| format!("{c:.1} µs"))
            .unwrap_or_else(|| "–".into());
        let kib = n("/idle/kib_per_session")
            .map(|k| format!("{k:.1}"))
            .unwrap_or_else(|| "–".into());
        // Other tenants' load during the phase, in cores (0 = a quiet machine).
        let others = match (n("/other_cpu_s"), n("/duration_s")) {
            (Some(o), Some(d)) if d > 0.0 => format!("{:.2} cores", o / d),
            _ => "–".into(),
        };
        let name = f
            .file_stem()
            .map(|x| x.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push_str(&format!(
            "| {name} | {scenario} | {} / {} | {params} | {:.0} | {} | {} | {} | {cpu} | {kib} | {} | {others} |\n",
            s("/tls"),
            s("/mechanism"),
            n("/rate_per_s").unwrap_or(0.0),
            lat("/latency_us/p50_us"),
            lat("/latency_us/p99_us"),
            lat("/latency_us/p999_us"),
            s("/errors"),
        ));
    }
    Ok(out)
}
