//! SASL (RFC 6120 §6): PLAIN and SCRAM-SHA-1/-256 through [`jabberfarm_proto::sasl`], the
//! password check against the node's [`Accounts`], with the login guard's waits.

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    Accounts, BackendError, C2sSettings, LoginPolicy, LoginRoute, Step, read, redirect,
    sasl_failure, unavailable,
};
use crate::login_guard::TooSoon;
use crate::stream::XmlStream;
use jabberfarm_proto::ns;
use jabberfarm_proto::routing::normalize_localpart;
use jabberfarm_proto::sasl::{self, Mechanism, SaslError, ScramServer};
use jabberfarm_proto::scram::ScramHash;
use jabberfarm_proto::xml::{Condition, Element, StreamError, StreamEvent};

/// RFC 6120 §6.4: one SASL exchange.
pub(super) async fn sasl_auth(
    stream: &mut XmlStream,
    auth: &Element,
    s: &C2sSettings,
    policy: &dyn LoginPolicy,
    deadline: Instant,
    direct_tls: bool,
) -> Step {
    if s.tls_required && !stream.secure {
        return sasl_failure(stream, "encryption-required", Some("use STARTTLS first")).await;
    }
    let Some(mech) = auth
        .attr("mechanism")
        .and_then(Mechanism::from_name)
        .filter(|m| !s.plain_only || m.scram_hash().is_none())
    else {
        return sasl_failure(stream, "invalid-mechanism", None).await;
    };
    if s.plain_only && !stream.secure {
        return sasl_failure(stream, "encryption-required", Some("use STARTTLS first")).await;
    }
    let text = auth.text();
    let initial = if text.trim().is_empty() {
        // No initial response: ask for it with an empty challenge (RFC 6120 §6.4.2).
        if stream
            .send(&Element::new("challenge", ns::SASL))
            .await
            .is_err()
        {
            return Step::Closed;
        }
        match sasl_response(stream, s, deadline).await {
            Some(Ok(r)) => r,
            Some(Err(e)) => return sasl_failure(stream, e.condition(), None).await,
            None => return Step::Closed,
        }
    } else {
        match sasl::decode_payload(&text) {
            Ok(d) => d,
            Err(e) => return sasl_failure(stream, e.condition(), None).await,
        }
    };
    let username = match sasl::username_of(mech, &initial) {
        Ok(u) => u,
        Err(e) => return sasl_failure(stream, e.condition(), None).await,
    };
    let Ok(user) = normalize_localpart(&username) else {
        return sasl_failure(stream, "not-authorized", None).await;
    };
    match policy.route(&user, direct_tls) {
        LoginRoute::Redirect(addr) => return redirect(stream, s, &user, &addr).await,
        LoginRoute::Unavailable(text) => return unavailable(stream, s, &user, text).await,
        LoginRoute::Relay { node, reason } => {
            // The other node starts from this message, initial response included (asked for
            // with an empty challenge above if the client sent none).
            let first = Element::new("auth", ns::SASL)
                .with_attr("mechanism", mech.name())
                .with_text(sasl::encode_payload(&initial));
            return Step::Relay(node, user, reason, first);
        }
        LoginRoute::Here => {}
    }
    let Some(store) = policy.accounts() else {
        return sasl_failure(stream, "temporary-auth-failure", None).await;
    };
    let ip = stream.peer.map(|p| p.ip());
    if let Some(too_soon) = s.guard.check(ip, &user, Instant::now()) {
        debug!(user, peer = ?stream.peer, "login refused: {}", wait_text(&too_soon));
        return sasl_failure(
            stream,
            "temporary-auth-failure",
            Some(&wait_text(&too_soon)),
        )
        .await;
    }
    let result = match mech.scram_hash() {
        None => plain(store, &initial, &user, s).await,
        Some(hash) => scram(stream, store, hash, &initial, &user, s, deadline).await,
    };
    match &result {
        Ok(Some(_)) => s.guard.succeeded(&user),
        Err(AuthFail::Sasl(SaslError::NotAuthorized)) => {
            s.guard.failed(ip, &user, Instant::now());
            s.counters.auth_failed.inc();
        }
        _ => {}
    }
    match result {
        Ok(Some(additional)) => {
            let payload = if additional.is_empty() {
                String::new()
            } else {
                sasl::encode_payload(&additional)
            };
            let ok = Element::new("success", ns::SASL).with_text(payload);
            if stream.send(&ok).await.is_err() {
                return Step::Closed;
            }
            info!(user, mechanism = mech.name(), peer = ?stream.peer, relayed = stream.relayed, "authenticated");
            Step::Restart(user)
        }
        Ok(None) => Step::Closed,
        Err(AuthFail::Sasl(e)) => {
            debug!(user, "authentication failed: {e}");
            sasl_failure(stream, e.condition(), None).await
        }
        Err(AuthFail::Backend(e)) => {
            warn!(user, "account store failure: {e}");
            sasl_failure(
                stream,
                "temporary-auth-failure",
                Some("the account store is unavailable; try again later"),
            )
            .await
        }
        Err(AuthFail::Aborted) => sasl_failure(stream, "aborted", None).await,
    }
}

/// What a client told to wait reads (`auth_limits`).
pub(super) fn wait_text(t: &TooSoon) -> String {
    format!(
        "too many failed logins for {}; try again in {} s",
        t.what,
        t.wait.as_secs_f64().ceil().max(1.0)
    )
}

pub(super) enum AuthFail {
    Sasl(SaslError),
    Backend(BackendError),
    Aborted,
}

impl From<SaslError> for AuthFail {
    fn from(e: SaslError) -> Self {
        AuthFail::Sasl(e)
    }
}

/// Check a password against stored SCRAM keys, off the reactor (PBKDF2 is CPU work).
pub(super) async fn check_password(
    store: &dyn Accounts,
    user: &str,
    password: String,
    s: &C2sSettings,
) -> Result<bool, AuthFail> {
    let Ok(Ok(_permit)) = tokio::time::timeout(s.login_timeout, s.password_checks.acquire()).await
    else {
        return Err(AuthFail::Backend(
            format!(
                "password check account backend unavailable: no free slot within {:?}: too many \
                 password checks at once",
                s.login_timeout
            )
            .into(),
        ));
    };
    if store.plain_only() {
        // The backend checks the password itself (a directory bind, a legacy hash) and makes
        // an unknown user cost what a wrong password costs.
        return store
            .verify_password(user, &password)
            .await
            .map_err(AuthFail::Backend);
    }
    let creds = store
        .credentials(user, ScramHash::Sha256)
        .await
        .map_err(AuthFail::Backend)?;
    // Same work for an unknown user as for a wrong password: a PBKDF2 on keys that no
    // password matches.
    let (known, creds) = match creds {
        Some(c) => (true, c),
        None => (
            false,
            sasl::fake_credentials(ScramHash::Sha256, user, s.scram_iterations, &s.fake_key),
        ),
    };
    let ok = tokio::task::spawn_blocking(move || creds.verify_plain(&password))
        .await
        .unwrap_or(false);
    Ok(ok && known)
}

/// PLAIN (RFC 4616). `Ok(Some(empty))` on success.
async fn plain(
    store: &dyn Accounts,
    initial: &[u8],
    user: &str,
    s: &C2sSettings,
) -> Result<Option<Vec<u8>>, AuthFail> {
    let msg = sasl::parse_plain(initial)?;
    if !msg.authzid.is_empty()
        && msg.authzid != user
        && msg.authzid != format!("{user}@{}", s.domain)
    {
        return Err(SaslError::InvalidAuthzid.into());
    }
    if check_password(store, user, msg.password, s).await? {
        Ok(Some(Vec::new()))
    } else {
        Err(SaslError::NotAuthorized.into())
    }
}

/// SCRAM (RFC 5802): challenge with server-first, check client-final.
async fn scram(
    stream: &mut XmlStream,
    store: &dyn Accounts,
    hash: ScramHash,
    initial: &[u8],
    user: &str,
    s: &C2sSettings,
    deadline: Instant,
) -> Result<Option<Vec<u8>>, AuthFail> {
    let first = sasl::parse_scram_first(initial)?;
    let creds = store
        .credentials(user, hash)
        .await
        .map_err(AuthFail::Backend)?;
    // An unknown user gets keys from a keyed hash of the name (no PBKDF2, as for a real one).
    let (server, msg) = ScramServer::start(&first, creds, || {
        sasl::fake_credentials(hash, user, s.scram_iterations, &s.fake_key)
    });
    scram_finish(stream, server, msg, s, deadline).await
}

async fn scram_finish(
    stream: &mut XmlStream,
    server: ScramServer,
    server_first: Vec<u8>,
    s: &C2sSettings,
    deadline: Instant,
) -> Result<Option<Vec<u8>>, AuthFail> {
    let challenge =
        Element::new("challenge", ns::SASL).with_text(sasl::encode_payload(&server_first));
    if stream.send(&challenge).await.is_err() {
        return Ok(None);
    }
    match sasl_response(stream, s, deadline).await {
        None => Ok(None),
        Some(Err(e)) => Err(e.into()),
        Some(Ok(data)) if data.is_empty() => Err(AuthFail::Aborted),
        Some(Ok(data)) => Ok(Some(server.finish(&data)?)),
    }
}

/// Wait for `<response/>` (or `<abort/>`, reported as an empty response).
async fn sasl_response(
    stream: &mut XmlStream,
    s: &C2sSettings,
    deadline: Instant,
) -> Option<Result<Vec<u8>, SaslError>> {
    match read(stream, s, deadline, None).await? {
        StreamEvent::Element(el) if el.is("response", ns::SASL) => {
            Some(sasl::decode_payload(&el.text()))
        }
        StreamEvent::Element(el) if el.is("abort", ns::SASL) => Some(Ok(Vec::new())),
        _ => {
            stream
                .fail(
                    &StreamError::new(Condition::NotAuthorized, "expected a SASL response"),
                    &s.domain,
                )
                .await;
            None
        }
    }
}
