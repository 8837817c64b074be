//! `[storage.ldap]`: accounts in an LDAP directory.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{ImDataConfig, storage_password_file, storage_pool_size, storage_seconds};
use crate::Problem;

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

#[derive(Deserialize, Default)]
pub(crate) struct RawLdap {
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
    pub(crate) data: Option<String>,
}

/// `[storage.ldap]` (its `data` is decided by the caller; `Sqlite` here is a placeholder).
pub(crate) fn ldap(
    raw: Option<RawLdap>,
    source: &Path,
    problems: &mut Vec<Problem>,
) -> Option<LdapConfig> {
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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::test_support::*;
    use crate::{ConfigError, FarmConfig, StorageBackend};

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
}
