//! `[relay]`: what the master does with a login it does not keep, redirect or relay (DESIGN.md
//! D1, D1b), and the redirect modes a `[[node]]` may set for its own listeners.

use std::time::Duration;

use serde::Deserialize;

use crate::Problem;

/// What the master does with a login (DESIGN.md D1, D1b): per c2s listener, with a farm-wide
/// default in `[relay]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RedirectMode {
    /// Redirect; relay a user whose client came back without reaching its slave.
    Auto,
    /// Always redirect (`<see-other-host/>`, the iq:auth 302).
    Always,
    /// Never redirect: relay every login to its slave (slaves unreachable by clients).
    Never,
}

impl RedirectMode {
    pub fn parse(text: &str) -> Option<RedirectMode> {
        match text {
            "auto" => Some(RedirectMode::Auto),
            "always" => Some(RedirectMode::Always),
            "never" => Some(RedirectMode::Never),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            RedirectMode::Auto => "auto",
            RedirectMode::Always => "always",
            RedirectMode::Never => "never",
        }
    }
}

/// The master's relay of clients that do not follow redirects, `[relay]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelayConfig {
    /// Default for the master's c2s listeners (a `[[node]]` may override it).
    pub redirect: RedirectMode,
    /// `auto`: a login at the master this soon after a redirect, with no login at the slave
    /// in between, means the client did not follow it.
    pub window: Duration,
    /// `auto`: how long a user who needed the relay keeps being relayed (since its last
    /// relayed login).
    pub remember: Duration,
    /// Relayed sessions one master carries at once; more are redirected (`auto`, `always`)
    /// or refused with `resource-constraint` (`never`).
    pub max_sessions: usize,
    /// Users remembered (`remember`) and recently redirected (`window`), each; beyond this
    /// the oldest are forgotten.
    pub max_remembered: usize,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            redirect: RedirectMode::Auto,
            window: Duration::from_secs(600),
            remember: Duration::from_secs(30 * 24 * 3600),
            max_sessions: 10_000,
            max_remembered: 1_000_000,
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct RawRelay {
    redirect: Option<String>,
    window: Option<u64>,
    remember: Option<u64>,
    max_sessions: Option<u64>,
    max_remembered: Option<u64>,
}

pub(crate) fn redirect_mode(
    key: String,
    text: &str,
    problems: &mut Vec<Problem>,
) -> Option<RedirectMode> {
    let mode = RedirectMode::parse(text);
    if mode.is_none() {
        problems.push(Problem::new(
            key,
            format!("{text:?}: must be \"auto\", \"always\" or \"never\""),
        ));
    }
    mode
}

pub(crate) fn relay(raw: RawRelay, problems: &mut Vec<Problem>) -> RelayConfig {
    let d = RelayConfig::default();
    let mut positive = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => {
            problems.push(Problem::new(format!("relay.{key}"), "must be at least 1"));
            default
        }
        Some(v) => v,
        None => default,
    };
    let window = positive("window", raw.window, d.window.as_secs());
    // Days in the file: the time a user's "needs the relay" is kept.
    let remember = positive("remember", raw.remember, 30);
    let max_sessions = positive("max_sessions", raw.max_sessions, d.max_sessions as u64);
    let max_remembered = positive(
        "max_remembered",
        raw.max_remembered,
        d.max_remembered as u64,
    );
    let redirect = raw
        .redirect
        .and_then(|t| redirect_mode("relay.redirect".to_owned(), &t, problems))
        .unwrap_or(d.redirect);
    RelayConfig {
        redirect,
        window: Duration::from_secs(window),
        remember: Duration::from_secs(remember.saturating_mul(24 * 3600)),
        max_sessions: usize::try_from(max_sessions).unwrap_or(usize::MAX),
        max_remembered: usize::try_from(max_remembered).unwrap_or(usize::MAX),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;

    #[test]
    fn relay_defaults_modes_per_listener_and_mistakes() {
        let c = parse(&with_nodes(HEAD)).unwrap();
        assert_eq!(c.relay, RelayConfig::default());
        assert_eq!(c.relay.redirect, RedirectMode::Auto);
        assert_eq!(c.relay.remember, Duration::from_secs(30 * 86400));
        let master = c.master().clone();
        assert_eq!(master.redirect_mode(&c.relay, false), RedirectMode::Auto);

        // Farm-wide default, a listener's own, and the direct-TLS listener's own.
        let text = with_nodes(&format!(
            "{HEAD}[relay]\nredirect = \"always\"\nremember = 2\n"
        ))
        .replace(
            "s2s = \"127.0.0.1:5269\"",
            "s2s = \"127.0.0.1:5269\"\nc2s_tls = \"127.0.0.1:5223\"\nredirect_tls = \"never\"",
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.relay.remember, Duration::from_secs(2 * 86400));
        let m = c.master();
        assert_eq!(m.redirect_mode(&c.relay, false), RedirectMode::Always);
        assert_eq!(m.redirect_mode(&c.relay, true), RedirectMode::Never);

        assert_problem(
            &with_nodes(&format!("{HEAD}[relay]\nredirect = \"sometimes\"\n")),
            "relay.redirect",
            "\"auto\", \"always\" or \"never\"",
        );
        assert_problem(
            &with_nodes(&format!("{HEAD}[relay]\nmax_sessions = 0\n")),
            "relay.max_sessions",
            "at least 1",
        );
        assert_problem(
            &with_nodes(&format!("{HEAD}[relay]\nredirects = \"never\"\n")),
            "relay.redirects",
            "did you mean \"redirect\"",
        );
        // Slaves do not relay; redirect_tls needs the listener it is for.
        assert_problem(
            &with_nodes(HEAD).replace("weight = 2", "weight = 2\nredirect = \"never\""),
            "node[2].redirect",
            "only the master",
        );
        assert_problem(
            &with_nodes(HEAD).replace(
                "s2s = \"127.0.0.1:5269\"",
                "s2s = \"127.0.0.1:5269\"\nredirect_tls = \"never\"",
            ),
            "node[0].redirect_tls",
            "no c2s_tls",
        );
    }
}
