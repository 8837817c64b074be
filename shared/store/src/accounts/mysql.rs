//! The central account store on MySQL/MariaDB (DESIGN.md D6): one database for the whole farm,
//! so any slave can authenticate any user and the user's IM data follows the user.
//!
//! Schema: `shared/store/migrations/mysql/`, applied on open (`storage.mysql.migrate = true`, the
//! default) or only checked (`false`: the database user may not change the schema; the error
//! says what is missing). Accounts are either our own `accounts` table with SCRAM keys, or an
//! existing user table read by `storage.mysql.login_query` with a legacy hash (PLAIN only, see
//! [`super::legacy`]). Every query binds its values as parameters.
//!
//! Bounds: the pool has `max_connections`; an operation waits at most `acquire_timeout` for a
//! connection and runs at most `query_timeout` in all, then the store counts as unavailable
//! (a login gets `temporary-auth-failure`, never a false "wrong password", never a hang).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow};
use sqlx::{Connection, Row};

use super::{
    DerivedKeys, ScramCredentials, ScramHash, StoreError, credentials_from_row, legacy, unix_now,
    user_touched,
};
use jabberfarm_config::{MysqlAccounts, MysqlConfig};

pub(crate) const BACKEND: &str = "mysql";

/// How long a node waits for another one that is applying migrations.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Every table and column the stores use, probed when migrations may not be applied.
const SCHEMA_PROBES: &[(&str, &str)] = &[
    (
        "accounts",
        "username, salt, iterations, sha1_stored, sha1_server, sha256_stored, sha256_server, \
         created_at",
    ),
    ("im_users", "username, roster_version"),
    (
        "roster_items",
        "id, username, jid, name, subscription, ask, approved",
    ),
    ("roster_groups", "item_id, position, name"),
    ("pending_in", "id, username, contact, stanza"),
    ("offline_messages", "id, username, stanza, stamp_ms"),
    ("vcards", "username, xml"),
    ("last_activity", "username, stamp_ms, status"),
    ("known_users", "username, first_login_ms"),
    ("held", "id, holder, node, username, stanza, stamp_ms"),
];

const SELECT_SHA1: &str = "SELECT salt, iterations, sha1_stored AS stored, sha1_server AS server \
                           FROM accounts WHERE username = ?";
const SELECT_SHA256: &str = "SELECT salt, iterations, sha256_stored AS stored, \
                             sha256_server AS server FROM accounts WHERE username = ?";

#[derive(Clone, Debug)]
pub struct MysqlStore {
    pool: MySqlPool,
    /// For connections outside the pool (the migration lock).
    options: Arc<MySqlConnectOptions>,
    accounts: MysqlAccounts,
    /// `host:port/database`, for messages (never the password).
    name: Arc<str>,
    query_timeout: Duration,
    /// For a legacy table: a hash of a random password, checked for unknown users.
    decoy: Option<Arc<str>>,
}

impl MysqlStore {
    /// Connects (one connection now, more on demand), then applies or checks the schema. Fails
    /// with [`StoreError::Unavailable`] naming the server when it cannot.
    pub async fn open(cfg: &MysqlConfig) -> Result<Self, StoreError> {
        let mut options: MySqlConnectOptions = cfg.url.parse().map_err(|e| {
            unavailable(format!(
                "storage.mysql.url {:?}: {e}",
                jabberfarm_config::redact_url_password(&cfg.url)
            ))
        })?;
        if let Some(password) = &cfg.password {
            options = options.password(password);
        }
        options = options.charset("utf8mb4");
        let name: Arc<str> = format!(
            "{}:{}/{}",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or_default()
        )
        .into();
        let options_for_lock = Arc::new(options.clone());
        let pool = MySqlPoolOptions::new()
            .max_connections(cfg.max_connections)
            .min_connections(0)
            .acquire_timeout(cfg.acquire_timeout)
            .idle_timeout(Duration::from_secs(300))
            // Without gap locks, writers of different users never wait for each other;
            // a user's own writes are serialised by their `im_users` row (0002_im.sql).
            .after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                        .execute(conn)
                        .await
                        .map(|_| ())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| unavailable(format!("cannot connect to {name}: {e}")))?;
        let decoy = match &cfg.accounts {
            MysqlAccounts::Scram => None,
            MysqlAccounts::Legacy { format, .. } => {
                let format = *format;
                Some(
                    tokio::task::spawn_blocking(move || legacy::decoy(format))
                        .await
                        .map_err(|e| unavailable(format!("decoy hash task failed: {e}")))?
                        .into(),
                )
            }
        };
        let store = Self {
            pool,
            options: options_for_lock,
            accounts: cfg.accounts.clone(),
            name,
            query_timeout: cfg.query_timeout,
            decoy,
        };
        let ready = if cfg.migrate {
            store.migrate().await
        } else {
            store.check_schema().await
        };
        if let Err(e) = ready.and(store.check_login_query().await) {
            store.pool.close().await;
            return Err(e);
        }
        Ok(store)
    }

    /// The connection pool, for the IM tables in the same database.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// `host:port/database`, for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The longest one store operation may take (`storage.mysql.query_timeout`).
    pub fn query_timeout(&self) -> Duration {
        self.query_timeout
    }

    /// Whether accounts are in an existing table with a legacy hash (PLAIN only).
    pub(crate) fn is_legacy(&self) -> bool {
        matches!(self.accounts, MysqlAccounts::Legacy { .. })
    }

    /// Applies pending migrations, one node at a time: slaves starting together share the
    /// database. The lock is our own: sqlx's `GET_LOCK(name, -1)` means "wait forever" on MySQL
    /// but "do not wait" on MariaDB, and its result is not checked.
    async fn migrate(&self) -> Result<(), StoreError> {
        let doing = "applying the schema migrations (storage.mysql.migrate)";
        let work = async {
            // The lock lives on a connection of its own, outside the pool, which may be
            // configured with a single connection that the migrations need.
            let mut lock_conn = sqlx::MySqlConnection::connect_with(&self.options)
                .await
                .map_err(|e| e.to_string())?;
            let lock = format!("jabberfarm-migrate:{}", self.name);
            let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
                .bind(&lock)
                .bind(MIGRATION_LOCK_WAIT.as_secs())
                .fetch_one(&mut lock_conn)
                .await
                .map_err(|e| e.to_string())?;
            if locked != Some(1) {
                return Err(format!(
                    "another node held the migration lock for {MIGRATION_LOCK_WAIT:?}"
                ));
            }
            let mut migrator = sqlx::migrate!("./migrations/mysql");
            migrator.set_locking(false);
            let ran = migrator.run(&self.pool).await.map_err(|e| e.to_string());
            // Closing the connection releases the lock too.
            let _ = lock_conn.close().await;
            ran
        };
        match tokio::time::timeout(MIGRATION_LOCK_WAIT * 2, work).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(format!("{doing} in {}: {e}", self.name))),
            Err(_) => Err(unavailable(format!(
                "{doing} in {}: not done within {:?}",
                self.name,
                MIGRATION_LOCK_WAIT * 2
            ))),
        }
    }

    /// With `migrate = false`: every table and column must be there already.
    async fn check_schema(&self) -> Result<(), StoreError> {
        for (table, columns) in SCHEMA_PROBES {
            let probe = format!("SELECT {columns} FROM {table} LIMIT 0");
            let checked = self
                .timed("checking the schema", async {
                    // Built from the constant table above only.
                    sqlx::query(sqlx::AssertSqlSafe(probe.as_str()))
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| e.to_string())
                })
                .await;
            if let Err(StoreError::Unavailable { detail, .. }) = checked {
                return Err(unavailable(format!(
                    "the schema of {} is not what jabberfarm needs (table {table} with \
                     columns {columns}): {detail}. storage.mysql.migrate = false, so it is not \
                     changed here: apply shared/store/migrations/mysql/*.sql, or start once with \
                     migrate = true as a database user allowed to create tables",
                    self.name
                )));
            }
        }
        Ok(())
    }

    /// Runs `login_query` once with a name no account has, so a broken query fails at start.
    async fn check_login_query(&self) -> Result<(), StoreError> {
        let MysqlAccounts::Legacy { login_query, .. } = &self.accounts else {
            return Ok(());
        };
        self.timed("checking storage.mysql.login_query", async {
            sqlx::query(operator_sql(login_query))
                .bind("")
                .fetch_all(&self.pool)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
    }

    pub(crate) async fn credentials(
        &self,
        username: &str,
        hash: ScramHash,
    ) -> Result<Option<ScramCredentials>, StoreError> {
        if self.is_legacy() {
            // No SCRAM keys in a legacy table: the farm offers PLAIN only.
            return Ok(None);
        }
        let sql = match hash {
            ScramHash::Sha1 => SELECT_SHA1,
            ScramHash::Sha256 => SELECT_SHA256,
        };
        // fetch_all: found or not, the answer waits for the statement's end (see sqlite.rs).
        let row = self
            .timed("reading credentials", async {
                sqlx::query(sql)
                    .bind(username)
                    .fetch_all(&self.pool)
                    .await
                    .map(|rows| rows.into_iter().next())
                    .map_err(|e| e.to_string())
            })
            .await?;
        row.map(|row| {
            credentials_from_row(&row, hash).map_err(|detail| {
                unavailable(format!(
                    "corrupt account {username:?} in {}: {detail}",
                    self.name
                ))
            })
        })
        .transpose()
    }

    /// Whether `login_query` finds `username` in the legacy table (a row, whatever its hash).
    pub(crate) async fn legacy_user_exists(&self, username: &str) -> Result<bool, StoreError> {
        Ok(!self
            .legacy_rows(username, "looking up a user")
            .await?
            .is_empty())
    }

    /// The rows `login_query` gives for `username`.
    async fn legacy_rows(&self, username: &str, doing: &str) -> Result<Vec<MySqlRow>, StoreError> {
        let MysqlAccounts::Legacy { login_query, .. } = &self.accounts else {
            return Err(unavailable("not a legacy user table".to_owned()));
        };
        self.timed(&format!("{doing} (storage.mysql.login_query)"), async {
            sqlx::query(operator_sql(login_query))
                .bind(username)
                .fetch_all(&self.pool)
                .await
                .map_err(|e| e.to_string())
        })
        .await
    }

    /// PLAIN against a legacy table: `login_query` with the username bound, then the hash
    /// checked on the blocking pool. An unknown user costs the same (a decoy hash).
    pub(crate) async fn verify_legacy(
        &self,
        username: &str,
        password: &str,
    ) -> Result<bool, StoreError> {
        let MysqlAccounts::Legacy { format, .. } = &self.accounts else {
            return Err(unavailable("not a legacy user table".to_owned()));
        };
        let rows = self
            .legacy_rows(username, "reading a password hash")
            .await?;
        let (stored, known) = match rows.as_slice() {
            [] => (self.decoy.as_deref().unwrap_or_default().to_owned(), false),
            [row] => (stored_hash(row).map_err(|detail| {
                unavailable(format!(
                    "storage.mysql.login_query gave an unusable value for {username:?}: {detail}"
                ))
            })?, true),
            more => {
                return Err(unavailable(format!(
                    "storage.mysql.login_query returned {} rows for {username:?}; it must \
                     return at most one",
                    more.len()
                )));
            }
        };
        let (format, password) = (*format, password.to_owned());
        let checked =
            tokio::task::spawn_blocking(move || legacy::verify(format, &stored, &password))
                .await
                .map_err(|e| unavailable(format!("password check task failed: {e}")))?;
        match checked {
            Ok(ok) => Ok(ok && known),
            Err(_) if !known => Ok(false),
            Err(detail) => Err(unavailable(format!(
                "the stored hash of {username:?} is not {} (storage.mysql.password_format): \
                 {detail}",
                format.name()
            ))),
        }
    }

    pub(crate) async fn add_user(
        &self,
        username: &str,
        keys: &DerivedKeys,
    ) -> Result<(), StoreError> {
        let inserted = self
            .timed_db("adding a user", async {
                keys.bind(sqlx::query(
                    "INSERT INTO accounts (salt, iterations, sha1_stored, sha1_server, \
                     sha256_stored, sha256_server, username, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ))
                .bind(username)
                .bind(unix_now())
                .execute(&self.pool)
                .await
            })
            .await?;
        match inserted {
            Ok(_) => Ok(()),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(StoreError::Exists(username.to_owned()))
            }
            Err(e) => Err(self.db_error("adding a user", e)),
        }
    }

    pub(crate) async fn set_keys(
        &self,
        username: &str,
        keys: &DerivedKeys,
    ) -> Result<(), StoreError> {
        let done = self
            .timed("changing a password", async {
                keys.bind(sqlx::query(
                    "UPDATE accounts SET salt = ?, iterations = ?, sha1_stored = ?, \
                     sha1_server = ?, sha256_stored = ?, sha256_server = ? WHERE username = ?",
                ))
                .bind(username)
                .execute(&self.pool)
                .await
                .map_err(|e| e.to_string())
            })
            .await?;
        if done.rows_affected() == 0 && !self.user_exists(username).await? {
            // MySQL counts changed rows only; the same keys again would count 0.
            return Err(StoreError::NoSuchUser(username.to_owned()));
        }
        Ok(())
    }

    async fn user_exists(&self, username: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = self
            .timed("looking up a user", async {
                sqlx::query_scalar("SELECT 1 FROM accounts WHERE username = ?")
                    .bind(username)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
        Ok(found.is_some())
    }

    pub(crate) async fn delete_user(&self, username: &str) -> Result<(), StoreError> {
        let done = self
            .timed("deleting a user", async {
                sqlx::query("DELETE FROM accounts WHERE username = ?")
                    .bind(username)
                    .execute(&self.pool)
                    .await
                    .map_err(|e| e.to_string())
            })
            .await?;
        user_touched(done.rows_affected(), username)
    }

    pub(crate) async fn list_users(&self) -> Result<Vec<String>, StoreError> {
        // VARBINARY sorts by bytes: the byte order of the UTF-8, as Rust's `str`.
        self.timed("listing users", async {
            sqlx::query_scalar(
                "SELECT CONVERT(username USING utf8mb4) AS username FROM accounts \
                 ORDER BY username",
            )
            .fetch_all(&self.pool)
            .await
            .map_err(|e| e.to_string())
        })
        .await
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }

    /// Runs `op` within `query_timeout`; its error text or the timeout becomes
    /// [`StoreError::Unavailable`] naming `doing` and the server.
    async fn timed<T>(
        &self,
        doing: &str,
        op: impl Future<Output = Result<T, String>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.query_timeout, op).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(format!("{doing} in {}: {e}", self.name))),
            Err(_) => Err(self.timeout_error(doing)),
        }
    }

    /// Like [`Self::timed`], but hands the database error to the caller.
    async fn timed_db<T>(
        &self,
        doing: &str,
        op: impl Future<Output = Result<T, sqlx::Error>>,
    ) -> Result<Result<T, sqlx::Error>, StoreError> {
        tokio::time::timeout(self.query_timeout, op)
            .await
            .map_err(|_| self.timeout_error(doing))
    }

    fn timeout_error(&self, doing: &str) -> StoreError {
        unavailable(format!(
            "{doing} in {}: no answer within {:?} (storage.mysql.query_timeout)",
            self.name, self.query_timeout
        ))
    }

    fn db_error(&self, doing: &str, e: sqlx::Error) -> StoreError {
        unavailable(format!("{doing} in {}: {e}", self.name))
    }
}

fn unavailable(detail: String) -> StoreError {
    StoreError::Unavailable {
        backend: BACKEND,
        detail,
    }
}

/// `storage.mysql.login_query`: SQL the operator wrote into the config (a file only they can
/// change), never built from client input; the username is always bound as its parameter.
fn operator_sql(query: &str) -> sqlx::AssertSqlSafe<&str> {
    sqlx::AssertSqlSafe(query)
}

/// The first column of a `login_query` row: text, or bytes that are UTF-8.
fn stored_hash(row: &MySqlRow) -> Result<String, String> {
    if let Ok(Some(text)) = row.try_get::<Option<String>, _>(0) {
        return Ok(text);
    }
    match row.try_get::<Option<Vec<u8>>, _>(0) {
        Ok(Some(bytes)) => String::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned()),
        Ok(None) => Err("NULL".to_owned()),
        Err(e) => Err(e.to_string()),
    }
}
