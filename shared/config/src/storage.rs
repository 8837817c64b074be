//! `[storage]`: where accounts and per-user IM data live (DESIGN.md D6; `docs/backends.md`),
//! and what the backends share. The backends' own sections are in `storage/mysql.rs` and
//! `storage/ldap.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::Problem;
use crate::keys::{check_keys, fields_of};

mod ldap;
mod mysql;

pub use self::ldap::{LdapAuth, LdapConfig};
pub use self::mysql::{MysqlAccounts, MysqlConfig, PasswordFormat, redact_url_password};

use self::ldap::{RawLdap, ldap};
use self::mysql::{RawMysql, mysql};

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

impl StorageConfig {
    /// Every slave reads the same accounts and IM data (MySQL, or LDAP with its data in
    /// MySQL): a user can be served by any slave, so the users of a failed slave can log in
    /// at another one (failover, docs/operations.md).
    pub fn central(&self) -> bool {
        self.sqlite_path(Path::new(""), "x").is_none()
    }

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

#[derive(Deserialize, Default)]
pub(crate) struct RawStorage {
    backend: Option<String>,
    path: Option<String>,
    scram_iterations: Option<u32>,
    mysql: Option<RawMysql>,
    ldap: Option<RawLdap>,
}

pub(crate) fn storage(
    raw: RawStorage,
    source: &Path,
    problems: &mut Vec<Problem>,
) -> Option<StorageConfig> {
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

/// Unknown keys inside `[storage.mysql]` and `[storage.ldap]`.
pub(crate) fn storage_unknown_keys(doc: &toml::Table, problems: &mut Vec<Problem>) {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use crate::{ConfigError, FarmConfig};

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
}
