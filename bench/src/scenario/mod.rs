//! The scenarios, and what they share: the target, the user names, the unmeasured discovery
//! pass, the server figures.

pub mod chat;
pub mod floor;
pub mod idle;
pub mod login;
pub mod redirect;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use crate::client::{self, ClientConfig};
use crate::error::{BenchError, Result};
use crate::measure::{CpuSnapshot, Servers};
use crate::report::{Report, ServerFigures};
use crate::runner::run_pool;

/// User names `pattern` with `{n}` replaced by `first`, `first + 1`, … (`count` names, reused
/// round-robin when a run needs more).
#[derive(Clone, Debug)]
pub struct Users {
    pub pattern: String,
    pub first: u64,
    pub count: u64,
}

impl Users {
    pub fn name(&self, i: u64) -> String {
        let n = self.first + i % self.count.max(1);
        self.pattern.replace("{n}", &n.to_string())
    }
}

/// Everything a scenario needs from the command line.
pub struct Ctx {
    pub cfg: Arc<ClientConfig>,
    /// Where every client starts (the master, or a single server).
    pub start: SocketAddr,
    pub users: Users,
    pub servers: Servers,
    /// Bound of the measured phase.
    pub duration: Duration,
    pub tls_label: String,
}

impl Ctx {
    pub fn report(&self, scenario: &str, op: &str) -> Report {
        Report {
            scenario: scenario.to_owned(),
            op: op.to_owned(),
            target: self.start.to_string(),
            domain: self.cfg.domain.clone(),
            tls: self.tls_label.clone(),
            mechanism: self.cfg.mechanism.name().to_owned(),
            ..Default::default()
        }
    }

    pub fn deadline(&self) -> Instant {
        Instant::now() + self.duration
    }

    pub fn cpu(&self) -> Result<Option<CpuSnapshot>> {
        if self.servers.is_empty() {
            return Ok(None);
        }
        self.servers.cpu().map(Some)
    }

    /// Server CPU since `before` for `logins` logins, also per 1000 (the login scenarios).
    pub fn login_figures(
        &self,
        rep: &mut Report,
        before: Option<&CpuSnapshot>,
        logins: u64,
    ) -> Result<()> {
        rep.server = self.server_figures(before, logins)?;
        if let Some(s) = rep.server.as_mut() {
            s.cpu_ms_per_1000_logins = Some(s.cpu_us_per_op);
        }
        Ok(())
    }

    /// Server CPU since `before`, per operation.
    pub fn server_figures(
        &self,
        before: Option<&CpuSnapshot>,
        ops: u64,
    ) -> Result<Option<ServerFigures>> {
        let Some(before) = before else {
            return Ok(None);
        };
        let cpu_s = self.servers.cpu_since(before)?;
        let per_op = if ops == 0 {
            0.0
        } else {
            cpu_s * 1e6 / ops as f64
        };
        Ok(Some(ServerFigures {
            pids: self.servers.pids.clone(),
            cpu_s,
            cpu_us_per_op: per_op,
            ..Default::default()
        }))
    }

    /// The unmeasured first pass: for each of the first `n` users, find the server that serves
    /// it (following redirects) and check its password; for SCRAM, this also caches the
    /// client's PBKDF2 result. Returns each user's server; fails when no user could log in.
    pub async fn discover(
        &self,
        n: u64,
        concurrency: usize,
    ) -> Result<HashMap<String, SocketAddr>> {
        let found = Arc::new(Mutex::new(HashMap::new()));
        let (cfg, start, users, f) = (
            self.cfg.clone(),
            self.start,
            self.users.clone(),
            found.clone(),
        );
        let deadline = Instant::now() + Duration::from_secs(crate::MAX_SETUP_SECS);
        let pool = run_pool(concurrency, n, deadline, move |i, _| {
            let (cfg, users, f) = (cfg.clone(), users.clone(), f.clone());
            async move {
                let user = users.name(i);
                let addr = client::discover(&cfg, start, &user).await?;
                if let Ok(mut m) = f.lock() {
                    m.insert(user, addr);
                }
                Ok(Duration::ZERO)
            }
        })
        .await;
        let found = found.lock().map(|m| m.clone()).unwrap_or_default();
        let errors = pool.errors();
        if errors > 0 {
            let first = pool.first_error.unwrap_or_default();
            let hint = if first.contains("not-authorized") {
                " — do the users exist with this password? (bench/setup-users.sh)"
            } else if first.contains("redirected") {
                " — add --follow-redirects"
            } else {
                ""
            };
            return Err(BenchError::Setup(format!(
                "discovery: {errors} of {n} users could not log in; first error: {first}{hint}"
            )));
        }
        Ok(found)
    }
}
