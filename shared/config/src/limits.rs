//! `[limits]`, bounds on what a peer may make a node do (with the per-session shaper), and
//! `[auth_limits]`, the brute-force limiter.

use std::time::Duration;

use serde::Deserialize;

use crate::Problem;

/// Bounds on what a peer may make a node do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest stanza in bytes before authentication (small, like ejabberd's pre-auth limit).
    pub max_stanza_pre_auth: usize,
    pub max_stanza: usize,
    /// Deepest element nesting.
    pub max_depth: usize,
    /// Time a new connection may take to open its stream.
    pub stream_open_timeout: Duration,
    /// Time from connect to finished authentication.
    pub login_timeout: Duration,
    /// Per node.
    pub max_connections: usize,
    /// Time to wait for streams to close on stop.
    pub shutdown_grace: Duration,
    /// Time one write may wait for a peer that takes no data; then its stream is dropped.
    pub write_timeout: Duration,
    /// Offline messages kept per user (XEP-0160); more are refused.
    pub offline_quota: usize,
    /// Resources one account may have bound at once (ejabberd's `max_user_sessions`); one
    /// more is refused with `resource-constraint` (RFC 6120 §7.6.2.2).
    pub max_resources: usize,
    /// Stanzas a session with stream management (XEP-0198) may leave unacknowledged; one more
    /// ends it with `resource-constraint` (what it never acknowledged goes to the user's other
    /// resources or offline storage).
    pub max_unacked: usize,
    /// How long a session with resumable stream management (XEP-0198) waits for its client
    /// to resume after its connection is lost; then it ends as any session does.
    pub resume_timeout: Duration,
    /// What one client session may send: stanzas and bytes per second, with bursts; past
    /// them the session stops reading for a while (`jabberfarm_net::shaper`). A rate of 0: no limit.
    pub session: ShaperConfig,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_stanza_pre_auth: 10_240,
            max_stanza: 262_144,
            max_depth: 64,
            stream_open_timeout: Duration::from_secs(30),
            login_timeout: Duration::from_secs(60),
            max_connections: 18_000,
            shutdown_grace: Duration::from_secs(5),
            write_timeout: Duration::from_secs(60),
            offline_quota: 1000,
            max_resources: 10,
            max_unacked: 1000,
            resume_timeout: Duration::from_secs(300),
            session: ShaperConfig {
                stanzas_per_second: 100,
                stanza_burst: 1000,
                bytes_per_second: 256 * 1024,
                byte_burst: 1024 * 1024,
            },
        }
    }
}

/// `limits.session_*`: sustained rates and bursts (a rate of 0 turns that bucket off).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShaperConfig {
    pub stanzas_per_second: u64,
    pub stanza_burst: u64,
    pub bytes_per_second: u64,
    pub byte_burst: u64,
}

#[derive(Deserialize, Default)]
pub(crate) struct RawLimits {
    max_stanza_pre_auth: Option<u64>,
    max_stanza: Option<u64>,
    max_depth: Option<u64>,
    stream_open_timeout: Option<u64>,
    login_timeout: Option<u64>,
    max_connections: Option<u64>,
    shutdown_grace: Option<u64>,
    write_timeout: Option<u64>,
    offline_quota: Option<u64>,
    max_resources: Option<u64>,
    max_unacked: Option<u64>,
    resume_timeout: Option<u64>,
    session_stanzas_per_second: Option<u64>,
    session_stanza_burst: Option<u64>,
    session_bytes_per_second: Option<u64>,
    session_byte_burst: Option<u64>,
}

pub(crate) fn limits(raw: RawLimits, problems: &mut Vec<Problem>) -> Limits {
    let mut positive = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => {
            problems.push(Problem::new(format!("limits.{key}"), "must be at least 1"));
            default
        }
        Some(v) => v,
        None => default,
    };
    let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
    let d = Limits::default();
    let max_stanza_pre_auth = positive(
        "max_stanza_pre_auth",
        raw.max_stanza_pre_auth,
        d.max_stanza_pre_auth as u64,
    );
    let max_stanza = positive("max_stanza", raw.max_stanza, d.max_stanza as u64);
    let max_depth = positive("max_depth", raw.max_depth, d.max_depth as u64);
    let stream_open_timeout = positive(
        "stream_open_timeout",
        raw.stream_open_timeout,
        d.stream_open_timeout.as_secs(),
    );
    let login_timeout = positive(
        "login_timeout",
        raw.login_timeout,
        d.login_timeout.as_secs(),
    );
    let max_connections = positive(
        "max_connections",
        raw.max_connections,
        d.max_connections as u64,
    );
    let write_timeout = positive(
        "write_timeout",
        raw.write_timeout,
        d.write_timeout.as_secs(),
    );
    let max_resources = positive("max_resources", raw.max_resources, d.max_resources as u64);
    let max_unacked = positive("max_unacked", raw.max_unacked, d.max_unacked as u64);
    let resume_timeout = positive(
        "resume_timeout",
        raw.resume_timeout,
        d.resume_timeout.as_secs(),
    );
    let session = ShaperConfig {
        // 0 is fine: no limit.
        stanzas_per_second: raw
            .session_stanzas_per_second
            .unwrap_or(d.session.stanzas_per_second),
        stanza_burst: positive(
            "session_stanza_burst",
            raw.session_stanza_burst,
            d.session.stanza_burst,
        ),
        bytes_per_second: raw
            .session_bytes_per_second
            .unwrap_or(d.session.bytes_per_second),
        byte_burst: positive(
            "session_byte_burst",
            raw.session_byte_burst,
            d.session.byte_burst,
        ),
    };
    if max_stanza_pre_auth > max_stanza {
        problems.push(Problem::new(
            "limits.max_stanza_pre_auth",
            format!(
                "{max_stanza_pre_auth} bytes is more than limits.max_stanza ({max_stanza}); \
                 the limit before authentication should be the smaller one"
            ),
        ));
    }
    if stream_open_timeout > login_timeout {
        problems.push(Problem::new(
            "limits.stream_open_timeout",
            format!(
                "{stream_open_timeout} s is longer than limits.login_timeout \
                 ({login_timeout} s), which includes opening the stream"
            ),
        ));
    }
    Limits {
        max_stanza_pre_auth: size(max_stanza_pre_auth),
        max_stanza: size(max_stanza),
        max_depth: size(max_depth),
        stream_open_timeout: Duration::from_secs(stream_open_timeout),
        login_timeout: Duration::from_secs(login_timeout),
        max_connections: size(max_connections),
        // 0 is fine: stop without waiting.
        shutdown_grace: raw
            .shutdown_grace
            .map_or(d.shutdown_grace, Duration::from_secs),
        write_timeout: Duration::from_secs(write_timeout),
        // 0 is fine: no offline storage.
        offline_quota: raw.offline_quota.map_or(d.offline_quota, |q| {
            usize::try_from(q).unwrap_or(usize::MAX)
        }),
        max_resources: size(max_resources),
        max_unacked: size(max_unacked),
        resume_timeout: Duration::from_secs(resume_timeout),
        session,
    }
}

/// The brute-force limiter, `[auth_limits]`: failed logins counted per client address (IPv6
/// per /64) and per account; past the allowance, each further attempt must wait, the wait
/// doubling with every failure. An attempt that comes too early is refused without checking
/// the password (`temporary-auth-failure`, with the wait in the text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthLimits {
    /// `false`: no limiter at all.
    pub enabled: bool,
    /// Failures from one address (any accounts) before it must wait.
    pub per_address: u32,
    /// Failures for one account (from any address) before it must wait.
    pub per_account: u32,
    /// The first wait; each further failure doubles it.
    pub wait: Duration,
    pub max_wait: Duration,
    /// A record with no failure for this long is forgotten.
    pub forget: Duration,
    /// Networks never limited (a webmail gateway, monitoring); the relayed client's own
    /// address is what counts, not the master's.
    pub exempt: Vec<ipnet::IpNet>,
    /// Addresses and accounts tracked at once, each.
    pub max_tracked: usize,
}

impl Default for AuthLimits {
    fn default() -> Self {
        AuthLimits {
            enabled: true,
            per_address: 10,
            per_account: 5,
            wait: Duration::from_secs(2),
            max_wait: Duration::from_secs(300),
            forget: Duration::from_secs(3600),
            exempt: Vec::new(),
            max_tracked: 100_000,
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct RawAuthLimits {
    enabled: Option<bool>,
    per_address: Option<u32>,
    per_account: Option<u32>,
    wait: Option<u64>,
    max_wait: Option<u64>,
    forget: Option<u64>,
    exempt: Option<Vec<String>>,
    max_tracked: Option<u64>,
}

pub(crate) fn auth_limits(raw: RawAuthLimits, problems: &mut Vec<Problem>) -> AuthLimits {
    let d = AuthLimits::default();
    let mut at_least_one = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => {
            problems.push(Problem::new(
                format!("auth_limits.{key}"),
                "must be at least 1 (set auth_limits.enabled = false for no limiter)",
            ));
            default
        }
        Some(v) => v,
        None => default,
    };
    let per_address = at_least_one(
        "per_address",
        raw.per_address.map(u64::from),
        u64::from(d.per_address),
    );
    let per_account = at_least_one(
        "per_account",
        raw.per_account.map(u64::from),
        u64::from(d.per_account),
    );
    let wait = at_least_one("wait", raw.wait, d.wait.as_secs());
    let max_wait = at_least_one("max_wait", raw.max_wait, d.max_wait.as_secs());
    let forget = at_least_one("forget", raw.forget, d.forget.as_secs());
    let max_tracked = at_least_one("max_tracked", raw.max_tracked, d.max_tracked as u64);
    if wait > max_wait {
        problems.push(Problem::new(
            "auth_limits.wait",
            format!("{wait} s is longer than auth_limits.max_wait ({max_wait} s)"),
        ));
    }
    if forget < max_wait {
        problems.push(Problem::new(
            "auth_limits.forget",
            format!(
                "{forget} s is shorter than auth_limits.max_wait ({max_wait} s): a record \
                 would be forgotten before its wait is over"
            ),
        ));
    }
    let mut exempt = Vec::new();
    for (i, net) in raw.exempt.unwrap_or_default().iter().enumerate() {
        let parsed = net
            .parse::<ipnet::IpNet>()
            .or_else(|_| net.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
        match parsed {
            Ok(n) => exempt.push(n.trunc()),
            Err(_) => problems.push(Problem::new(
                format!("auth_limits.exempt[{i}]"),
                format!("{net:?} is not an address or a network (e.g. \"192.0.2.0/24\", \"2001:db8::/48\")"),
            )),
        }
    }
    AuthLimits {
        enabled: raw.enabled.unwrap_or(d.enabled),
        per_address: u32::try_from(per_address).unwrap_or(u32::MAX),
        per_account: u32::try_from(per_account).unwrap_or(u32::MAX),
        wait: Duration::from_secs(wait),
        max_wait: Duration::from_secs(max_wait),
        forget: Duration::from_secs(forget),
        exempt,
        max_tracked: usize::try_from(max_tracked).unwrap_or(usize::MAX),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;

    #[test]
    fn limits_that_make_no_sense() {
        let text = |limits: &str| format!("{}[limits]\n{limits}\n", with_nodes(HEAD));
        assert_problem(
            &text("max_stanza_pre_auth = 300000"),
            "limits.max_stanza_pre_auth",
            "more than limits.max_stanza",
        );
        for key in [
            "max_stanza",
            "max_depth",
            "login_timeout",
            "max_connections",
        ] {
            assert_problem(
                &text(&format!("{key} = 0")),
                &format!("limits.{key}"),
                "at least 1",
            );
        }
        assert_problem(
            &text("stream_open_timeout = 90"),
            "limits.stream_open_timeout",
            "longer than limits.login_timeout",
        );
        let config = parse(&text("shutdown_grace = 0\nmax_stanza = 1000000")).unwrap();
        assert_eq!(config.limits.shutdown_grace, Duration::ZERO);
        assert_eq!(config.limits.max_stanza, 1_000_000);
    }

    #[test]
    fn auth_limits_defaults_exempt_networks_and_mistakes() {
        let c = parse(&with_nodes(HEAD)).unwrap();
        assert_eq!(c.auth_limits, AuthLimits::default());
        let c = parse(&with_nodes(&format!(
            "{HEAD}[auth_limits]\nper_account = 3\nexempt = [\"127.0.0.0/8\", \"2001:db8::1\", \"10.1.2.3/8\"]\n"
        )))
        .unwrap();
        assert_eq!(c.auth_limits.per_account, 3);
        let exempt: Vec<String> = c.auth_limits.exempt.iter().map(|n| n.to_string()).collect();
        // A lone address is its own network; host bits are dropped.
        assert_eq!(exempt, ["127.0.0.0/8", "2001:db8::1/128", "10.0.0.0/8"]);
        assert_problem(
            &with_nodes(&format!("{HEAD}[auth_limits]\nexempt = [\"localhost\"]\n")),
            "auth_limits.exempt[0]",
            "not an address or a network",
        );
        assert_problem(
            &with_nodes(&format!("{HEAD}[auth_limits]\nper_address = 0\n")),
            "auth_limits.per_address",
            "enabled = false",
        );
        assert_problem(
            &with_nodes(&format!("{HEAD}[auth_limits]\nwait = 600\n")),
            "auth_limits.wait",
            "longer than auth_limits.max_wait",
        );
        assert_problem(
            &with_nodes(&format!("{HEAD}[auth_limits]\nforget = 60\n")),
            "auth_limits.forget",
            "forgotten before its wait is over",
        );
    }
}
