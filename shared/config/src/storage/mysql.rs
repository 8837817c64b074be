//! `[storage.mysql]`: the MySQL/MariaDB database, of the accounts and IM data or of LDAP's IM
//! data only; and keeping its password out of logs.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{storage_password_file, storage_pool_size, storage_seconds};
use crate::Problem;

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

#[derive(Deserialize, Default)]
pub(crate) struct RawMysql {
    url: Option<String>,
    password_file: Option<PathBuf>,
    max_connections: Option<u32>,
    acquire_timeout: Option<u64>,
    query_timeout: Option<u64>,
    migrate: Option<bool>,
    login_query: Option<String>,
    password_format: Option<String>,
}

/// `[storage.mysql]`; `accounts`: whether the accounts live there too (not for LDAP's data).
pub(crate) fn mysql(
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use crate::{FarmConfig, StorageBackend};

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
}
