//! The farm's TOML config (`conf/farm.toml` documents every key): types, loading, validation.
//!
//! One file describes the whole farm; every node reads the same file and picks its own
//! `[[node]]` entry. Loading checks everything at once and reports every problem with the key
//! that caused it (`jabberfarm check` prints them), so a config that loads is one the farm can
//! run: one master, at least one slave, no two listeners on one address, a routing table that
//! covers every user (see [`jabberfarm_proto::routing`]), and certificate files that exist.
//!
//! Relative paths: `data_dir` is relative to the working directory; `secret_file` to the config
//! file's directory; `tls.cert`, `tls.key` and `storage.path` to the data dir.
//!
//! # From TOML to a checked config
//!
//! 1. **TOML.** The text is parsed twice: into a `toml::Table`, which `keys.rs` walks for keys
//!    nobody knows (with a "did you mean" hint), and into `RawConfig`, the file as written,
//!    where every key is optional, so that a missing one becomes a [`Problem`] next to all the
//!    others instead of serde stopping at the first. A file that is not TOML, or has a value
//!    of the wrong type, is a [`ConfigError::Toml`].
//! 2. **Typed config.** `build` (in `lib.rs`) hands each section to its module, which checks
//!    it, fills in the defaults and returns the typed config, pushing a [`Problem`] that names
//!    the key for every mistake and going on:
//!    - `farm.rs`: `secret` / `secret_file`, and `[farm]` → [`FarmLinkConfig`];
//!    - `tls.rs`: `[tls]` → [`TlsConfig`] (and whether its files exist);
//!    - `limits.rs`: `[limits]` → [`Limits`], [`ShaperConfig`]; `[auth_limits]` →
//!      [`AuthLimits`];
//!    - `storage.rs` with `storage/mysql.rs` and `storage/ldap.rs`: `[storage]`,
//!      `[storage.mysql]`, `[storage.ldap]` → [`StorageConfig`];
//!    - `s2s.rs`: `[s2s]` → [`S2sConfig`];
//!    - `relay.rs`: `[relay]` → [`RelayConfig`], [`RedirectMode`];
//!    - `rebalance.rs`: `[rebalance]` → [`RebalanceConfig`];
//!    - `nodes.rs`: `[[node]]` → [`NodeConfig`], [`Role`], and the checks across nodes (one
//!      master, at least one slave, unique names, no two listeners on one address);
//!    - `routing.rs`: `[routing]` → a [`RoutingTable`] over the declared slaves.
//!
//!    `lib.rs` has the rest: [`FarmConfig`] with [`load`](FarmConfig::load) and
//!    [`from_str`](FarmConfig::from_str), `build`, `domain`, [`Problem`] and [`ConfigError`].
//! 3. **Validation.** With no problem at all the result is a [`FarmConfig`]; otherwise
//!    [`ConfigError::Invalid`] with every problem, one per line. `jabberfarm check` prints
//!    that, or, for a config that loads, what [`FarmConfig::check_files`] finds.
//! 4. **At run time.** The nodes, the routing table and its fingerprint become a [`Topology`]
//!    (`topology.rs`), held in one [`SharedTopology`] per node: the one value every runtime
//!    reader loads, and the one that live rebalancing replaces.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use jabberfarm_proto::routing::RoutingTable;

mod farm;
mod keys;
mod limits;
mod nodes;
mod rebalance;
mod relay;
mod routing;
mod s2s;
mod storage;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod test_support;
mod tls;
mod topology;

pub use farm::FarmLinkConfig;
pub use limits::{AuthLimits, Limits, ShaperConfig};
pub use nodes::{Drain, NodeConfig, Role};
pub use rebalance::RebalanceConfig;
pub use relay::{RedirectMode, RelayConfig};
pub use s2s::S2sConfig;
pub use storage::{
    ImDataConfig, LdapAuth, LdapConfig, MysqlAccounts, MysqlConfig, PasswordFormat, StorageBackend,
    StorageConfig, redact_url_password,
};
pub use tls::TlsConfig;
pub use topology::{SharedTopology, Topology, live_change_refusals};

use farm::{RawFarm, farm_links, secret};
use keys::unknown_keys;
use limits::{RawAuthLimits, RawLimits, auth_limits, limits};
use nodes::{Declared, RawNode, nodes, parse_role};
use rebalance::{RawRebalance, rebalance};
use relay::{RawRelay, relay};
use routing::{RawRouting, routing};
use s2s::{RawS2s, s2s};
use storage::{RawStorage, storage};
use tls::{RawTls, tls, tls_file_problems};

/// The data dir when neither the config nor `--data-dir` names one.
pub const DEFAULT_DATA_DIR: &str = "jabberfarm-data";

/// A loaded, validated farm config.
#[derive(Clone, PartialEq, Eq)]
pub struct FarmConfig {
    /// The public XMPP domain the whole farm serves, normalised (nameprep).
    pub domain: String,
    /// The farm secret, resolved from `secret` or `secret_file`. Never logged.
    pub secret: String,
    pub data_dir: PathBuf,
    pub tls: TlsConfig,
    pub limits: Limits,
    pub routing: RoutingTable,
    pub storage: StorageConfig,
    pub nodes: Vec<NodeConfig>,
    pub farm: FarmLinkConfig,
    pub s2s: S2sConfig,
    pub relay: RelayConfig,
    pub rebalance: RebalanceConfig,
    pub auth_limits: AuthLimits,
    /// The file this was loaded from, for messages.
    pub source: PathBuf,
}

impl fmt::Debug for FarmConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FarmConfig")
            .field("domain", &self.domain)
            .field("secret", &"<redacted>")
            .field("data_dir", &self.data_dir)
            .field("tls", &self.tls)
            .field("limits", &self.limits)
            .field("routing", &self.routing)
            .field("storage", &self.storage)
            .field("nodes", &self.nodes)
            .field("relay", &self.relay)
            .field("rebalance", &self.rebalance)
            .field("auth_limits", &self.auth_limits)
            .field("source", &self.source)
            .finish()
    }
}

/// One thing wrong with a config, and the key that caused it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `node[2].c2s`, `routing.ranges`, `tls.cert`, … (empty for the file as a whole).
    pub key: String,
    pub message: String,
}

impl Problem {
    pub(crate) fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Not TOML, or a value of the wrong type; the message has the line and column.
    #[error("{}: {message}", path.display())]
    Toml { path: PathBuf, message: String },
    /// Every problem found, one per line in `Display`.
    #[error("{}", list_problems(path, problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list_problems(path: &Path, problems: &[Problem]) -> String {
    let lines: Vec<String> = problems
        .iter()
        .map(|p| format!("{}: {p}", path.display()))
        .collect();
    lines.join("\n")
}

impl FarmConfig {
    /// Reads and validates `path`. `data_dir_override` (the CLI's `--data-dir`) wins over the
    /// file's `data_dir`.
    pub fn load(path: &Path, data_dir_override: Option<&Path>) -> Result<FarmConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_owned(),
            source,
        })?;
        FarmConfig::from_str(&text, path, data_dir_override)
    }

    /// Validates a config text; `source` names it in messages and anchors `secret_file`.
    /// Reads the secret file and checks that certificate files exist.
    pub fn from_str(
        text: &str,
        source: &Path,
        data_dir_override: Option<&Path>,
    ) -> Result<FarmConfig, ConfigError> {
        let toml_error = |e: toml::de::Error| ConfigError::Toml {
            path: source.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        };
        let doc: toml::Table = toml::from_str(text).map_err(toml_error)?;
        let mut problems = unknown_keys(&doc);
        let raw: RawConfig = toml::from_str(text).map_err(toml_error)?;
        let built = build(raw, source, data_dir_override, &mut problems);
        match built {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(ConfigError::Invalid {
                path: source.to_owned(),
                problems,
            }),
        }
    }

    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The farm's shape as this file describes it (epoch 0), for a node's [`SharedTopology`].
    pub fn topology(&self) -> Topology {
        Topology::of(self)
    }

    /// The primary master: the first `[[node]]` with role master. Every master takes logins
    /// and remote servers alike; the primary is the one that hands out topology changes
    /// (`reload`, `drain`).
    ///
    /// # Panics
    /// If `nodes` is empty, which a loaded config never is (it has a master).
    pub fn master(&self) -> &NodeConfig {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Master)
            .unwrap_or(&self.nodes[0])
    }

    /// Every master, the primary first.
    pub fn masters(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().filter(|n| n.role == Role::Master)
    }

    pub fn slaves(&self) -> impl Iterator<Item = &NodeConfig> {
        self.nodes.iter().filter(|n| n.role == Role::Slave)
    }

    /// Checks what depends on the filesystem and may change after loading: the certificate
    /// and key exist (unless `tls.generate`). [`load`](Self::load) already ran this once.
    pub fn check_files(&self) -> Vec<Problem> {
        tls_file_problems(&self.tls)
    }
}

// ---- the file as written -------------------------------------------------------------------
//
// Everything optional, so that a missing key becomes a Problem next to all the others instead
// of serde stopping at the first one. Unknown keys are found by `unknown_keys`, which reads the
// field lists off these structs: `RawConfig` below, and the `Raw*` struct of each section in
// its module.

#[derive(Deserialize)]
struct RawConfig {
    domain: Option<String>,
    secret: Option<String>,
    secret_file: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    limits: RawLimits,
    #[serde(default)]
    routing: RawRouting,
    #[serde(default)]
    storage: RawStorage,
    #[serde(default)]
    node: Vec<RawNode>,
    #[serde(default)]
    farm: RawFarm,
    #[serde(default)]
    s2s: RawS2s,
    #[serde(default)]
    relay: RawRelay,
    #[serde(default)]
    rebalance: RawRebalance,
    #[serde(default)]
    auth_limits: RawAuthLimits,
}

fn build(
    raw: RawConfig,
    source: &Path,
    data_dir_override: Option<&Path>,
    problems: &mut Vec<Problem>,
) -> Option<FarmConfig> {
    let domain = domain(raw.domain, problems);
    let secret = secret(raw.secret, raw.secret_file, source, problems);
    let data_dir = match (data_dir_override, raw.data_dir) {
        (Some(dir), _) => dir.to_owned(),
        (None, Some(dir)) if dir.as_os_str().is_empty() => {
            problems.push(Problem::new(
                "data_dir",
                "empty (leave it out for the default)",
            ));
            PathBuf::from(DEFAULT_DATA_DIR)
        }
        (None, Some(dir)) => dir,
        (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
    };
    let tls = tls(raw.tls, &data_dir, problems);
    let limits = limits(raw.limits, problems);
    let storage = storage(raw.storage, source, problems);
    let farm = farm_links(raw.farm, &tls, &data_dir, problems);
    let s2s = s2s(raw.s2s, problems);
    let relay = relay(raw.relay, problems);
    let rebalance = rebalance(raw.rebalance, problems);
    let auth_limits = auth_limits(raw.auth_limits, problems);
    let declared: Vec<Declared> = raw
        .node
        .iter()
        .map(|n| Declared {
            name: n.name.clone(),
            role: n.role.as_deref().and_then(parse_role),
            weight: n.weight.unwrap_or(1).max(1),
        })
        .collect();
    let nodes = nodes(raw.node, &declared, problems);
    let routing = routing(raw.routing, &declared, problems);
    Some(FarmConfig {
        domain: domain?,
        secret: secret?,
        data_dir,
        tls,
        limits,
        routing: routing?,
        storage: storage?,
        nodes: nodes.into_iter().collect::<Option<Vec<_>>>()?,
        farm,
        s2s,
        relay,
        rebalance,
        auth_limits,
        source: source.to_owned(),
    })
}

fn domain(raw: Option<String>, problems: &mut Vec<Problem>) -> Option<String> {
    let Some(raw) = raw else {
        problems.push(Problem::new(
            "domain",
            "missing: the XMPP domain the farm serves",
        ));
        return None;
    };
    if raw.trim().is_empty() {
        problems.push(Problem::new("domain", "empty"));
        return None;
    }
    match jid::DomainPart::new(&raw) {
        Ok(domain) if !raw.contains(['@', '/', ':']) => Some(domain.as_str().to_owned()),
        _ => {
            problems.push(Problem::new(
                "domain",
                format!("{raw:?} is not a valid domain name"),
            ));
            None
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use jabberfarm_proto::routing::RoutingMode;

    #[test]
    fn a_good_config_loads_with_defaults() {
        let config = parse(&with_nodes(HEAD)).unwrap();
        assert_eq!(config.domain, "example.net");
        assert_eq!(config.secret, "s3cret");
        assert_eq!(config.data_dir, Path::new(DEFAULT_DATA_DIR));
        assert_eq!(config.tls.cert, Path::new("jabberfarm-data/tls/cert.pem"));
        assert_eq!(config.tls.key, Path::new("jabberfarm-data/tls/key.pem"));
        assert_eq!(config.tls.ca, Path::new("jabberfarm-data/tls/ca.pem"));
        assert!(config.tls.generate && config.tls.required);
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.storage.scram_iterations, 4096);
        assert_eq!(
            config.storage.sqlite_path(&config.data_dir, "slave1"),
            Some(PathBuf::from("jabberfarm-data/slave1.sqlite"))
        );
        assert_eq!(config.master().name, "master");
        let slaves: Vec<&str> = config.slaves().map(|n| n.name.as_str()).collect();
        assert_eq!(slaves, ["slave1", "slave2"]);
        let slave2 = config.node("slave2").unwrap();
        assert_eq!(slave2.weight, 2);
        assert_eq!(slave2.advertise, "127.0.0.1:5422");
        assert_eq!(slave2.c2s_tls, None);
        assert!(config.node("nobody").is_none());
        assert_eq!(
            config.routing.nodes().collect::<Vec<_>>(),
            ["slave1", "slave2"]
        );
        assert!(config.check_files().is_empty());
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn data_dir_override_wins_and_paths_resolve_against_it() {
        let text = with_nodes(&HEAD.replace(
            "[tls]\n",
            "data_dir = \"/srv/farm\"\n[tls]\ncert = \"c.pem\"\nkey = \"/etc/k.pem\"\n",
        ));
        let config = parse(&text).unwrap();
        assert_eq!(config.data_dir, Path::new("/srv/farm"));
        assert_eq!(config.tls.cert, Path::new("/srv/farm/c.pem"));
        assert_eq!(config.tls.key, Path::new("/etc/k.pem"));
        let config =
            FarmConfig::from_str(&text, Path::new("x.toml"), Some(Path::new("/tmp/d"))).unwrap();
        assert_eq!(config.data_dir, Path::new("/tmp/d"));
        assert_eq!(config.tls.cert, Path::new("/tmp/d/c.pem"));
        assert_eq!(config.tls.ca, Path::new("/tmp/d/tls/ca.pem"));
    }

    #[test]
    fn every_problem_is_reported_at_once_naming_its_key() {
        let text = changed("c2s = \"127.0.0.1:5422\"", "c2s = \"127.0.0.1:5322\"")
            .replace("domain = \"example.net\"", "domain = \"\"")
            .replace("weight = 2", "weight = 0\nwieght = 3");
        let err = parse(&text).unwrap_err();
        let ConfigError::Invalid { problems, .. } = &err else {
            panic!("{err:?}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["node[2].wieght", "domain", "node[2].weight", "node[2].c2s"],
            "{problems:#?}"
        );
        assert_eq!(
            err.to_string(),
            "config.toml: node[2].wieght: unknown key; did you mean \"weight\"?\n\
             config.toml: domain: empty\n\
             config.toml: node[2].weight: must be at least 1 (remove the slave to give it no users)\n\
             config.toml: node[2].c2s: 127.0.0.1:5322 is also used by node[1].c2s (slave1)"
        );
    }

    #[test]
    fn toml_errors_have_line_and_column() {
        let err = parse("domain = \"x\"\nsecret = \n").unwrap_err();
        assert!(matches!(err, ConfigError::Toml { .. }));
        assert!(err.to_string().contains("line 2"), "{err}");
        let err = parse(&changed("weight = 2", "weight = \"two\"")).unwrap_err();
        assert!(matches!(err, ConfigError::Toml { .. }));
        assert!(err.to_string().starts_with("config.toml: "), "{err}");
        assert!(err.to_string().contains("line 26"), "{err}");
    }

    #[test]
    fn domain_problems() {
        assert_problem(
            &changed("domain = \"example.net\"\n", ""),
            "domain",
            "missing",
        );
        assert_problem(&changed("\"example.net\"", "\"  \""), "domain", "empty");
        for bad in [
            "exa mple.net",
            "user@example.net",
            "example.net/x",
            "example.net:5222",
        ] {
            assert_problem(
                &changed("\"example.net\"", &format!("{bad:?}")),
                "domain",
                "is not a valid domain name",
            );
        }
        let config = parse(&changed("\"example.net\"", "\"Example.NET\"")).unwrap();
        assert_eq!(config.domain, "example.net");
    }

    #[test]
    fn load_reports_a_missing_file() {
        let err = FarmConfig::load(Path::new("/nonexistent/farm.toml"), None).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(
            err.to_string().starts_with("/nonexistent/farm.toml: "),
            "{err}"
        );
    }

    #[test]
    fn the_demo_farm_loads() {
        let config = FarmConfig::load(&conf("farm.toml"), None).unwrap();
        assert_eq!(config.domain, "localhost");
        assert_eq!(config.master().c2s, "127.0.0.1:5222".parse().unwrap());
        assert_eq!(config.master().s2s, Some("127.0.0.1:5269".parse().unwrap()));
        let slaves: Vec<&str> = config.slaves().map(|n| n.advertise.as_str()).collect();
        assert_eq!(slaves, ["127.0.0.1:5322", "127.0.0.1:5422"]);
        assert!(config.tls.generate && !config.tls.required);
        assert_eq!(config.data_dir, Path::new("jabberfarm-data"));
    }

    #[test]
    fn the_production_sample_only_lacks_its_files() {
        match FarmConfig::load(&conf("production.sample.toml"), None) {
            Ok(config) => assert_eq!(config.domain, "example.net"), // files present here
            Err(ConfigError::Invalid { problems, .. }) => {
                for p in &problems {
                    assert!(
                        ["secret_file", "tls.cert", "tls.key"].contains(&p.key.as_str()),
                        "{p}"
                    );
                }
            }
            Err(e) => panic!("{e}"),
        }
        // With the files in place, it loads.
        let dir = scratch_dir("production");
        std::fs::write(dir.join("farm.secret"), "x\n").unwrap();
        std::fs::write(dir.join("cert.pem"), "").unwrap();
        std::fs::write(dir.join("key.pem"), "").unwrap();
        let text = std::fs::read_to_string(conf("production.sample.toml"))
            .unwrap()
            .replace("/etc/jabberfarm/farm.secret", "farm.secret")
            .replace("/etc/jabberfarm/tls/fullchain.pem", "cert.pem")
            .replace("/etc/jabberfarm/tls/privkey.pem", "key.pem");
        let config = FarmConfig::from_str(&text, &dir.join("farm.toml"), Some(&dir)).unwrap();
        assert_eq!(config.slaves().count(), 3);
        assert_eq!(config.node("slave3").unwrap().weight, 2);
        assert_eq!(
            config.node("slave1").unwrap().advertise,
            "xmpp1.example.net:5222"
        );
        // The commented ranges example is valid too.
        let ranges = text
            .replace("mode = \"hash\"", "# mode = \"hash\"")
            .replace("# mode = \"ranges\"", "mode = \"ranges\"")
            .replace("# other", "other")
            .replace("# [[routing.ranges]]", "[[routing.ranges]]")
            .replace("# letters", "letters")
            .replace("# node", "node");
        let config = FarmConfig::from_str(&ranges, &dir.join("farm.toml"), Some(&dir)).unwrap();
        assert!(matches!(config.routing.mode(), RoutingMode::Ranges { .. }));
        assert_eq!(config.routing.owner_of("zoe").unwrap(), "slave3");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
