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

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use jabberfarm_proto::routing::{LetterRange, RoutingMode, RoutingTable, SlaveWeight};

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
            .field("auth_limits", &self.auth_limits)
            .field("source", &self.source)
            .finish()
    }
}

/// TLS for c2s (and s2s); paths already resolved against the data dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// `data_dir/tls/ca.pem`: where `generate` writes the demo CA for clients to trust.
    pub ca: PathBuf,
    /// Demo: generate a local CA and a certificate for the domain on first start.
    pub generate: bool,
    /// No login and no redirect before STARTTLS / direct TLS.
    pub required: bool,
}

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
    /// Frames queued per peer before senders get `resource-constraint`.
    pub queue: usize,
    /// The CA that signed the nodes' certificates, trusted on TLS links (`farm.ca`; with
    /// `tls.generate`, the demo CA).
    pub ca: Option<PathBuf>,
}

impl Default for FarmLinkConfig {
    fn default() -> Self {
        FarmLinkConfig {
            tls: false,
            heartbeat: Duration::from_secs(5),
            dead_after: Duration::from_secs(15),
            queue: 4096,
            ca: None,
        }
    }
}

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
            session: ShaperConfig {
                stanzas_per_second: 100,
                stanza_burst: 1000,
                bytes_per_second: 256 * 1024,
                byte_burst: 1024 * 1024,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// PBKDF2 iterations for new SCRAM credentials.
    pub scram_iterations: u32,
}

/// Where accounts and per-user IM data live, `storage.backend` (DESIGN.md D6;
/// `docs/backends.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StorageBackend {
    /// One SQLite file per node; `{node}` in the template is replaced by the node name.
    Sqlite { path_template: String },
    /// One MySQL/MariaDB database for the whole farm: accounts and IM data.
    Mysql(MysqlConfig),
    /// Accounts in an LDAP directory; IM data where `storage.ldap.data` says.
    Ldap(LdapConfig),
}

/// Where per-user IM data lives when the accounts are in LDAP (`storage.ldap.data`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImDataConfig {
    /// One SQLite file per node, `storage.path`.
    Sqlite { path_template: String },
    /// The database of `[storage.mysql]`.
    Mysql(MysqlConfig),
}

/// `[storage.mysql]`.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlConfig {
    /// `mysql://user[:password]@host[:port]/database[?options]`, checked by sqlx.
    pub url: String,
    /// From `password_file`; overrides a password in the URL (there is none: config refuses both).
    pub password: Option<String>,
    /// Connections in the node's pool.
    pub max_connections: u32,
    /// How long an operation waits for a pooled connection (or a new one) before the
    /// database counts as unavailable: a login then fails with `temporary-auth-failure`.
    pub acquire_timeout: Duration,
    /// The longest any single store operation may take, connection wait included.
    pub query_timeout: Duration,
    /// Apply schema migrations on start; `false`: only check them and explain what is missing.
    pub migrate: bool,
    pub accounts: MysqlAccounts,
}

impl fmt::Debug for MysqlConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlConfig")
            .field("url", &redact_url_password(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("migrate", &self.migrate)
            .field("accounts", &self.accounts)
            .finish()
    }
}

/// Which accounts table the MySQL backend reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MysqlAccounts {
    /// jabberfarm's own `accounts` table with SCRAM keys (`shared/store/migrations/mysql/`).
    Scram,
    /// An existing user table: `login_query` takes the username as its one `?` parameter and
    /// returns the stored hash in its first column. PLAIN over TLS only.
    Legacy {
        login_query: String,
        format: PasswordFormat,
    },
}

/// How a legacy user table stores passwords (`storage.mysql.password_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PasswordFormat {
    /// Our own SCRAM keys (the default).
    Scram,
    /// PHC string `$argon2id$v=19$m=...,t=...,p=...$salt$hash` (also argon2i, argon2d).
    Argon2,
    /// `$2a$`, `$2b$`, `$2y$` bcrypt strings.
    Bcrypt,
    /// LDAP-style `{SSHA}base64(SHA-1(password ‖ salt) ‖ salt)`; also `{SSHA256}`, `{SSHA512}`.
    Ssha,
}

impl PasswordFormat {
    pub const NAMES: &[&str] = &["scram", "argon2", "bcrypt", "ssha"];

    pub fn name(self) -> &'static str {
        match self {
            Self::Scram => "scram",
            Self::Argon2 => "argon2",
            Self::Bcrypt => "bcrypt",
            Self::Ssha => "ssha",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "scram" => Some(Self::Scram),
            "argon2" => Some(Self::Argon2),
            "bcrypt" => Some(Self::Bcrypt),
            "ssha" => Some(Self::Ssha),
            _ => None,
        }
    }
}

/// `[storage.ldap]`.
#[derive(Clone, PartialEq, Eq)]
pub struct LdapConfig {
    /// `ldaps://host[:port]`, `ldap://host[:port]` (with `starttls`) or `ldapi://` (a local
    /// socket).
    pub url: String,
    /// StartTLS (RFC 4513 §3) on an `ldap://` URL.
    pub starttls: bool,
    /// CA certificates (PEM) trusted for the directory's certificate.
    pub ca: PathBuf,
    pub auth: LdapAuth,
    /// Connections in the node's pool.
    pub max_connections: u32,
    /// The longest connecting or any one operation may take before the directory counts as
    /// unavailable.
    pub timeout: Duration,
    pub data: ImDataConfig,
}

impl fmt::Debug for LdapConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapConfig")
            .field("url", &self.url)
            .field("starttls", &self.starttls)
            .field("ca", &self.ca)
            .field("auth", &self.auth)
            .field("max_connections", &self.max_connections)
            .field("timeout", &self.timeout)
            .field("data", &self.data)
            .finish()
    }
}

/// How a login is checked against the directory.
#[derive(Clone, PartialEq, Eq)]
pub enum LdapAuth {
    /// Bind as the DN made from the template (`{user}` replaced by the DN-escaped username).
    Bind { dn_template: String },
    /// Search `base` (subtree) with the filter (`{user}` replaced by the filter-escaped
    /// username) as the service account (anonymously without one); exactly one entry must
    /// match; then bind as that entry.
    Search {
        base: String,
        filter_template: String,
        /// `(dn, password)` of the service account.
        service: Option<(String, String)>,
    },
}

impl fmt::Debug for LdapAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bind { dn_template } => f
                .debug_struct("Bind")
                .field("dn_template", dn_template)
                .finish(),
            Self::Search {
                base,
                filter_template,
                service,
            } => f
                .debug_struct("Search")
                .field("base", base)
                .field("filter_template", filter_template)
                .field("service_dn", &service.as_ref().map(|(dn, _)| dn))
                .finish(),
        }
    }
}

impl StorageConfig {
    /// The SQLite file of `node` (for the SQLite backend, or LDAP with its IM data in SQLite):
    /// the path template with `{node}` replaced, relative to `data_dir` unless absolute.
    /// `None` when no SQLite file is used.
    pub fn sqlite_path(&self, data_dir: &Path, node: &str) -> Option<PathBuf> {
        let template = match &self.backend {
            StorageBackend::Sqlite { path_template }
            | StorageBackend::Ldap(LdapConfig {
                data: ImDataConfig::Sqlite { path_template },
                ..
            }) => path_template,
            _ => return None,
        };
        Some(data_dir.join(template.replace("{node}", node)))
    }

    /// Whether the backend can only check a password given in clear: there are no SCRAM keys
    /// (LDAP, or a legacy password table). Such a farm offers PLAIN, over TLS only.
    pub fn plain_only(&self) -> bool {
        match &self.backend {
            StorageBackend::Sqlite { .. } => false,
            StorageBackend::Mysql(m) => m.accounts != MysqlAccounts::Scram,
            StorageBackend::Ldap(_) => true,
        }
    }

    /// Whether accounts live outside jabberfarm's own tables (and `jabberfarm user` cannot
    /// manage them): a directory or an existing user table.
    pub fn accounts_managed_elsewhere(&self) -> Option<&'static str> {
        match &self.backend {
            StorageBackend::Sqlite { .. }
            | StorageBackend::Mysql(MysqlConfig {
                accounts: MysqlAccounts::Scram,
                ..
            }) => None,
            StorageBackend::Mysql(_) => Some(
                "accounts live in the existing user table of storage.mysql.login_query; \
                 manage them there",
            ),
            StorageBackend::Ldap(_) => Some(
                "accounts live in the LDAP directory (storage.ldap); manage them there \
                 (ldapadd, ldappasswd, ldapdelete)",
            ),
        }
    }
}

/// `mysql://user:secret@host/db` → `mysql://user:<redacted>@host/db`, for logs and `Debug`.
pub fn redact_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:<redacted>@{host}{tail}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Master,
    Slave,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Master => "master",
            Role::Slave => "slave",
        })
    }
}

/// One `[[node]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub role: Role,
    /// c2s bind address (plain, STARTTLS).
    pub c2s: SocketAddr,
    /// Direct-TLS c2s bind address (XEP-0368).
    pub c2s_tls: Option<SocketAddr>,
    /// `host:port` given to clients in redirects (IPv6 bracketed: `[::1]:5222`); may differ
    /// from `c2s` behind NAT.
    pub advertise: String,
    /// Farm-link address: this node listens here and the other nodes connect to it.
    pub farm: SocketAddr,
    /// s2s bind address, master only.
    pub s2s: Option<SocketAddr>,
    /// Share of the users in hash mode (1 for the master, which owns none).
    pub weight: u32,
    /// Master: redirect mode of the c2s listener (`None`: `[relay] redirect`).
    pub redirect: Option<RedirectMode>,
    /// Master: redirect mode of the direct-TLS listener (`None`: as `redirect`).
    pub redirect_tls: Option<RedirectMode>,
}

impl NodeConfig {
    /// Whether one of this node's c2s listeners uses `mode` (a master's; a slave has none).
    pub fn uses_redirect_mode(&self, relay: &RelayConfig, mode: RedirectMode) -> bool {
        self.role == Role::Master
            && (self.redirect_mode(relay, false) == mode
                || (self.c2s_tls.is_some() && self.redirect_mode(relay, true) == mode))
    }

    /// Whether one of this node's c2s listeners may relay (`auto` or `never`).
    pub fn may_relay(&self, relay: &RelayConfig) -> bool {
        self.uses_redirect_mode(relay, RedirectMode::Auto)
            || self.uses_redirect_mode(relay, RedirectMode::Never)
    }

    /// What this node's c2s listener (`direct_tls`: the direct-TLS one) does with logins.
    pub fn redirect_mode(&self, relay: &RelayConfig, direct_tls: bool) -> RedirectMode {
        let plain = self.redirect.unwrap_or(relay.redirect);
        if direct_tls {
            self.redirect_tls.unwrap_or(plain)
        } else {
            plain
        }
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
    fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
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

    /// The master node.
    ///
    /// # Panics
    /// If `nodes` is empty, which a loaded config never is (it has exactly one master).
    pub fn master(&self) -> &NodeConfig {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Master)
            .unwrap_or(&self.nodes[0])
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
// field lists off these structs.

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
    auth_limits: RawAuthLimits,
}

#[derive(Deserialize, Default)]
struct RawAuthLimits {
    enabled: Option<bool>,
    per_address: Option<u32>,
    per_account: Option<u32>,
    wait: Option<u64>,
    max_wait: Option<u64>,
    forget: Option<u64>,
    exempt: Option<Vec<String>>,
    max_tracked: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawRelay {
    redirect: Option<String>,
    window: Option<u64>,
    remember: Option<u64>,
    max_sessions: Option<u64>,
    max_remembered: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawS2s {
    #[serde(default)]
    routes: std::collections::BTreeMap<String, String>,
    connect_timeout: Option<u64>,
    idle_timeout: Option<u64>,
    queue: Option<u64>,
    max_domains: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawFarm {
    tls: Option<bool>,
    heartbeat: Option<u64>,
    dead_after: Option<u64>,
    queue: Option<u64>,
    ca: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
struct RawTls {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    generate: Option<bool>,
    required: Option<bool>,
}

#[derive(Deserialize, Default)]
struct RawLimits {
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
    session_stanzas_per_second: Option<u64>,
    session_stanza_burst: Option<u64>,
    session_bytes_per_second: Option<u64>,
    session_byte_burst: Option<u64>,
}

#[derive(Deserialize, Default)]
struct RawRouting {
    mode: Option<String>,
    hash_key: Option<String>,
    other: Option<String>,
    #[serde(default)]
    ranges: Vec<RawRange>,
}

#[derive(Deserialize)]
struct RawRange {
    letters: Option<String>,
    node: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawStorage {
    backend: Option<String>,
    path: Option<String>,
    scram_iterations: Option<u32>,
    mysql: Option<RawMysql>,
    ldap: Option<RawLdap>,
}

#[derive(Deserialize, Default)]
struct RawMysql {
    url: Option<String>,
    password_file: Option<PathBuf>,
    max_connections: Option<u32>,
    acquire_timeout: Option<u64>,
    query_timeout: Option<u64>,
    migrate: Option<bool>,
    login_query: Option<String>,
    password_format: Option<String>,
}

#[derive(Deserialize, Default)]
struct RawLdap {
    url: Option<String>,
    starttls: Option<bool>,
    ca: Option<PathBuf>,
    bind_dn: Option<String>,
    base: Option<String>,
    filter: Option<String>,
    service_dn: Option<String>,
    service_password: Option<String>,
    service_password_file: Option<PathBuf>,
    max_connections: Option<u32>,
    timeout: Option<u64>,
    data: Option<String>,
}

#[derive(Deserialize)]
struct RawNode {
    name: Option<String>,
    role: Option<String>,
    c2s: Option<String>,
    c2s_tls: Option<String>,
    advertise: Option<String>,
    farm: Option<String>,
    s2s: Option<String>,
    weight: Option<u32>,
    redirect: Option<String>,
    redirect_tls: Option<String>,
}

// ---- validation ----------------------------------------------------------------------------

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

fn secret(
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

fn tls(raw: RawTls, data_dir: &Path, problems: &mut Vec<Problem>) -> TlsConfig {
    let mut path = |key: &str, value: Option<PathBuf>, default: &str| match value {
        Some(p) if p.as_os_str().is_empty() => {
            problems.push(Problem::new(key, "empty"));
            data_dir.join(default)
        }
        Some(p) => data_dir.join(p),
        None => data_dir.join(default),
    };
    let tls = TlsConfig {
        cert: path("tls.cert", raw.cert, "tls/cert.pem"),
        key: path("tls.key", raw.key, "tls/key.pem"),
        ca: data_dir.join("tls/ca.pem"),
        generate: raw.generate.unwrap_or(false),
        required: raw.required.unwrap_or(true),
    };
    problems.extend(tls_file_problems(&tls));
    tls
}

fn tls_file_problems(tls: &TlsConfig) -> Vec<Problem> {
    if tls.generate {
        return Vec::new();
    }
    let mut problems = Vec::new();
    for (key, path) in [("tls.cert", &tls.cert), ("tls.key", &tls.key)] {
        let message = match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => match std::fs::File::open(path) {
                Ok(_) => continue,
                Err(e) => format!("cannot read {}: {e}", path.display()),
            },
            Ok(_) => format!("{} is not a file", path.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => format!(
                "{} does not exist (set tls.generate = true for a demo certificate)",
                path.display()
            ),
            Err(e) => format!("cannot read {}: {e}", path.display()),
        };
        problems.push(Problem::new(key, message));
    }
    problems
}

fn s2s(raw: RawS2s, problems: &mut Vec<Problem>) -> S2sConfig {
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

fn farm_links(
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
    }
}

fn redirect_mode(key: String, text: &str, problems: &mut Vec<Problem>) -> Option<RedirectMode> {
    let mode = RedirectMode::parse(text);
    if mode.is_none() {
        problems.push(Problem::new(
            key,
            format!("{text:?}: must be \"auto\", \"always\" or \"never\""),
        ));
    }
    mode
}

fn auth_limits(raw: RawAuthLimits, problems: &mut Vec<Problem>) -> AuthLimits {
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

fn relay(raw: RawRelay, problems: &mut Vec<Problem>) -> RelayConfig {
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

fn limits(raw: RawLimits, problems: &mut Vec<Problem>) -> Limits {
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
        session,
    }
}

fn storage(raw: RawStorage, source: &Path, problems: &mut Vec<Problem>) -> Option<StorageConfig> {
    let scram_iterations = match raw.scram_iterations {
        Some(0) => {
            problems.push(Problem::new(
                "storage.scram_iterations",
                "must be at least 1 (RFC 5802 recommends 4096 or more)",
            ));
            None
        }
        Some(n) => Some(n),
        None => Some(4096),
    };
    let path_given = raw.path.is_some();
    let path_template = match raw.path {
        Some(p) if p.trim().is_empty() => {
            problems.push(Problem::new("storage.path", "empty"));
            None
        }
        Some(p) => Some(p),
        None => Some("{node}.sqlite".to_owned()),
    };
    let backend_name = raw.backend.as_deref().unwrap_or("sqlite");
    let uses_sqlite = match backend_name {
        "sqlite" => true,
        "ldap" => raw
            .ldap
            .as_ref()
            .is_none_or(|l| l.data.as_deref().is_none_or(|d| d == "sqlite")),
        _ => false,
    };
    if !uses_sqlite && path_given {
        problems.push(Problem::new(
            "storage.path",
            "not used: no SQLite file with this backend",
        ));
    }
    // A section that the chosen backend does not read is a mistake worth naming.
    let unused = |problems: &mut Vec<Problem>, section: &str| {
        problems.push(Problem::new(
            format!("storage.{section}"),
            format!("not used with storage.backend = {backend_name:?}"),
        ));
    };
    let backend = match backend_name {
        "sqlite" => {
            if raw.mysql.is_some() {
                unused(problems, "mysql");
            }
            if raw.ldap.is_some() {
                unused(problems, "ldap");
            }
            path_template.map(|path_template| StorageBackend::Sqlite { path_template })
        }
        "mysql" => {
            if raw.ldap.is_some() {
                unused(problems, "ldap");
            }
            mysql(raw.mysql, source, true, problems).map(StorageBackend::Mysql)
        }
        "ldap" => {
            let data = raw.ldap.as_ref().and_then(|l| l.data.clone());
            let data = match data.as_deref() {
                None | Some("sqlite") => {
                    if raw.mysql.is_some() {
                        problems.push(Problem::new(
                            "storage.mysql",
                            "not used: storage.ldap.data is \"sqlite\" (set it to \"mysql\" to \
                             keep IM data there)",
                        ));
                    }
                    path_template.map(|path_template| ImDataConfig::Sqlite { path_template })
                }
                Some("mysql") => mysql(raw.mysql, source, false, problems).map(ImDataConfig::Mysql),
                Some(other) => {
                    problems.push(Problem::new(
                        "storage.ldap.data",
                        format!("unknown {other:?}; known: \"sqlite\", \"mysql\""),
                    ));
                    None
                }
            };
            let ldap = ldap(raw.ldap, source, problems);
            ldap.zip(data)
                .map(|(ldap, data)| StorageBackend::Ldap(LdapConfig { data, ..ldap }))
        }
        other => {
            problems.push(Problem::new(
                "storage.backend",
                format!("unknown backend {other:?}; known: \"sqlite\", \"mysql\", \"ldap\""),
            ));
            None
        }
    };
    Some(StorageConfig {
        backend: backend?,
        scram_iterations: scram_iterations?,
    })
}

/// A whole number of seconds, at least 1; `default` when absent.
fn storage_seconds(
    key: &str,
    value: Option<u64>,
    default: u64,
    problems: &mut Vec<Problem>,
) -> Duration {
    match value {
        Some(0) => {
            problems.push(Problem::new(key, "must be at least 1 (seconds)"));
            Duration::from_secs(default)
        }
        Some(n) => Duration::from_secs(n),
        None => Duration::from_secs(default),
    }
}

/// A pool size, at least 1; `default` when absent.
fn storage_pool_size(
    key: &str,
    value: Option<u32>,
    default: u32,
    problems: &mut Vec<Problem>,
) -> u32 {
    match value {
        Some(0) => {
            problems.push(Problem::new(key, "must be at least 1"));
            default
        }
        Some(n) => n,
        None => default,
    }
}

/// The first line of a password file, relative to the config file's directory.
fn storage_password_file(
    key: &str,
    file: &Path,
    source: &Path,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let path = source.parent().unwrap_or(Path::new("")).join(file);
    match std::fs::read_to_string(&path) {
        Err(e) => {
            problems.push(Problem::new(
                key,
                format!("cannot read {}: {e}", path.display()),
            ));
            None
        }
        Ok(text) => match text.lines().next().map(str::trim) {
            Some(line) if !line.is_empty() => Some(line.to_owned()),
            _ => {
                problems.push(Problem::new(
                    key,
                    format!("the first line of {} is empty", path.display()),
                ));
                None
            }
        },
    }
}

/// `[storage.mysql]`; `accounts`: whether the accounts live there too (not for LDAP's data).
fn mysql(
    raw: Option<RawMysql>,
    source: &Path,
    accounts: bool,
    problems: &mut Vec<Problem>,
) -> Option<MysqlConfig> {
    let Some(raw) = raw else {
        problems.push(Problem::new(
            "storage.mysql",
            "missing: a [storage.mysql] section with at least url = \"mysql://user@host/db\"",
        ));
        return None;
    };
    let url = match raw.url {
        None => {
            problems.push(Problem::new(
                "storage.mysql.url",
                "missing, e.g. \"mysql://jabberfarm@db.example.net:3306/jabberfarm\"",
            ));
            None
        }
        Some(url) if !url.starts_with("mysql://") && !url.starts_with("mariadb://") => {
            problems.push(Problem::new(
                "storage.mysql.url",
                format!(
                    "{:?} is not a MySQL URL (mysql://user@host:port/database)",
                    redact_url_password(&url)
                ),
            ));
            None
        }
        Some(url) => match url::Url::parse(&url) {
            Err(e) => {
                problems.push(Problem::new(
                    "storage.mysql.url",
                    format!("{:?} is not a MySQL URL: {e}", redact_url_password(&url)),
                ));
                None
            }
            Ok(parsed) if parsed.host_str().is_none_or(str::is_empty) => {
                problems.push(Problem::new(
                    "storage.mysql.url",
                    "names no host (mysql://user@HOST/database)",
                ));
                None
            }
            Ok(parsed) if parsed.path().trim_start_matches('/').is_empty() => {
                problems.push(Problem::new(
                    "storage.mysql.url",
                    "names no database (mysql://user@host/DATABASE)",
                ));
                None
            }
            Ok(_) => Some(url),
        },
    };
    let password = match (&raw.password_file, &url) {
        (Some(_), Some(url)) if url_has_password(url) => {
            problems.push(Problem::new(
                "storage.mysql.password_file",
                "the url has a password already; give it in one place only",
            ));
            None
        }
        (Some(file), _) => {
            storage_password_file("storage.mysql.password_file", file, source, problems)
        }
        (None, _) => None,
    };
    let format = match raw.password_format.as_deref() {
        None => PasswordFormat::Scram,
        Some(name) => PasswordFormat::parse(name).unwrap_or_else(|| {
            problems.push(Problem::new(
                "storage.mysql.password_format",
                format!(
                    "unknown {name:?}; known: {}",
                    PasswordFormat::NAMES.join(", ")
                ),
            ));
            PasswordFormat::Scram
        }),
    };
    let accounts_cfg = match (raw.login_query, format) {
        (None, PasswordFormat::Scram) => Some(MysqlAccounts::Scram),
        (Some(_), PasswordFormat::Scram) => {
            problems.push(Problem::new(
                "storage.mysql.login_query",
                "needs a legacy password_format (argon2, bcrypt or ssha); SCRAM keys live in \
                 jabberfarm's own accounts table",
            ));
            None
        }
        (None, format) => {
            problems.push(Problem::new(
                "storage.mysql.password_format",
                format!(
                    "{:?} needs login_query (the SELECT that returns a user's stored hash)",
                    format.name()
                ),
            ));
            None
        }
        (Some(query), format) => {
            let placeholders = query.matches('?').count();
            if placeholders != 1 {
                problems.push(Problem::new(
                    "storage.mysql.login_query",
                    format!(
                        "must have exactly one ? (the username, bound as a parameter); it has \
                         {placeholders}"
                    ),
                ));
                None
            } else {
                Some(MysqlAccounts::Legacy {
                    login_query: query,
                    format,
                })
            }
        }
    };
    if !accounts && accounts_cfg != Some(MysqlAccounts::Scram) {
        problems.push(Problem::new(
            "storage.mysql.login_query",
            "not used: with storage.backend = \"ldap\" the accounts are in the directory",
        ));
    }
    let max_connections = storage_pool_size(
        "storage.mysql.max_connections",
        raw.max_connections,
        10,
        problems,
    );
    let acquire_timeout = storage_seconds(
        "storage.mysql.acquire_timeout",
        raw.acquire_timeout,
        5,
        problems,
    );
    let query_timeout = storage_seconds(
        "storage.mysql.query_timeout",
        raw.query_timeout,
        10,
        problems,
    );
    Some(MysqlConfig {
        url: url?,
        password: match raw.password_file {
            Some(_) => Some(password?),
            None => None,
        },
        max_connections,
        acquire_timeout,
        query_timeout,
        migrate: raw.migrate.unwrap_or(true),
        accounts: accounts_cfg?,
    })
}

fn url_has_password(url: &str) -> bool {
    redact_url_password(url) != url
}

/// `[storage.ldap]` (its `data` is decided by the caller; `Sqlite` here is a placeholder).
fn ldap(raw: Option<RawLdap>, source: &Path, problems: &mut Vec<Problem>) -> Option<LdapConfig> {
    let Some(raw) = raw else {
        problems.push(Problem::new(
            "storage.ldap",
            "missing: a [storage.ldap] section with url and bind_dn (or base and filter)",
        ));
        return None;
    };
    let starttls = raw.starttls.unwrap_or(false);
    let url = match raw.url {
        None => {
            problems.push(Problem::new(
                "storage.ldap.url",
                "missing, e.g. \"ldaps://ldap.example.net\"",
            ));
            None
        }
        Some(url) => {
            let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
            match (scheme.as_deref(), starttls) {
                (Some("ldaps"), true) => {
                    problems.push(Problem::new(
                        "storage.ldap.starttls",
                        "an ldaps:// URL is TLS already; StartTLS is for ldap:// URLs",
                    ));
                    None
                }
                (Some("ldap"), false) => {
                    problems.push(Problem::new(
                        "storage.ldap.url",
                        "ldap:// without starttls = true would send passwords in clear; use \
                         ldaps:// or set starttls = true",
                    ));
                    None
                }
                (Some("ldapi"), true) => {
                    problems.push(Problem::new(
                        "storage.ldap.starttls",
                        "not for ldapi:// (a local socket)",
                    ));
                    None
                }
                (Some("ldap" | "ldaps" | "ldapi"), _) => Some(url),
                _ => {
                    problems.push(Problem::new(
                        "storage.ldap.url",
                        format!("{url:?} is not an ldaps://, ldap:// or ldapi:// URL"),
                    ));
                    None
                }
            }
        }
    };
    let ca = raw
        .ca
        .map(|ca| source.parent().unwrap_or(Path::new("")).join(ca))
        .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs/ca-certificates.crt"));
    let tls = url.as_deref().is_some_and(|u| !u.starts_with("ldapi"));
    if tls && !ca.is_file() {
        problems.push(Problem::new(
            "storage.ldap.ca",
            format!(
                "{} is not a file (the CA certificates, PEM, that signed the directory's \
                 certificate)",
                ca.display()
            ),
        ));
    }
    let template = |key: &str, value: &str, problems: &mut Vec<Problem>| {
        if value.contains("{user}") {
            true
        } else {
            problems.push(Problem::new(key, "must contain {user}"));
            false
        }
    };
    // A password given but unusable was reported already; do not also call it missing.
    let password_given = raw.service_password.is_some() || raw.service_password_file.is_some();
    let service_password = match (raw.service_password, raw.service_password_file) {
        (Some(_), Some(_)) => {
            problems.push(Problem::new(
                "storage.ldap.service_password",
                "set either service_password or service_password_file, not both",
            ));
            None
        }
        (Some(p), None) if p.is_empty() => {
            problems.push(Problem::new(
                "storage.ldap.service_password",
                "empty (an empty simple bind is an anonymous bind)",
            ));
            None
        }
        (Some(p), None) => Some(p),
        (None, Some(file)) => storage_password_file(
            "storage.ldap.service_password_file",
            &file,
            source,
            problems,
        ),
        (None, None) => None,
    };
    let auth = match (raw.bind_dn, raw.base) {
        (Some(_), Some(_)) => {
            problems.push(Problem::new(
                "storage.ldap.bind_dn",
                "set either bind_dn (bind) or base and filter (search-then-bind), not both",
            ));
            None
        }
        (None, None) => {
            problems.push(Problem::new(
                "storage.ldap.bind_dn",
                "missing: set bind_dn = \"uid={user},ou=people,...\" (bind), or base and \
                 filter (search-then-bind)",
            ));
            None
        }
        (Some(dn), None) => {
            let search_only = [
                ("filter", raw.filter.is_some()),
                (
                    "service_dn",
                    raw.service_dn.is_some() || service_password.is_some(),
                ),
            ];
            for (key, _) in search_only.iter().filter(|(_, set)| *set) {
                problems.push(Problem::new(
                    format!("storage.ldap.{key}"),
                    "only for search-then-bind (base); bind_dn binds directly",
                ));
            }
            template("storage.ldap.bind_dn", &dn, problems)
                .then_some(LdapAuth::Bind { dn_template: dn })
        }
        (None, Some(base)) => {
            let filter = raw.filter.unwrap_or_else(|| "(uid={user})".to_owned());
            let filter_ok = template("storage.ldap.filter", &filter, problems);
            let service = match (raw.service_dn, service_password) {
                (Some(dn), Some(pw)) => Some(Some((dn, pw))),
                (None, None) => Some(None),
                (Some(_), None) => {
                    if !password_given {
                        problems.push(Problem::new(
                            "storage.ldap.service_password",
                            "missing: service_dn needs service_password or service_password_file",
                        ));
                    }
                    None
                }
                (None, Some(_)) => {
                    problems.push(Problem::new(
                        "storage.ldap.service_dn",
                        "missing: a service password is set but no service_dn",
                    ));
                    None
                }
            };
            match service {
                Some(service) if filter_ok => Some(LdapAuth::Search {
                    base,
                    filter_template: filter,
                    service,
                }),
                _ => None,
            }
        }
    };
    let max_connections = storage_pool_size(
        "storage.ldap.max_connections",
        raw.max_connections,
        8,
        problems,
    );
    let timeout = storage_seconds("storage.ldap.timeout", raw.timeout, 5, problems);
    Some(LdapConfig {
        url: url?,
        starttls,
        ca,
        auth: auth?,
        max_connections,
        timeout,
        data: ImDataConfig::Sqlite {
            path_template: String::new(),
        },
    })
}

/// Unknown keys inside `[storage.mysql]` and `[storage.ldap]`.
fn storage_unknown_keys(doc: &toml::Table, problems: &mut Vec<Problem>) {
    let storage = doc.get("storage");
    for (name, fields) in [
        ("mysql", fields_of::<RawMysql>()),
        ("ldap", fields_of::<RawLdap>()),
    ] {
        if let Some(toml::Value::Table(table)) = storage.and_then(|s| s.get(name)) {
            check_keys(table, &format!("storage.{name}"), fields, problems);
        }
    }
}

/// What a `[[node]]` says about itself, read before validating it, so that one broken
/// address does not also make its node vanish from the master/slave counts or the routing.
struct Declared {
    name: Option<String>,
    role: Option<Role>,
    weight: u32,
}

fn parse_role(text: &str) -> Option<Role> {
    match text {
        "master" => Some(Role::Master),
        "slave" => Some(Role::Slave),
        _ => None,
    }
}

/// Every node, or `None` where it has a problem (reported), in file order.
fn nodes(
    raw: Vec<RawNode>,
    declared: &[Declared],
    problems: &mut Vec<Problem>,
) -> Vec<Option<NodeConfig>> {
    let (nodes, binds): (Vec<Option<NodeConfig>>, Vec<Binds>) = raw
        .into_iter()
        .enumerate()
        .map(|(i, raw)| node(i, raw, problems))
        .unzip();
    let masters: Vec<usize> = (0..declared.len())
        .filter(|&i| declared[i].role == Some(Role::Master))
        .collect();
    match masters.as_slice() {
        [] => problems.push(Problem::new("node", "no node has role = \"master\"")),
        [first, rest @ ..] => {
            for &i in rest {
                problems.push(Problem::new(
                    format!("node[{i}].role"),
                    format!("a second master (node[{first}] is the master already)"),
                ));
            }
        }
    }
    if !declared.iter().any(|n| n.role == Some(Role::Slave)) {
        problems.push(Problem::new("node", "no node has role = \"slave\""));
    }
    for (i, a) in declared.iter().enumerate() {
        let Some(name) = &a.name else { continue };
        if let Some(j) = declared[..i]
            .iter()
            .position(|b| b.name.as_ref() == Some(name))
        {
            problems.push(Problem::new(
                format!("node[{i}].name"),
                format!("{name:?} is also the name of node[{j}]"),
            ));
        }
    }
    address_conflicts(declared, &binds, problems);
    nodes
}

/// The addresses a node binds, as far as they parsed: checked for clashes even when something
/// else about the node is wrong.
struct Binds {
    c2s: Option<SocketAddr>,
    c2s_tls: Option<SocketAddr>,
    farm: Option<SocketAddr>,
    s2s: Option<SocketAddr>,
}

fn node(i: usize, raw: RawNode, problems: &mut Vec<Problem>) -> (Option<NodeConfig>, Binds) {
    let key = |field: &str| format!("node[{i}].{field}");
    let mut ok = true;
    let mut fail = |problems: &mut Vec<Problem>, field: &str, message: String| {
        problems.push(Problem::new(key(field), message));
        ok = false;
    };

    let name = raw.name.unwrap_or_default();
    if name.is_empty() {
        fail(problems, "name", "missing".to_owned());
    } else if !valid_node_name(&name) {
        fail(
            problems,
            "name",
            format!("{name:?}: use lowercase letters, digits, '-', '_' and '.' (at most 63)"),
        );
    }

    let role = match raw.role.as_deref() {
        Some(text) if parse_role(text).is_some() => parse_role(text),
        Some(other) => {
            fail(
                problems,
                "role",
                format!("{other:?}: must be \"master\" or \"slave\""),
            );
            None
        }
        None => {
            fail(
                problems,
                "role",
                "missing (\"master\" or \"slave\")".to_owned(),
            );
            None
        }
    };

    let mut addr = |field: &str, value: Option<String>, required: bool| match value {
        None if required => {
            fail(problems, field, "missing (an IP:port address)".to_owned());
            None
        }
        None => None,
        Some(text) => match text.parse::<SocketAddr>() {
            Ok(addr) if addr.port() == 0 => {
                fail(problems, field, format!("{text}: port 0"));
                None
            }
            Ok(addr) => Some(addr),
            Err(_) => {
                fail(
                    problems,
                    field,
                    format!("{text:?} is not an IP:port address (IPv6 as [::1]:5222)"),
                );
                None
            }
        },
    };
    let c2s = addr("c2s", raw.c2s, true);
    let c2s_tls = addr("c2s_tls", raw.c2s_tls, false);
    let farm = addr("farm", raw.farm, true);
    let s2s = addr("s2s", raw.s2s, false);

    if let Some(farm) = farm.filter(|f| f.ip().is_unspecified()) {
        fail(
            problems,
            "farm",
            format!("{farm}: the other nodes connect to this address, so it must be a real one"),
        );
    }
    if s2s.is_some() && role == Some(Role::Slave) {
        fail(
            problems,
            "s2s",
            "only the master accepts s2s (slaves connect out)".to_owned(),
        );
    }
    let weight = match (raw.weight, role) {
        (Some(_), Some(Role::Master)) => {
            fail(
                problems,
                "weight",
                "the master owns no users; weight is for slaves".to_owned(),
            );
            1
        }
        (Some(0), _) => {
            fail(
                problems,
                "weight",
                "must be at least 1 (remove the slave to give it no users)".to_owned(),
            );
            1
        }
        (Some(w), _) => w,
        (None, _) => 1,
    };
    let advertise = match (raw.advertise, c2s) {
        (Some(text), _) => match normalize_host_port(&text) {
            Ok(advertise) => Some(advertise),
            Err(why) => {
                fail(problems, "advertise", format!("{text:?}: {why}"));
                None
            }
        },
        (None, Some(c2s)) if c2s.ip().is_unspecified() => {
            fail(
                problems,
                "advertise",
                format!(
                    "missing: c2s {c2s} binds every interface, so say which HOST:PORT \
                     clients are sent to"
                ),
            );
            None
        }
        (None, Some(c2s)) => Some(c2s.to_string()),
        (None, None) => None,
    };
    let mut mode = |field: &str, value: Option<String>| {
        let text = value?;
        if role == Some(Role::Slave) {
            problems.push(Problem::new(
                key(field),
                "only the master redirects or relays logins (slaves always redirect what \
                 is not theirs)",
            ));
            ok = false;
            return None;
        }
        let m = redirect_mode(key(field), &text, problems);
        if m.is_none() {
            ok = false;
        }
        m
    };
    let redirect = mode("redirect", raw.redirect);
    let redirect_tls = mode("redirect_tls", raw.redirect_tls);
    if redirect_tls.is_some() && c2s_tls.is_none() {
        problems.push(Problem::new(
            key("redirect_tls"),
            "set, but this node has no c2s_tls listener",
        ));
        ok = false;
    }
    let binds = Binds {
        c2s,
        c2s_tls,
        farm,
        s2s,
    };
    let config = match (ok, role, c2s, advertise, farm) {
        (true, Some(role), Some(c2s), Some(advertise), Some(farm)) => Some(NodeConfig {
            name,
            role,
            c2s,
            c2s_tls,
            advertise,
            farm,
            s2s,
            weight,
            redirect,
            redirect_tls,
        }),
        _ => None,
    };
    (config, binds)
}

/// Node names may end up in internal addresses, so they are kept to DNS-label characters.
fn valid_node_name(name: &str) -> bool {
    name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

/// `host:port` as clients should see it: a DNS name or IPv4 address, or a bracketed IPv6
/// address, and a port. IP addresses come back in their canonical form.
fn normalize_host_port(text: &str) -> Result<String, &'static str> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        if addr.port() == 0 {
            return Err("port 0");
        }
        return Ok(addr.to_string());
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err("not HOST:PORT");
    };
    match port.parse::<u16>() {
        Ok(0) | Err(_) => return Err("not HOST:PORT (the port must be 1..65535)"),
        Ok(_) => {}
    }
    if host.contains(':') || host.starts_with('[') {
        return Err("an IPv6 address must be bracketed: [2001:db8::1]:5222");
    }
    let valid = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !valid {
        return Err("not a host name or IP address");
    }
    Ok(text.to_ascii_lowercase())
}

/// Two listeners on one address: the same IP and port, or an unspecified IP (0.0.0.0, ::)
/// and the same port on one machine (the same node, or nodes sharing a farm IP or loopback).
fn address_conflicts(declared: &[Declared], binds: &[Binds], problems: &mut Vec<Problem>) {
    struct Listener<'a> {
        node: usize,
        name: &'a str,
        field: &'static str,
        addr: SocketAddr,
        /// The farm IP stands for the machine.
        host: Option<IpAddr>,
    }
    let mut listeners = Vec::new();
    for (i, (node, binds)) in declared.iter().zip(binds).enumerate() {
        let fields = [
            ("c2s", binds.c2s),
            ("c2s_tls", binds.c2s_tls),
            ("farm", binds.farm),
            ("s2s", binds.s2s),
        ];
        for (field, addr) in fields {
            if let Some(addr) = addr {
                listeners.push(Listener {
                    node: i,
                    name: node.name.as_deref().unwrap_or("unnamed"),
                    field,
                    addr,
                    host: binds.farm.map(|f| f.ip()),
                });
            }
        }
    }
    let overlaps = |a: IpAddr, b: IpAddr| {
        a == b
            || (a.is_unspecified() && (a.is_ipv6() || b.is_ipv4()))
            || (b.is_unspecified() && (b.is_ipv6() || a.is_ipv4()))
    };
    for (k, b) in listeners.iter().enumerate() {
        let clash = listeners[..k].iter().find(|a| {
            let same_machine = a.node == b.node
                || match (a.host, b.host) {
                    (Some(x), Some(y)) => x == y || (x.is_loopback() && y.is_loopback()),
                    _ => false,
                };
            a.addr.port() == b.addr.port()
                && ((a.addr.ip() == b.addr.ip() && !a.addr.ip().is_unspecified())
                    || (same_machine && overlaps(a.addr.ip(), b.addr.ip())))
        });
        if let Some(a) = clash {
            problems.push(Problem::new(
                format!("node[{}].{}", b.node, b.field),
                format!(
                    "{} is also used by node[{}].{} ({})",
                    b.addr, a.node, a.field, a.name
                ),
            ));
        }
    }
}

fn routing(
    raw: RawRouting,
    nodes: &[Declared],
    problems: &mut Vec<Problem>,
) -> Option<RoutingTable> {
    let before = problems.len();
    let key = match raw.hash_key {
        Some(text) => match hex::decode(text.trim())
            .ok()
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
        {
            Some(key) => Some(key),
            None => {
                problems.push(Problem::new(
                    "routing.hash_key",
                    "must be 32 hex digits (16 bytes; `openssl rand -hex 16` makes one)",
                ));
                None
            }
        },
        None => None,
    };
    // Whether a name may own users: Err(message) if not.
    let owner_check = |name: &str| -> Result<(), String> {
        match nodes.iter().find(|n| n.name.as_deref() == Some(name)) {
            Some(n) if n.role == Some(Role::Master) => Err(format!(
                "{name:?} is the master, which owns no users; name a slave"
            )),
            Some(_) => Ok(()),
            None => Err(format!("no [[node]] is named {name:?}")),
        }
    };
    let mode = match raw.mode.as_deref() {
        None | Some("hash") => {
            let Some(key) = key else {
                if problems.len() == before {
                    problems.push(Problem::new(
                        "routing.hash_key",
                        "missing: hash mode needs a key (`openssl rand -hex 16` makes one)",
                    ));
                }
                return None;
            };
            // Weights, duplicate names and "no slave" are reported against the nodes.
            let mut slaves: Vec<SlaveWeight> = Vec::new();
            for node in nodes.iter().filter(|n| n.role == Some(Role::Slave)) {
                let Some(name) = &node.name else { continue };
                if !slaves.iter().any(|s| &s.name == name) {
                    slaves.push(SlaveWeight {
                        name: name.clone(),
                        weight: node.weight,
                    });
                }
            }
            if slaves.is_empty() {
                return None;
            }
            RoutingMode::Hash { key, slaves }
        }
        Some("ranges") => {
            let mut ranges = Vec::new();
            let mut all_parsed = true;
            for (i, range) in raw.ranges.into_iter().enumerate() {
                let key = |field: &str| format!("routing.ranges[{i}].{field}");
                let letters = match range.letters.as_deref().map(parse_letters) {
                    Some(Ok(letters)) => Some(letters),
                    Some(Err(message)) => {
                        problems.push(Problem::new(key("letters"), message));
                        None
                    }
                    None => {
                        problems.push(Problem::new(key("letters"), "missing (like \"a-g\")"));
                        None
                    }
                };
                let node = match range.node {
                    Some(node) => match owner_check(&node) {
                        Ok(()) => Some(node),
                        Err(message) => {
                            problems.push(Problem::new(key("node"), message));
                            Some(node)
                        }
                    },
                    None => {
                        problems.push(Problem::new(key("node"), "missing"));
                        None
                    }
                };
                match (letters, node) {
                    (Some((first, last)), Some(node)) => {
                        ranges.push(LetterRange { first, last, node })
                    }
                    (None, _) => all_parsed = false,
                    (Some(_), None) => {}
                }
            }
            let other = match raw.other {
                Some(other) => {
                    if let Err(message) = owner_check(&other) {
                        problems.push(Problem::new("routing.other", message));
                    }
                    other
                }
                None => {
                    problems.push(Problem::new(
                        "routing.other",
                        "missing: the node for usernames that do not start with a..z \
                         (digits, non-ASCII)",
                    ));
                    String::new()
                }
            };
            if !all_parsed {
                return None; // gaps would only echo the broken range
            }
            RoutingMode::Ranges { ranges, other }
        }
        Some(other) => {
            problems.push(Problem::new(
                "routing.mode",
                format!("{other:?}: must be \"hash\" or \"ranges\""),
            ));
            return None;
        }
    };
    let ranges_mode = matches!(mode, RoutingMode::Ranges { .. });
    match RoutingTable::new(mode) {
        Ok(table) => Some(table),
        Err(errors) => {
            let key = if ranges_mode {
                "routing.ranges"
            } else {
                "routing"
            };
            for message in errors {
                // `other` missing is already reported against routing.other.
                if !message.contains("(other)") {
                    problems.push(Problem::new(key, message));
                }
            }
            None
        }
    }
}

/// `"a-g"` → ('a', 'g'), `"x"` → ('x', 'x'); case-insensitive.
fn parse_letters(text: &str) -> Result<(char, char), String> {
    let lower = text.trim().to_ascii_lowercase();
    let letter = |s: &str| {
        let mut chars = s.trim().chars();
        match (chars.next(), chars.next()) {
            (Some(c @ 'a'..='z'), None) => Some(c),
            _ => None,
        }
    };
    let parsed = match lower.split_once('-') {
        Some((first, last)) => letter(first).zip(letter(last)),
        None => letter(&lower).map(|c| (c, c)),
    };
    match parsed {
        Some((first, last)) if first > last => Err(format!(
            "{text:?} runs backwards (write \"{last}-{first}\")"
        )),
        Some(range) => Ok(range),
        None => Err(format!(
            "{text:?} is not a letter range like \"a-g\" or \"x\""
        )),
    }
}

// ---- unknown keys ----------------------------------------------------------------------------

/// Every key the file has that no struct above knows, each with its full name.
fn unknown_keys(doc: &toml::Table) -> Vec<Problem> {
    let mut problems = Vec::new();
    check_keys(doc, "", fields_of::<RawConfig>(), &mut problems);
    let sections = [
        ("tls", fields_of::<RawTls>()),
        ("limits", fields_of::<RawLimits>()),
        ("routing", fields_of::<RawRouting>()),
        ("storage", fields_of::<RawStorage>()),
        ("farm", fields_of::<RawFarm>()),
        ("s2s", fields_of::<RawS2s>()),
        ("relay", fields_of::<RawRelay>()),
        ("auth_limits", fields_of::<RawAuthLimits>()),
    ];
    for (name, fields) in sections {
        if let Some(toml::Value::Table(table)) = doc.get(name) {
            check_keys(table, name, fields, &mut problems);
        }
    }
    storage_unknown_keys(doc, &mut problems);
    let arrays = [
        (doc.get("node"), "node", fields_of::<RawNode>()),
        (
            doc.get("routing").and_then(|r| r.get("ranges")),
            "routing.ranges",
            fields_of::<RawRange>(),
        ),
    ];
    for (value, name, fields) in arrays {
        if let Some(toml::Value::Array(items)) = value {
            for (i, item) in items.iter().enumerate() {
                if let toml::Value::Table(table) = item {
                    check_keys(table, &format!("{name}[{i}]"), fields, &mut problems);
                }
            }
        }
    }
    problems
}

fn check_keys(table: &toml::Table, prefix: &str, known: &[&str], problems: &mut Vec<Problem>) {
    for key in table.keys() {
        if known.contains(&key.as_str()) {
            continue;
        }
        let full = if prefix.is_empty() {
            key.clone()
        } else {
            format!("{prefix}.{key}")
        };
        let hint = match known.iter().find(|k| edit_distance(k, key) <= 2) {
            Some(near) => format!("did you mean {near:?}?"),
            None => format!("known keys here: {}", known.join(", ")),
        };
        problems.push(Problem::new(full, format!("unknown key; {hint}")));
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// The field names serde derived for `T`: a deserializer that only records what
/// `deserialize_struct` is asked for. Keeps the list of known keys in one place.
fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{self, Visitor};

    #[derive(Debug)]
    struct Stop;
    impl fmt::Display for Stop {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("field probe")
        }
    }
    impl std::error::Error for Stop {}
    impl de::Error for Stop {
        fn custom<M: fmt::Display>(_: M) -> Self {
            Stop
        }
    }

    struct Probe<'a>(&'a mut &'static [&'static str]);
    impl<'de> de::Deserializer<'de> for Probe<'_> {
        type Error = Stop;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Stop> {
            Err(Stop)
        }
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Stop> {
            *self.0 = fields;
            Err(Stop)
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
            byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
            identifier ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Probe(&mut fields));
    fields
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    /// Everything but the nodes; TLS generated so that no file has to exist.
    const HEAD: &str = r#"
domain = "example.net"
secret = "s3cret"
[tls]
generate = true
[routing]
mode = "hash"
hash_key = "000102030405060708090a0b0c0d0e0f"
"#;

    const NODES: &str = r#"
[[node]]
name = "master"
role = "master"
c2s = "127.0.0.1:5222"
farm = "127.0.0.1:7100"
s2s = "127.0.0.1:5269"

[[node]]
name = "slave1"
role = "slave"
c2s = "127.0.0.1:5322"
farm = "127.0.0.1:7101"

[[node]]
name = "slave2"
role = "slave"
weight = 2
c2s = "127.0.0.1:5422"
farm = "127.0.0.1:7102"
"#;

    fn parse(text: &str) -> Result<FarmConfig, ConfigError> {
        FarmConfig::from_str(text, Path::new("config.toml"), None)
    }

    fn problems(text: &str) -> Vec<Problem> {
        match parse(text) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        }
    }

    /// Asserts that `text` has a problem at `key` whose message contains `fragment`.
    #[track_caller]
    fn assert_problem(text: &str, key: &str, fragment: &str) {
        let problems = problems(text);
        assert!(
            problems
                .iter()
                .any(|p| p.key == key && p.message.contains(fragment)),
            "no {key:?} problem containing {fragment:?} in {problems:#?}"
        );
    }

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

    fn with_nodes(head: &str) -> String {
        format!("{head}{NODES}")
    }

    /// HEAD + NODES with `from` replaced by `to` (exactly once).
    fn changed(from: &str, to: &str) -> String {
        let text = with_nodes(HEAD);
        assert_eq!(text.matches(from).count(), 1, "{from:?}");
        text.replacen(from, to, 1)
    }

    /// A scratch directory of our own under the system temp dir.
    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "jabberfarm-config-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

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
    fn unknown_keys_everywhere() {
        let text = with_nodes(HEAD)
            .replace("[tls]\n", "colour = 1\n[tls]\ncertificate = \"x\"\n")
            .replace("0e0f\"\n", "0e0f\"\n[[routing.ranges]]\nletter = \"a\"\n")
            + "[limits]\nmax_stanzas = 1\n";
        let problems = problems(&text);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "colour",
                "tls.certificate",
                "limits.max_stanzas",
                "routing.ranges[0].letter"
            ]
        );
        assert!(
            problems[0]
                .message
                .contains("known keys here: domain, secret")
        );
        assert!(problems[3].message.contains("did you mean \"letters\"?"));
    }

    #[test]
    fn field_probe_reads_the_serde_field_names() {
        assert_eq!(fields_of::<RawRange>(), ["letters", "node"],);
        assert_eq!(
            fields_of::<RawTls>(),
            ["cert", "key", "generate", "required"],
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
    fn master_and_slave_counts() {
        assert_problem(
            &changed("role = \"master\"", "role = \"slave\""),
            "node",
            "no node has role = \"master\"",
        );
        assert_problem(
            &changed(
                "name = \"slave1\"\nrole = \"slave\"",
                "name = \"slave1\"\nrole = \"master\"",
            ),
            "node[1].role",
            "a second master (node[0] is the master already)",
        );
        assert_problem(
            &format!(
                "{HEAD}{}",
                &NODES[..NODES.find("[[node]]\nname = \"slave1\"").unwrap()]
            ),
            "node",
            "no node has role = \"slave\"",
        );
        assert_problem(HEAD, "node", "no node has role = \"master\"");
        assert_problem(
            &changed("role = \"master\"", "role = \"boss\""),
            "node[0].role",
            "\"boss\"",
        );
        // A slave with a broken address still counts as a slave.
        let problems = problems(&changed("\"127.0.0.1:5322\"", "\"nowhere\""));
        assert_eq!(problems.len(), 1, "{problems:#?}");
        assert_eq!(problems[0].key, "node[1].c2s");
        assert!(problems[0].message.contains("is not an IP:port address"));
    }

    #[test]
    fn node_names() {
        assert_problem(
            &changed("name = \"slave2\"", "name = \"slave1\""),
            "node[2].name",
            "\"slave1\" is also the name of node[1]",
        );
        assert_problem(
            &changed("name = \"slave2\"\n", ""),
            "node[2].name",
            "missing",
        );
        assert_problem(
            &changed("name = \"slave2\"", "name = \"Slave 2\""),
            "node[2].name",
            "use lowercase letters",
        );
    }

    #[test]
    fn listeners_on_one_address() {
        assert_problem(
            &changed("farm = \"127.0.0.1:7102\"", "farm = \"127.0.0.1:7100\""),
            "node[2].farm",
            "127.0.0.1:7100 is also used by node[0].farm (master)",
        );
        // Two listeners of one node.
        assert_problem(
            &changed("s2s = \"127.0.0.1:5269\"", "s2s = \"127.0.0.1:5222\""),
            "node[0].s2s",
            "127.0.0.1:5222 is also used by node[0].c2s (master)",
        );
        // 0.0.0.0 covers 127.0.0.1 on the same machine…
        assert_problem(
            &changed(
                "c2s = \"127.0.0.1:5422\"",
                "c2s = \"0.0.0.0:5322\"\nadvertise = \"xmpp2.example.net:5322\"",
            ),
            "node[2].c2s",
            "0.0.0.0:5322 is also used by node[1].c2s (slave1)",
        );
        // …but not on another machine (different farm address).
        let text = changed(
            "c2s = \"127.0.0.1:5422\"\nfarm = \"127.0.0.1:7102\"",
            "c2s = \"0.0.0.0:5322\"\nadvertise = \"xmpp2.example.net:5322\"\n\
             farm = \"10.0.0.12:7100\"",
        );
        parse(&text).unwrap();
    }

    #[test]
    fn addresses_and_advertise() {
        assert_problem(
            &changed("c2s = \"127.0.0.1:5322\"\n", ""),
            "node[1].c2s",
            "missing",
        );
        assert_problem(
            &changed("\"127.0.0.1:5322\"", "\"127.0.0.1:0\""),
            "node[1].c2s",
            "port 0",
        );
        assert_problem(
            &changed("\"127.0.0.1:7101\"", "\"0.0.0.0:7101\""),
            "node[1].farm",
            "must be a real one",
        );
        assert_problem(
            &changed("\"127.0.0.1:5322\"", "\"0.0.0.0:5322\""),
            "node[1].advertise",
            "missing: c2s 0.0.0.0:5322 binds every interface",
        );
        assert_problem(
            &changed(
                "farm = \"127.0.0.1:7101\"",
                "farm = \"127.0.0.1:7101\"\ns2s = \"127.0.0.1:5270\"",
            ),
            "node[1].s2s",
            "only the master",
        );
        for (advertise, why) in [
            ("::1:5222", "must be bracketed"),
            ("xmpp.example.net", "not HOST:PORT"),
            ("xmpp.example.net:0", "port must be"),
            ("bad_host:5222", "not a host name"),
        ] {
            assert_problem(
                &changed(
                    "farm = \"127.0.0.1:7101\"",
                    &format!("farm = \"127.0.0.1:7101\"\nadvertise = {advertise:?}"),
                ),
                "node[1].advertise",
                why,
            );
        }
        let config = parse(&changed(
            "c2s = \"127.0.0.1:5322\"",
            "c2s = \"[::1]:5322\"\nc2s_tls = \"[::1]:5323\"",
        ))
        .unwrap();
        let slave1 = config.node("slave1").unwrap();
        assert_eq!(slave1.advertise, "[::1]:5322");
        assert_eq!(slave1.c2s_tls, Some("[::1]:5323".parse().unwrap()));
        let config = parse(&changed(
            "farm = \"127.0.0.1:7101\"",
            "farm = \"127.0.0.1:7101\"\nadvertise = \"XMPP1.example.net:5222\"",
        ))
        .unwrap();
        assert_eq!(
            config.node("slave1").unwrap().advertise,
            "xmpp1.example.net:5222"
        );
    }

    #[test]
    fn weights() {
        assert_problem(
            &changed("weight = 2", "weight = 0"),
            "node[2].weight",
            "at least 1",
        );
        assert_problem(
            &changed("role = \"master\"", "role = \"master\"\nweight = 3"),
            "node[0].weight",
            "the master owns no users",
        );
    }

    #[test]
    fn hash_key_problems() {
        assert_problem(
            &changed("hash_key = \"000102030405060708090a0b0c0d0e0f\"\n", ""),
            "routing.hash_key",
            "missing",
        );
        for bad in [
            "0001",
            "zz0102030405060708090a0b0c0d0e0f",
            "000102030405060708090a0b0c0d0e0f00",
        ] {
            assert_problem(
                &changed("\"000102030405060708090a0b0c0d0e0f\"", &format!("{bad:?}")),
                "routing.hash_key",
                "must be 32 hex digits",
            );
        }
        assert_problem(
            &changed("mode = \"hash\"", "mode = \"modulo\""),
            "routing.mode",
            "\"modulo\"",
        );
    }

    fn ranges(ranges: &[(&str, &str)], other: &str) -> String {
        let mut routing = format!("mode = \"ranges\"\nother = {other:?}\n");
        for (letters, node) in ranges {
            routing.push_str(&format!(
                "[[routing.ranges]]\nletters = {letters:?}\nnode = {node:?}\n"
            ));
        }
        changed("mode = \"hash\"\n", "").replace("0e0f\"\n", &format!("0e0f\"\n{routing}"))
    }

    #[test]
    fn ranges_mode_loads() {
        let config = parse(&ranges(&[("A-M", "slave1"), ("n-z", "slave2")], "slave2")).unwrap();
        assert_eq!(config.routing.owner_of("Nina").unwrap(), "slave2");
        assert_eq!(config.routing.owner_of("mike").unwrap(), "slave1");
        assert_eq!(config.routing.owner_of("42").unwrap(), "slave2");
    }

    #[test]
    fn ranges_gap_overlap_and_unknown_nodes() {
        let text = ranges(
            &[("a-g", "slave1"), ("f-m", "slave2"), ("q-z", "slave2")],
            "slave1",
        );
        assert_problem(
            &text,
            "routing.ranges",
            "ranges a-g and f-m overlap on f..g",
        );
        assert_problem(
            &text,
            "routing.ranges",
            "letters n..p are not covered by any range",
        );
        let text = ranges(&[("a-m", "slave9"), ("n-z", "master")], "ghost");
        assert_problem(
            &text,
            "routing.ranges[0].node",
            "no [[node]] is named \"slave9\"",
        );
        assert_problem(&text, "routing.ranges[1].node", "\"master\" is the master");
        assert_problem(&text, "routing.other", "no [[node]] is named \"ghost\"");
        let text = ranges(&[("a-m", "slave1"), ("n-", "slave2")], "slave1");
        let found = problems(&text);
        assert_eq!(found.len(), 1, "{found:#?}");
        assert_eq!(found[0].key, "routing.ranges[1].letters");
        assert!(found[0].message.contains("is not a letter range"));
        assert_problem(
            &ranges(&[("m-a", "slave1"), ("n-z", "slave2")], "slave1"),
            "routing.ranges[0].letters",
            "runs backwards (write \"a-m\")",
        );
        let text = ranges(&[("a-z", "slave1")], "slave1").replace("other = \"slave1\"\n", "");
        assert_problem(&text, "routing.other", "missing");
        assert_eq!(problems(&text).len(), 1);
    }

    #[test]
    fn certificate_files_must_exist_unless_generated() {
        let dir = scratch_dir("tls");
        let text = with_nodes(&HEAD.replace("generate = true", "generate = false"));
        let config = FarmConfig::from_str(&text, Path::new("c.toml"), Some(&dir));
        let Err(ConfigError::Invalid { problems, .. }) = config else {
            panic!("{config:?}")
        };
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["tls.cert", "tls.key"]);
        assert!(problems[0].message.contains("does not exist"));
        std::fs::create_dir_all(dir.join("tls")).unwrap();
        std::fs::write(dir.join("tls/cert.pem"), "").unwrap();
        std::fs::write(dir.join("tls/key.pem"), "").unwrap();
        let config = FarmConfig::from_str(&text, Path::new("c.toml"), Some(&dir)).unwrap();
        assert!(config.check_files().is_empty());
        std::fs::remove_file(dir.join("tls/key.pem")).unwrap();
        let later = config.check_files();
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].key, "tls.key");
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
    fn storage_problems() {
        let text = |storage: &str| format!("{}[storage]\n{storage}\n", with_nodes(HEAD));
        assert_problem(
            &text("backend = \"postgres\""),
            "storage.backend",
            "unknown backend",
        );
        assert_problem(
            &text("scram_iterations = 0"),
            "storage.scram_iterations",
            "at least 1",
        );
        assert_problem(&text("path = \"\""), "storage.path", "empty");
        let config = parse(&text("path = \"/var/db/{node}.db\"")).unwrap();
        assert_eq!(
            config.storage.sqlite_path(&config.data_dir, "slave2"),
            Some(PathBuf::from("/var/db/slave2.db"))
        );
        assert!(!config.storage.plain_only());
        assert_eq!(config.storage.accounts_managed_elsewhere(), None);
        assert_problem(
            &text("[storage.mysql]\nurl = \"mysql://u@h/db\""),
            "storage.mysql",
            "not used with storage.backend = \"sqlite\"",
        );
    }

    #[test]
    fn storage_mysql() {
        let text = |mysql: &str| {
            format!(
                "{}[storage]\nbackend = \"mysql\"\n[storage.mysql]\n{mysql}\n",
                with_nodes(HEAD)
            )
        };
        let config = parse(&text("url = \"mysql://jf:pw@db.example.net/farm\"")).unwrap();
        let StorageBackend::Mysql(m) = &config.storage.backend else {
            panic!("{:?}", config.storage);
        };
        assert_eq!(m.url, "mysql://jf:pw@db.example.net/farm");
        assert_eq!(m.password, None);
        assert_eq!(
            (
                m.max_connections,
                m.acquire_timeout,
                m.query_timeout,
                m.migrate
            ),
            (10, Duration::from_secs(5), Duration::from_secs(10), true)
        );
        assert_eq!(m.accounts, MysqlAccounts::Scram);
        assert!(!config.storage.plain_only());
        assert_eq!(config.storage.sqlite_path(&config.data_dir, "slave1"), None);
        // The password never shows in Debug.
        let debug = format!("{config:?}");
        assert!(!debug.contains(":pw@"), "{debug}");
        assert!(
            debug.contains("mysql://jf:<redacted>@db.example.net/farm"),
            "{debug}"
        );

        let legacy = parse(&text(
            "url = \"mysql://jf@db/farm\"\nlogin_query = \"SELECT pw FROM users WHERE login = ?\"\n\
             password_format = \"bcrypt\"\nmigrate = false\nacquire_timeout = 1",
        ))
        .unwrap();
        let StorageBackend::Mysql(m) = &legacy.storage.backend else {
            panic!();
        };
        assert_eq!(
            m.accounts,
            MysqlAccounts::Legacy {
                login_query: "SELECT pw FROM users WHERE login = ?".into(),
                format: PasswordFormat::Bcrypt
            }
        );
        assert!(!m.migrate);
        assert_eq!(m.acquire_timeout, Duration::from_secs(1));
        assert!(legacy.storage.plain_only());
        assert!(legacy.storage.accounts_managed_elsewhere().is_some());

        assert_problem(
            &format!("{}[storage]\nbackend = \"mysql\"\n", with_nodes(HEAD)),
            "storage.mysql",
            "missing",
        );
        assert_problem(&text("max_connections = 3"), "storage.mysql.url", "missing");
        assert_problem(
            &format!(
                "{}[storage]\nbackend = \"mysql\"\npath = \"x.db\"\n[storage.mysql]\n\
                 url = \"mysql://u@h/db\"\n",
                with_nodes(HEAD)
            ),
            "storage.path",
            "not used",
        );
        assert_problem(
            &text("url = \"postgres://h/db\""),
            "storage.mysql.url",
            "not a MySQL URL",
        );
        assert_problem(
            &text("url = \"mysql://u@h\""),
            "storage.mysql.url",
            "names no database",
        );
        assert_problem(
            &text("url = \"mysql://u:x@h/db\"\npassword_file = \"pw\""),
            "storage.mysql.password_file",
            "one place only",
        );
        assert_problem(
            &text("url = \"mysql://u@h/db\"\npassword_file = \"/nonexistent/pw\""),
            "storage.mysql.password_file",
            "cannot read /nonexistent/pw",
        );
        assert_problem(
            &text("url = \"mysql://u@h/db\"\npassword_format = \"md5\""),
            "storage.mysql.password_format",
            "unknown \"md5\"",
        );
        assert_problem(
            &text("url = \"mysql://u@h/db\"\npassword_format = \"argon2\""),
            "storage.mysql.password_format",
            "needs login_query",
        );
        assert_problem(
            &text("url = \"mysql://u@h/db\"\nlogin_query = \"SELECT 1\""),
            "storage.mysql.login_query",
            "legacy password_format",
        );
        assert_problem(
            &text(
                "url = \"mysql://u@h/db\"\nlogin_query = \"SELECT p FROM t WHERE a = ? OR b = ?\"\n\
                 password_format = \"ssha\"",
            ),
            "storage.mysql.login_query",
            "exactly one ?",
        );
        for key in ["acquire_timeout", "query_timeout", "max_connections"] {
            assert_problem(
                &text(&format!("url = \"mysql://u@h/db\"\n{key} = 0")),
                &format!("storage.mysql.{key}"),
                "at least 1",
            );
        }
        assert_problem(
            &text("url = \"mysql://u@h/db\"\nurl_typo = 1"),
            "storage.mysql.url_typo",
            "unknown key",
        );

        // A password file, relative to the config file.
        let dir = scratch_dir("mysql-password");
        std::fs::write(dir.join("db.pw"), "s3cr3t\n").unwrap();
        let config = FarmConfig::from_str(
            &text("url = \"mysql://jf@db/farm\"\npassword_file = \"db.pw\""),
            &dir.join("farm.toml"),
            None,
        )
        .unwrap();
        let StorageBackend::Mysql(m) = &config.storage.backend else {
            panic!();
        };
        assert_eq!(m.password.as_deref(), Some("s3cr3t"));
        assert!(!format!("{config:?}").contains("s3cr3t"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn storage_ldap() {
        let dir = scratch_dir("ldap");
        std::fs::write(dir.join("ca.pem"), "").unwrap();
        std::fs::write(dir.join("service.pw"), "svc-secret\n").unwrap();
        let load = |ldap: &str, extra: &str| {
            let ca = if ldap.contains("ca =") {
                ""
            } else {
                "ca = \"ca.pem\"\n"
            };
            FarmConfig::from_str(
                &format!(
                    "{}[storage]\nbackend = \"ldap\"\n{extra}\n[storage.ldap]\n{ca}{ldap}\n",
                    with_nodes(HEAD)
                ),
                &dir.join("farm.toml"),
                None,
            )
        };
        let problems_of = |ldap: &str, extra: &str| match load(ldap, extra) {
            Err(ConfigError::Invalid { problems, .. }) => problems,
            other => panic!("expected problems, got {other:?}"),
        };
        let has = |problems: &[Problem], key: &str, fragment: &str| {
            assert!(
                problems
                    .iter()
                    .any(|p| p.key == key && p.message.contains(fragment)),
                "no {key:?} problem containing {fragment:?} in {problems:#?}"
            );
        };

        let config = load(
            "url = \"ldaps://ldap.example.net\"\nbind_dn = \"uid={user},ou=people,dc=example,dc=net\"",
            "",
        )
        .unwrap();
        let StorageBackend::Ldap(l) = &config.storage.backend else {
            panic!("{:?}", config.storage);
        };
        assert_eq!(l.url, "ldaps://ldap.example.net");
        assert!(!l.starttls);
        assert_eq!(l.ca, dir.join("ca.pem"));
        assert_eq!(
            l.auth,
            LdapAuth::Bind {
                dn_template: "uid={user},ou=people,dc=example,dc=net".into()
            }
        );
        assert_eq!((l.max_connections, l.timeout), (8, Duration::from_secs(5)));
        assert!(config.storage.plain_only());
        assert!(
            config
                .storage
                .accounts_managed_elsewhere()
                .unwrap()
                .contains("LDAP directory")
        );
        // IM data in SQLite by default.
        assert_eq!(
            config.storage.sqlite_path(Path::new("/d"), "slave1"),
            Some(PathBuf::from("/d/slave1.sqlite"))
        );

        let config = load(
            "url = \"ldap://ldap.example.net:389\"\nstarttls = true\nbase = \"ou=people,dc=example,dc=net\"\n\
             filter = \"(&(objectClass=inetOrgPerson)(uid={user}))\"\n\
             service_dn = \"cn=jf,dc=example,dc=net\"\nservice_password_file = \"service.pw\"\n\
             data = \"mysql\"",
            "[storage.mysql]\nurl = \"mysql://jf@db/farm\"",
        )
        .unwrap();
        let StorageBackend::Ldap(l) = &config.storage.backend else {
            panic!();
        };
        assert!(l.starttls);
        assert_eq!(
            l.auth,
            LdapAuth::Search {
                base: "ou=people,dc=example,dc=net".into(),
                filter_template: "(&(objectClass=inetOrgPerson)(uid={user}))".into(),
                service: Some(("cn=jf,dc=example,dc=net".into(), "svc-secret".into())),
            }
        );
        assert!(matches!(&l.data, ImDataConfig::Mysql(m) if m.url == "mysql://jf@db/farm"));
        assert!(!format!("{config:?}").contains("svc-secret"));
        assert_eq!(config.storage.sqlite_path(&config.data_dir, "slave1"), None);

        let bind = "bind_dn = \"uid={user},dc=x\"";
        has(
            &problems_of(&format!("url = \"ldap://h\"\n{bind}"), ""),
            "storage.ldap.url",
            "in clear",
        );
        has(
            &problems_of(&format!("url = \"ldaps://h\"\nstarttls = true\n{bind}"), ""),
            "storage.ldap.starttls",
            "TLS already",
        );
        has(
            &problems_of(&format!("url = \"http://h\"\n{bind}"), ""),
            "storage.ldap.url",
            "not an ldaps://",
        );
        has(
            &problems_of("url = \"ldaps://h\"\nbind_dn = \"dc=x\"", ""),
            "storage.ldap.bind_dn",
            "{user}",
        );
        has(
            &problems_of("url = \"ldaps://h\"", ""),
            "storage.ldap.bind_dn",
            "missing",
        );
        has(
            &problems_of(&format!("url = \"ldaps://h\"\n{bind}\nbase = \"dc=x\""), ""),
            "storage.ldap.bind_dn",
            "not both",
        );
        has(
            &problems_of(
                &format!("url = \"ldaps://h\"\n{bind}\nfilter = \"(uid={{user}})\""),
                "",
            ),
            "storage.ldap.filter",
            "only for search-then-bind",
        );
        has(
            &problems_of(
                "url = \"ldaps://h\"\nbase = \"dc=x\"\nfilter = \"(uid=x)\"",
                "",
            ),
            "storage.ldap.filter",
            "{user}",
        );
        has(
            &problems_of(
                "url = \"ldaps://h\"\nbase = \"dc=x\"\nservice_dn = \"cn=s\"",
                "",
            ),
            "storage.ldap.service_password",
            "missing",
        );
        has(
            &problems_of(
                "url = \"ldaps://h\"\nbase = \"dc=x\"\nservice_dn = \"cn=s\"\nservice_password = \"\"",
                "",
            ),
            "storage.ldap.service_password",
            "anonymous bind",
        );
        has(
            &problems_of(
                &format!("url = \"ldaps://h\"\n{bind}\ndata = \"mysql\""),
                "",
            ),
            "storage.mysql",
            "missing",
        );
        has(
            &problems_of(
                &format!("url = \"ldaps://h\"\n{bind}\ndata = \"redis\""),
                "",
            ),
            "storage.ldap.data",
            "unknown \"redis\"",
        );
        has(
            &problems_of(
                &format!("url = \"ldaps://h\"\n{bind}"),
                "[storage.mysql]\nurl = \"mysql://u@h/db\"",
            ),
            "storage.mysql",
            "not used",
        );
        has(
            &problems_of(
                &format!("url = \"ldaps://h\"\n{bind}\nca = \"missing.pem\""),
                "",
            ),
            "storage.ldap.ca",
            "is not a file",
        );
        has(
            &problems_of(&format!("url = \"ldaps://h\"\n{bind}\ntimeout = 0"), ""),
            "storage.ldap.timeout",
            "at least 1",
        );
        has(
            &problems_of(&format!("url = \"ldaps://h\"\n{bind}\nbindd_dn = 1"), ""),
            "storage.ldap.bindd_dn",
            "did you mean \"bind_dn\"",
        );
        // A local socket needs no TLS (and no CA).
        assert!(
            load(
                "url = \"ldapi://%2Frun%2Fslapd%2Fldapi\"\nbind_dn = \"uid={user},dc=x\"",
                ""
            )
            .is_ok()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_backend_samples_only_lack_their_files() {
        let files = [
            "secret_file",
            "tls.cert",
            "tls.key",
            "storage.mysql.password_file",
            "storage.ldap.ca",
            "storage.ldap.service_password_file",
        ];
        for name in ["mysql.sample.toml", "ldap.sample.toml"] {
            match FarmConfig::load(&conf(name), None) {
                Ok(_) => {} // files present here
                Err(ConfigError::Invalid { problems, .. }) => {
                    for p in &problems {
                        assert!(files.contains(&p.key.as_str()), "{name}: {p}");
                    }
                }
                Err(e) => panic!("{name}: {e}"),
            }
            // With the files in place, it loads; so do its commented alternatives.
            let dir = scratch_dir(name);
            for file in [
                "farm.secret",
                "mysql.password",
                "ldap.password",
                "cert.pem",
                "key.pem",
                "ldap-ca.pem",
            ] {
                std::fs::write(dir.join(file), "x\n").unwrap();
            }
            let text = std::fs::read_to_string(conf(name))
                .unwrap()
                .replace("/etc/jabberfarm/tls/fullchain.pem", "cert.pem")
                .replace("/etc/jabberfarm/tls/privkey.pem", "key.pem")
                .replace("/etc/jabberfarm/", "");
            let load = |text: &str| {
                FarmConfig::from_str(text, &dir.join("farm.toml"), Some(&dir))
                    .unwrap_or_else(|e| panic!("{name}: {e}"))
            };
            let config = load(&text);
            assert_eq!(config.slaves().count(), 3);
            match &config.storage.backend {
                StorageBackend::Mysql(m) => {
                    assert_eq!(m.password.as_deref(), Some("x"));
                    assert_eq!(m.accounts, MysqlAccounts::Scram);
                    assert!(!config.storage.plain_only());
                    let legacy = load(
                        &text
                            .replace("# login_query", "login_query")
                            .replace("# password_format", "password_format"),
                    );
                    let StorageBackend::Mysql(m) = &legacy.storage.backend else {
                        panic!();
                    };
                    assert!(matches!(
                        m.accounts,
                        MysqlAccounts::Legacy {
                            format: PasswordFormat::Bcrypt,
                            ..
                        }
                    ));
                }
                StorageBackend::Ldap(l) => {
                    assert!(matches!(
                        l.auth,
                        LdapAuth::Search {
                            service: Some(_),
                            ..
                        }
                    ));
                    assert!(matches!(l.data, ImDataConfig::Mysql(_)));
                    let bind = load(
                        &text
                            .replace("url = \"ldaps", "# url = \"ldaps")
                            .replace("# url = \"ldap:", "url = \"ldap:")
                            .replace("# starttls", "starttls")
                            .replace("\nbase =", "\n# base =")
                            .replace("\nfilter =", "\n# filter =")
                            .replace("\nservice_", "\n# service_")
                            .replace("# bind_dn", "bind_dn"),
                    );
                    let StorageBackend::Ldap(l) = &bind.storage.backend else {
                        panic!();
                    };
                    assert!(l.starttls && matches!(l.auth, LdapAuth::Bind { .. }));
                }
                other => panic!("{name}: {other:?}"),
            }
            std::fs::remove_dir_all(&dir).unwrap();
        }
    }

    #[test]
    fn redacting_url_passwords() {
        for (url, shown) in [
            ("mysql://u:p@h/db", "mysql://u:<redacted>@h/db"),
            (
                "mysql://u:p:q@h:3306/db?x=1",
                "mysql://u:<redacted>@h:3306/db?x=1",
            ),
            ("mysql://u@h/db", "mysql://u@h/db"),
            ("mysql://h/db", "mysql://h/db"),
            ("not a url", "not a url"),
        ] {
            assert_eq!(redact_url_password(url), shown, "{url}");
        }
    }

    fn conf(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../conf")
            .join(name)
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
