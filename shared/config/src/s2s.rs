//! `[s2s]`: server-to-server settings (DESIGN.md D4).

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;

use crate::Problem;

/// Server-to-server settings (DESIGN.md D4), `[s2s]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S2sConfig {
    /// Pinned addresses of remote domains (`[s2s.routes]`), tried before DNS.
    pub routes: std::collections::HashMap<String, SocketAddr>,
    /// Time to connect and set up a stream (each address).
    pub connect_timeout: Duration,
    /// An outbound stream with nothing to send closes after this long.
    pub idle_timeout: Duration,
    /// Stanzas queued per remote domain while its stream is being set up.
    pub queue: usize,
    /// Remote domains a node has outbound streams (or attempts, DNS lookups) to at once.
    pub max_domains: usize,
}

impl Default for S2sConfig {
    fn default() -> Self {
        S2sConfig {
            routes: Default::default(),
            connect_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(600),
            queue: 512,
            max_domains: 1000,
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct RawS2s {
    #[serde(default)]
    routes: std::collections::BTreeMap<String, String>,
    connect_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    queue: Option<u64>,
    max_domains: Option<u64>,
}

pub(crate) fn s2s(raw: RawS2s, problems: &mut Vec<Problem>) -> S2sConfig {
    let d = S2sConfig::default();
    let mut routes = std::collections::HashMap::new();
    for (domain, addr) in raw.routes {
        match addr.parse::<SocketAddr>() {
            Ok(a) => {
                routes.insert(domain.to_ascii_lowercase(), a);
            }
            Err(_) => problems.push(Problem::new(
                format!("s2s.routes.{domain}"),
                format!("{addr:?} is not an IP:PORT address"),
            )),
        }
    }
    let mut positive = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => {
            problems.push(Problem::new(format!("s2s.{key}"), "must be at least 1"));
            default
        }
        Some(v) => v,
        None => default,
    };
    S2sConfig {
        routes,
        connect_timeout: Duration::from_secs(positive(
            "connect_timeout",
            raw.connect_timeout,
            d.connect_timeout.as_secs(),
        )),
        idle_timeout: Duration::from_secs(positive(
            "idle_timeout",
            raw.idle_timeout,
            d.idle_timeout.as_secs(),
        )),
        queue: usize::try_from(positive("queue", raw.queue, d.queue as u64)).unwrap_or(usize::MAX),
        max_domains: usize::try_from(positive(
            "max_domains",
            raw.max_domains,
            d.max_domains as u64,
        ))
        .unwrap_or(usize::MAX),
    }
}
