//! `[farm]`, the links between nodes (DESIGN.md D3), and the farm secret (`secret` or
//! `secret_file`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{Problem, TlsConfig};

/// The links between nodes (DESIGN.md D3), `[farm]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FarmLinkConfig {
    /// TLS on farm links (with the domain's certificate; the peer must present one the farm's
    /// CA signed). Off by default: links usually run on a private network.
    pub tls: bool,
    /// How often a link says it is alive.
    pub heartbeat: Duration,
    /// A link that has been silent this long is declared dead.
    pub dead_after: Duration,
    /// Frames kept per peer (queued, or sent and not yet acknowledged) before senders get
    /// `resource-constraint`.
    pub queue: usize,
    /// Bytes kept per peer, the same way.
    pub queue_bytes: usize,
    /// How long a link that is down keeps what was sent to its peer, to write it when the
    /// link is back; then each frame goes back to the node (a slave holds messages in its
    /// store, the rest is answered with an error). A peer down this long is taken for gone
    /// (its users' presence ends).
    pub hold: Duration,
    /// Messages and subscription requests a slave holds in its store for a node that is
    /// down, over all of that node's users, and for one user; one more gets
    /// `resource-constraint`.
    pub held_per_node: usize,
    pub held_per_user: usize,
    /// The CA that signed the nodes' certificates, trusted on TLS links (`farm.ca`; with
    /// `tls.generate`, the demo CA).
    pub ca: Option<PathBuf>,
    /// Heartbeats a node's link may miss (down that long) before the node is marked failed
    /// (a node whose port refuses connections is failed at once).
    pub faildetect: u32,
    /// How often a failed node is tried again.
    pub retry: Duration,
    /// A slave stopped with SIGTERM first moves its sessions to their next slave (with
    /// central data), within this long; zero: it stops at once.
    pub drain_on_stop: Duration,
}

impl FarmLinkConfig {
    /// How long a link is down before its node is marked failed.
    pub fn fail_after(&self) -> Duration {
        self.heartbeat * self.faildetect
    }
}

impl Default for FarmLinkConfig {
    fn default() -> Self {
        FarmLinkConfig {
            tls: false,
            heartbeat: Duration::from_secs(5),
            dead_after: Duration::from_secs(15),
            queue: 4096,
            queue_bytes: 32 << 20,
            hold: Duration::from_secs(30),
            held_per_node: 100_000,
            held_per_user: 1_000,
            ca: None,
            faildetect: 3,
            retry: Duration::from_secs(5),
            drain_on_stop: Duration::from_secs(30),
        }
    }
}

#[derive(Deserialize, Default)]
pub(crate) struct RawFarm {
    tls: Option<bool>,
    heartbeat: Option<u64>,
    dead_after: Option<u64>,
    queue: Option<u64>,
    queue_bytes: Option<u64>,
    hold: Option<u64>,
    held_per_node: Option<u64>,
    held_per_user: Option<u64>,
    ca: Option<PathBuf>,
    faildetect: Option<u64>,
    retry: Option<u64>,
    drain_on_stop: Option<u64>,
}

pub(crate) fn secret(
    inline: Option<String>,
    file: Option<PathBuf>,
    source: &Path,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let problem = |problems: &mut Vec<Problem>, key: &str, message: String| {
        problems.push(Problem::new(key, message));
        None
    };
    match (inline, file) {
        (Some(_), Some(_)) => problem(
            problems,
            "secret",
            "set either secret or secret_file, not both".to_owned(),
        ),
        (None, None) => problem(
            problems,
            "secret",
            "missing: set secret_file (or secret, for a demo)".to_owned(),
        ),
        (Some(secret), None) if secret.trim().is_empty() => {
            problem(problems, "secret", "empty".to_owned())
        }
        (Some(secret), None) => Some(secret),
        (None, Some(file)) => {
            let path = source.parent().unwrap_or(Path::new("")).join(file);
            match std::fs::read_to_string(&path) {
                Err(e) => problem(
                    problems,
                    "secret_file",
                    format!("cannot read {}: {e}", path.display()),
                ),
                Ok(text) => match text.lines().next().map(str::trim) {
                    Some(line) if !line.is_empty() => Some(line.to_owned()),
                    _ => problem(
                        problems,
                        "secret_file",
                        format!("the first line of {} is empty", path.display()),
                    ),
                },
            }
        }
    }
}

pub(crate) fn farm_links(
    raw: RawFarm,
    tls: &TlsConfig,
    data_dir: &Path,
    problems: &mut Vec<Problem>,
) -> FarmLinkConfig {
    let d = FarmLinkConfig::default();
    let mut positive = |key: &str, value: Option<u64>, default: u64| match value {
        Some(0) => {
            problems.push(Problem::new(format!("farm.{key}"), "must be at least 1"));
            default
        }
        Some(v) => v,
        None => default,
    };
    let heartbeat = positive("heartbeat", raw.heartbeat, d.heartbeat.as_secs());
    let dead_after = positive("dead_after", raw.dead_after, d.dead_after.as_secs());
    let queue = positive("queue", raw.queue, d.queue as u64);
    let queue_bytes = positive("queue_bytes", raw.queue_bytes, d.queue_bytes as u64);
    let hold = positive("hold", raw.hold, d.hold.as_secs());
    let held_per_node = positive("held_per_node", raw.held_per_node, d.held_per_node as u64);
    let held_per_user = positive("held_per_user", raw.held_per_user, d.held_per_user as u64);
    let faildetect = positive("faildetect", raw.faildetect, u64::from(d.faildetect));
    let retry = positive("retry", raw.retry, d.retry.as_secs());
    if dead_after <= heartbeat {
        problems.push(Problem::new(
            "farm.dead_after",
            format!(
                "{dead_after} s must be longer than farm.heartbeat ({heartbeat} s), or every \
                 link is declared dead between two heartbeats"
            ),
        ));
    }
    let link_tls = raw.tls.unwrap_or(d.tls);
    let ca = match raw.ca {
        Some(p) => Some(data_dir.join(p)),
        None if tls.generate => Some(tls.ca.clone()),
        None => None,
    };
    if link_tls && ca.is_none() {
        problems.push(Problem::new(
            "farm.ca",
            "missing: with farm.tls = true, the CA that signed the nodes' certificates",
        ));
    }
    FarmLinkConfig {
        ca,
        tls: link_tls,
        heartbeat: Duration::from_secs(heartbeat),
        dead_after: Duration::from_secs(dead_after),
        queue: usize::try_from(queue).unwrap_or(usize::MAX),
        queue_bytes: usize::try_from(queue_bytes).unwrap_or(usize::MAX),
        hold: Duration::from_secs(hold),
        held_per_node: usize::try_from(held_per_node).unwrap_or(usize::MAX),
        held_per_user: usize::try_from(held_per_user).unwrap_or(usize::MAX),
        faildetect: u32::try_from(faildetect).unwrap_or(u32::MAX),
        retry: Duration::from_secs(retry),
        drain_on_stop: raw
            .drain_on_stop
            .map_or(d.drain_on_stop, Duration::from_secs),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::FarmConfig;
    use crate::test_support::*;

    #[test]
    fn farm_links_section() {
        let config = parse(&with_nodes(HEAD)).unwrap();
        assert_eq!(config.farm.heartbeat, Duration::from_secs(5));
        assert_eq!(config.farm.dead_after, Duration::from_secs(15));
        // With generated certificates the demo CA is the links' CA.
        assert_eq!(config.farm.ca.as_deref(), Some(config.tls.ca.as_path()));
        let farm = |body: &str| with_nodes(&format!("{HEAD}[farm]\n{body}\n"));
        assert_problem(
            &farm("heartbeat = 10\ndead_after = 10"),
            "farm.dead_after",
            "longer than farm.heartbeat",
        );
        assert_problem(&farm("queue = 0"), "farm.queue", "at least 1");
        let no_ca =
            with_nodes(&HEAD.replace("generate = true", "generate = true\n[farm]\ntls = true"))
                .replace(
                    "generate = true",
                    "generate = false\ncert = \"/dev/null\"\nkey = \"/dev/null\"",
                );
        assert_problem(&no_ca, "farm.ca", "missing");
    }

    #[test]
    fn secret_problems() {
        assert_problem(&changed("secret = \"s3cret\"\n", ""), "secret", "missing");
        assert_problem(&changed("\"s3cret\"", "\" \""), "secret", "empty");
        assert_problem(
            &changed("secret = \"s3cret\"", "secret = \"a\"\nsecret_file = \"f\""),
            "secret",
            "not both",
        );
        assert_problem(
            &changed(
                "secret = \"s3cret\"",
                "secret_file = \"/nonexistent/farm.secret\"",
            ),
            "secret_file",
            "cannot read /nonexistent/farm.secret",
        );
    }

    #[test]
    fn secret_file_is_read_relative_to_the_config() {
        let dir = scratch_dir("secret");
        std::fs::write(dir.join("farm.secret"), "  from-file  \nsecond line\n").unwrap();
        std::fs::write(dir.join("empty.secret"), "\n").unwrap();
        let text = changed("secret = \"s3cret\"", "secret_file = \"farm.secret\"");
        std::fs::write(dir.join("farm.toml"), &text).unwrap();
        let config = FarmConfig::load(&dir.join("farm.toml"), None).unwrap();
        assert_eq!(config.secret, "from-file");
        let text = changed("secret = \"s3cret\"", "secret_file = \"empty.secret\"");
        let err = FarmConfig::from_str(&text, &dir.join("farm.toml"), None).unwrap_err();
        assert!(
            err.to_string().contains("secret_file: the first line of"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
