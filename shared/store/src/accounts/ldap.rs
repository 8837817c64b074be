//! Accounts in an LDAP directory (DESIGN.md D6), through ldap3 over rustls (no OpenSSL).
//!
//! Two ways to check a password (`storage.ldap`):
//! - **bind**: bind as the DN made from `bind_dn` with the username DN-escaped (RFC 4514 §2.4);
//! - **search-then-bind**: as the service account (or anonymously), search `base` with
//!   `filter`, the username filter-escaped (RFC 4515 §3), for exactly one entry, then bind as
//!   that entry.
//!
//! The directory never gives out password hashes, so a farm on LDAP offers SASL PLAIN over TLS
//! only. An empty password is refused before any bind: an empty simple bind is an anonymous
//! bind and would "succeed" (RFC 4513 §5.1.2). Connections to the directory are TLS (LDAPS or
//! StartTLS) or a local `ldapi://` socket, pooled (`max_connections`), and every connect and
//! operation is bounded by `timeout`: an unreachable or slow directory is
//! [`StoreError::Unavailable`], never a wrong password.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ldap3::{LdapConnAsync, LdapConnSettings, LdapError, ResultEntry, Scope, SearchOptions};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use super::StoreError;
use jabberfarm_config::{LdapAuth, LdapConfig};

pub(crate) const BACKEND: &str = "ldap";

/// RFC 4511 Appendix A.1 result codes that mean "these credentials do not log in".
const INVALID_CREDENTIALS: u32 = 49;
const NO_SUCH_OBJECT: u32 = 32;
const INVALID_DN_SYNTAX: u32 = 34;
const UNWILLING_TO_PERFORM: u32 = 53;
const SIZE_LIMIT_EXCEEDED: u32 = 4;

#[derive(Clone)]
pub struct LdapStore {
    inner: Arc<Inner>,
}

struct Inner {
    url: String,
    settings: LdapConnSettings,
    auth: LdapAuth,
    timeout: Duration,
    /// Idle connections, most recently used last.
    idle: Mutex<Vec<Conn>>,
    /// One permit per connection in use or idle: the pool's bound.
    permits: Semaphore,
}

impl std::fmt::Debug for LdapStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapStore")
            .field("url", &self.inner.url)
            .field("auth", &self.inner.auth)
            .finish()
    }
}

/// A connection and who it is bound as.
struct Conn {
    ldap: ldap3::Ldap,
    /// Bound as the service account (or anonymous in search mode), ready to search.
    service_bound: bool,
}

/// What a pooled connection is used for.
enum Op<'a> {
    /// Bind as the user with this password (after the search in search mode).
    Verify {
        username: &'a str,
        password: &'a str,
    },
    /// Search for exactly one entry, as the service account.
    Exists { base: &'a str, filter: &'a str },
}

/// Why the directory could not answer (network, timeout, protocol, unexpected result).
struct Fail(String);

impl LdapStore {
    /// Prepares TLS and checks that the directory answers (and accepts the service account),
    /// so a wrong URL or password fails at start, with the key to fix.
    pub async fn open(cfg: &LdapConfig) -> Result<Self, StoreError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(cfg.timeout)
            .set_starttls(cfg.starttls);
        if !cfg.url.starts_with("ldapi") {
            let tls = jabberfarm_net::tls::client_config(&cfg.ca)
                .map_err(|e| unavailable(format!("storage.ldap.ca {}: {e}", cfg.ca.display())))?;
            settings = settings.set_config(tls);
        }
        let store = Self {
            inner: Arc::new(Inner {
                url: cfg.url.clone(),
                settings,
                auth: cfg.auth.clone(),
                timeout: cfg.timeout,
                idle: Mutex::new(Vec::new()),
                permits: Semaphore::new(usize::try_from(cfg.max_connections).unwrap_or(1)),
            }),
        };
        let mut conn = store.connect().await.map_err(|Fail(d)| unavailable(d))?;
        if matches!(store.inner.auth, LdapAuth::Search { .. }) {
            store
                .bind_service(&mut conn)
                .await
                .map_err(|Fail(d)| unavailable(d))?;
        }
        store.put_back(conn);
        Ok(store)
    }

    /// Whether `password` is the password of `username` in the directory. `Ok(false)` for an
    /// unknown user, a wrong or empty password; `Err` when the directory cannot say.
    pub(crate) async fn verify(&self, username: &str, password: &str) -> Result<bool, StoreError> {
        if password.is_empty() {
            return Ok(false);
        }
        self.with_conn(&Op::Verify { username, password }).await
    }

    /// Whether the directory has an entry for `username`: search mode looks it up as the
    /// service account (exactly one entry, as for a login); bind mode has nobody to search
    /// as (`None`: cannot tell).
    pub(crate) async fn exists(&self, username: &str) -> Result<Option<bool>, StoreError> {
        let LdapAuth::Search {
            base,
            filter_template,
            ..
        } = &self.inner.auth
        else {
            return Ok(None);
        };
        let filter = filter_template.replace("{user}", &ldap3::ldap_escape(username));
        self.with_conn(&Op::Exists {
            base,
            filter: &filter,
        })
        .await
        .map(Some)
    }

    /// Search-then-bind: users can be looked up without their password.
    pub(crate) fn can_search(&self) -> bool {
        matches!(self.inner.auth, LdapAuth::Search { .. })
    }

    /// Runs `work` on a pooled connection (a new one if none is idle; once more on a new one
    /// if an idle one failed, as the directory may have restarted since), all bounded by
    /// 4 × `timeout`, including the wait for a free connection.
    async fn with_conn(&self, op: &Op<'_>) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let run = async {
            let _permit = inner
                .permits
                .acquire()
                .await
                .map_err(|_| Fail("the pool is closed".to_owned()))?;
            let reused = self.take_idle();
            let fresh = reused.is_none();
            let mut conn = match reused {
                Some(c) => c,
                None => self.connect().await?,
            };
            match self.run(&mut conn, op).await {
                Ok(v) => {
                    self.put_back(conn);
                    Ok(v)
                }
                Err(Fail(e)) if !fresh => {
                    debug!("LDAP: retrying on a new connection after: {e}");
                    let mut conn = self.connect().await?;
                    let v = self.run(&mut conn, op).await?;
                    self.put_back(conn);
                    Ok(v)
                }
                Err(e) => Err(e),
            }
        };
        // Connect, service bind, search and user bind each have `timeout`; this bounds the
        // whole, including the wait for a pooled connection.
        let limit = inner.timeout * 4;
        match tokio::time::timeout(limit, run).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Fail(detail))) => Err(unavailable(detail)),
            Err(_) => Err(unavailable(format!(
                "{}: no answer within {limit:?} (4 × storage.ldap.timeout)",
                inner.url
            ))),
        }
    }

    /// Unbinds and drops the idle connections.
    pub(crate) async fn close(&self) {
        let idle = std::mem::take(&mut *self.lock_idle());
        self.inner.permits.close();
        for mut c in idle {
            let _ = c.ldap.unbind().await;
        }
    }

    async fn run(&self, conn: &mut Conn, op: &Op<'_>) -> Result<bool, Fail> {
        match *op {
            Op::Verify { username, password } => self.attempt(conn, username, password).await,
            Op::Exists { base, filter } => {
                if !conn.service_bound {
                    self.bind_service(conn).await?;
                }
                Ok(self.find_one(conn, base, filter).await?.is_some())
            }
        }
    }

    async fn attempt(&self, conn: &mut Conn, username: &str, password: &str) -> Result<bool, Fail> {
        let dn = match &self.inner.auth {
            LdapAuth::Bind { dn_template } => {
                dn_template.replace("{user}", &ldap3::dn_escape(username))
            }
            LdapAuth::Search {
                base,
                filter_template,
                ..
            } => {
                if !conn.service_bound {
                    self.bind_service(conn).await?;
                }
                let filter = filter_template.replace("{user}", &ldap3::ldap_escape(username));
                match self.find_one(conn, base, &filter).await? {
                    Some(dn) => dn,
                    None => return Ok(false),
                }
            }
        };
        conn.service_bound = false;
        let result = conn
            .ldap
            .with_timeout(self.inner.timeout)
            .simple_bind(&dn, password)
            .await
            .map_err(|e| self.error("binding as the user", &e))?;
        match result.rc {
            0 => Ok(true),
            INVALID_CREDENTIALS | INVALID_DN_SYNTAX | NO_SUCH_OBJECT => Ok(false),
            UNWILLING_TO_PERFORM => {
                // Locked or expired accounts, password policies: a refusal, not an outage.
                debug!(user = username, "LDAP refused the bind: {}", result.text);
                Ok(false)
            }
            rc => Err(Fail(format!(
                "{}: binding as the user gave result {rc} ({})",
                self.inner.url, result.text
            ))),
        }
    }

    /// The DN of the only entry `filter` matches under `base`; `None` for none or several.
    async fn find_one(
        &self,
        conn: &mut Conn,
        base: &str,
        filter: &str,
    ) -> Result<Option<String>, Fail> {
        let result = conn
            .ldap
            .with_search_options(SearchOptions::new().sizelimit(2))
            .with_timeout(self.inner.timeout)
            // "1.1": no attributes, just the DN (RFC 4511 §4.5.1.8).
            .search(base, Scope::Subtree, filter, vec!["1.1"])
            .await
            .map_err(|e| self.error("searching", &e))?;
        let ldap3::SearchResult(entries, outcome) = result;
        let entries: Vec<&ResultEntry> = entries.iter().filter(|e| !e.is_ref()).collect();
        match outcome.rc {
            0 => {}
            SIZE_LIMIT_EXCEEDED => {
                warn!(
                    filter,
                    "LDAP: the login filter matches more than one entry; refused"
                );
                return Ok(None);
            }
            rc => {
                return Err(Fail(format!(
                    "{}: searching {base:?} gave result {rc} ({}); check storage.ldap.base",
                    self.inner.url, outcome.text
                )));
            }
        }
        match entries.as_slice() {
            [] => Ok(None),
            [entry] => entry_dn(entry)
                .map(Some)
                .ok_or_else(|| Fail(format!("{}: a search entry without a DN", self.inner.url))),
            _ => {
                warn!(
                    filter,
                    "LDAP: the login filter matches more than one entry; refused"
                );
                Ok(None)
            }
        }
    }

    /// Binds as the service account, or anonymously when there is none.
    async fn bind_service(&self, conn: &mut Conn) -> Result<(), Fail> {
        let (dn, password) = match &self.inner.auth {
            LdapAuth::Search {
                service: Some((dn, pw)),
                ..
            } => (dn.as_str(), pw.as_str()),
            _ => ("", ""),
        };
        let result = conn
            .ldap
            .with_timeout(self.inner.timeout)
            .simple_bind(dn, password)
            .await
            .map_err(|e| self.error("binding as the service account", &e))?;
        if result.rc != 0 {
            return Err(Fail(format!(
                "{}: the service account {dn:?} was refused (result {}: {}); check \
                 storage.ldap.service_dn and its password",
                self.inner.url, result.rc, result.text
            )));
        }
        conn.service_bound = true;
        Ok(())
    }

    async fn connect(&self) -> Result<Conn, Fail> {
        let (driver, ldap) =
            LdapConnAsync::with_settings(self.inner.settings.clone(), &self.inner.url)
                .await
                .map_err(|e| self.error("connecting", &e))?;
        let url = self.inner.url.clone();
        tokio::spawn(async move {
            if let Err(e) = driver.drive().await {
                debug!("LDAP connection to {url} ended: {e}");
            }
        });
        Ok(Conn {
            ldap,
            // A new connection is anonymous, which is the service identity without an account.
            service_bound: matches!(self.inner.auth, LdapAuth::Search { service: None, .. }),
        })
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.lock_idle();
        while let Some(mut c) = idle.pop() {
            if !c.ldap.is_closed() {
                return Some(c);
            }
        }
        None
    }

    fn put_back(&self, conn: Conn) {
        self.lock_idle().push(conn);
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Conn>> {
        // A panic while holding the lock leaves a valid Vec; keep using it.
        self.inner
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn error(&self, doing: &str, e: &LdapError) -> Fail {
        Fail(format!("{}: {doing}: {e}", self.inner.url))
    }
}

/// The DN of a search entry, read without panicking on a malformed one.
fn entry_dn(entry: &ResultEntry) -> Option<String> {
    let parts = entry.0.clone().match_id(4)?.expect_constructed()?;
    let dn = parts.into_iter().next()?.expect_primitive()?;
    String::from_utf8(dn).ok()
}

fn unavailable(detail: String) -> StoreError {
    StoreError::Unavailable {
        backend: BACKEND,
        detail,
    }
}
