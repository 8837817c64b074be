//! Client stream negotiation up to authentication, the part master and slave share
//! (RFC 6120 §4–§6, XEP-0078): stream header, STARTTLS, SASL or legacy iq:auth.
//!
//! The moment the username is known, the [`LoginPolicy`] says whether this node serves it,
//! where the client must go instead (DESIGN.md D1), or which node the stream is relayed to
//! (D1b). The master redirects or relays; a slave redirects what it does not own and
//! authenticates the rest against its account store — also when the master relays the client
//! ([`negotiate_relayed`] picks the stream up at the first SASL message).

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::login_guard::{LoginGuard, TooSoon};
use crate::relay::RelayReason;
use crate::stream::{ReadError, XmlStream, check_header, new_id};
use jabberfarm_proto::ns;
use jabberfarm_proto::routing::normalize_localpart;
use jabberfarm_proto::sasl::{self, Mechanism, SaslError, ScramServer};
use jabberfarm_proto::scram::{ScramCredentials, ScramHash};
use jabberfarm_proto::stanza::{ErrorCondition, ErrorType, IqType, StanzaError, iq_result};
use jabberfarm_proto::xml::{Condition, Element, ParserLimits, StreamError, StreamEvent};

/// What a listener needs to negotiate a client stream.
pub struct C2sSettings {
    pub domain: String,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// No SASL, no iq:auth, no redirect before TLS (RFC 6120 §4.9.3.19 for redirects).
    pub tls_required: bool,
    pub pre_auth: ParserLimits,
    pub post_auth: ParserLimits,
    pub stream_open_timeout: Duration,
    /// From connect to finished authentication.
    pub login_timeout: Duration,
    /// For fake keys of unknown users (same cost as real ones).
    pub scram_iterations: u32,
    /// Per-process key salting the fake keys of unknown users.
    pub fake_key: [u8; 32],
    /// Failed authentication attempts before the stream is closed.
    pub max_auth_failures: u32,
    /// One permit per password check running (PBKDF2, a legacy hash, a directory bind): at
    /// most two per core at once, so a flood of PLAIN attempts queues here instead of filling
    /// the blocking pool. A check that waits longer than `login_timeout` fails as a
    /// temporary failure.
    pub password_checks: Arc<tokio::sync::Semaphore>,
    /// The brute-force limiter (`[auth_limits]`), one per node.
    pub guard: Arc<LoginGuard>,
    /// The account backend keeps no SCRAM keys (LDAP, a legacy password table): offer only
    /// PLAIN (and iq:auth), and only over TLS, so the password never crosses the wire in clear
    /// (`docs/backends.md`).
    pub plain_only: bool,
    /// Cancelled when the node stops: streams still negotiating get `<system-shutdown/>`.
    pub shutdown: CancellationToken,
}

/// Where a login goes, decided from the username alone.
pub enum LoginRoute {
    /// This node serves the user.
    Here,
    /// `HOST:PORT` of the node that does.
    Redirect(String),
    /// The node that serves the user is down; the text says so.
    Unavailable(String),
    /// Keep the client and relay its stream to `node` from the first SASL message on.
    Relay { node: String, reason: RelayReason },
}

/// How a negotiation that did not simply end came out.
pub enum Negotiated {
    /// The client proved who it is here.
    Authenticated(Authenticated),
    /// The client stays connected here and its stream goes on at another node.
    Relay(RelayLogin),
}

/// A login to relay: the stream as far as this node read it.
pub struct RelayLogin {
    pub stream: XmlStream,
    pub node: String,
    /// Normalised localpart.
    pub user: String,
    pub reason: RelayReason,
    /// The element the other node starts from (the SASL `<auth/>` with its initial
    /// response, or the iq:auth iq).
    pub first: Element,
    /// The client came in on the direct-TLS port.
    pub direct_tls: bool,
}

pub trait LoginPolicy: Send + Sync {
    /// `direct_tls`: the client came in on the direct-TLS port (it gets the owner's direct-TLS
    /// address, so it reconnects the way it connected).
    fn route(&self, localpart: &str, direct_tls: bool) -> LoginRoute;
    /// The accounts; `None` on a node that authenticates nobody (the master).
    fn accounts(&self) -> Option<&dyn Accounts>;
    /// The `<stream:features/>` a client gets on the stream it restarts after authenticating
    /// here: what the node serving sessions offers (resource binding and the rest).
    fn session_features(&self) -> Element {
        Element::new("features", ns::STREAM)
    }
}

/// Why the accounts could not answer (the backend itself failed, not the password): a login
/// answers `temporary-auth-failure`.
pub type BackendError = Box<dyn std::error::Error + Send + Sync>;

/// A future the [`Accounts`] hand back.
pub type AccountsFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, BackendError>> + Send + 'a>>;

/// What the negotiation asks of the node's account store (`jabberfarm_store` implements it).
/// A wrong password or an unknown user is never an error: `None` or `false`.
pub trait Accounts: Send + Sync {
    /// The backend checks passwords itself (a directory bind, a legacy hash): no SCRAM keys to
    /// hand out, only PLAIN.
    fn plain_only(&self) -> bool;
    /// The SCRAM keys of `user` for `hash`; `None` for an unknown user.
    fn credentials<'a>(
        &'a self,
        user: &'a str,
        hash: ScramHash,
    ) -> AccountsFuture<'a, Option<ScramCredentials>>;
    /// Whether `password` is `user`'s, for backends that only check (`plain_only`).
    fn verify_password<'a>(&'a self, user: &'a str, password: &'a str) -> AccountsFuture<'a, bool>;
}

/// A client that proved who it is.
pub struct Authenticated {
    pub stream: XmlStream,
    /// Normalised localpart.
    pub username: String,
    /// Set for legacy iq:auth logins: the requested resource and the id of the `set` to answer
    /// once the resource is bound.
    pub legacy: Option<LegacyLogin>,
}

pub struct LegacyLogin {
    pub resource: String,
    pub iq: Element,
}

enum Step {
    /// An attempt failed; keep reading elements on this stream.
    Continue,
    /// A question was answered (iq:auth get); keep reading.
    Asked,
    /// The stream was closed (redirected, failed, peer left).
    Closed,
    /// SASL succeeded: restart the stream as this user.
    Restart(String),
    /// Legacy iq:auth succeeded: no restart.
    Legacy(String, LegacyLogin),
    /// Relay this login: (node, user, reason, first element).
    Relay(String, String, RelayReason, Element),
}

/// Negotiate until the client is authenticated or relayed (`Some`) or the stream is over
/// (`None`).
pub async fn negotiate(
    stream: XmlStream,
    s: &C2sSettings,
    policy: &dyn LoginPolicy,
) -> Option<Negotiated> {
    let direct_tls = stream.secure;
    negotiate_from(stream, s, policy, None, direct_tls).await
}

/// Negotiate a stream the master relays (DESIGN.md D1b): its header exchange, STARTTLS and
/// features happened at the master; `first` is the element the master read last (the first
/// SASL message, or the iq:auth iq), and the negotiation goes on from there.
pub async fn negotiate_relayed(
    stream: XmlStream,
    s: &C2sSettings,
    policy: &dyn LoginPolicy,
    first: Element,
    direct_tls: bool,
) -> Option<Authenticated> {
    match negotiate_from(stream, s, policy, Some(first), direct_tls).await? {
        Negotiated::Authenticated(a) => Some(a),
        Negotiated::Relay(mut r) => {
            // A node that is relayed to never relays further.
            warn!(
                user = r.user,
                "a relayed login would be relayed again; refused"
            );
            r.stream
                .fail(
                    &StreamError::bare(Condition::InternalServerError),
                    &s.domain,
                )
                .await;
            None
        }
    }
}

async fn negotiate_from(
    mut stream: XmlStream,
    s: &C2sSettings,
    policy: &dyn LoginPolicy,
    mut first: Option<Element>,
    direct_tls: bool,
) -> Option<Negotiated> {
    let deadline = Instant::now() + s.login_timeout;
    let mut user: Option<String> = None;
    let mut failures = 0u32;
    let mut resumed = first.is_some();
    loop {
        if !resumed {
            match open(&mut stream, s, policy, deadline, direct_tls, &mut user).await? {
                Opened::Features => {}
                Opened::Authenticated(username) => {
                    return Some(Negotiated::Authenticated(Authenticated {
                        stream,
                        username,
                        legacy: None,
                    }));
                }
            }
        }
        resumed = false;
        loop {
            let el = match first.take() {
                Some(el) => el,
                None => match read(&mut stream, s, deadline, None).await? {
                    StreamEvent::Element(el) => el,
                    StreamEvent::Close => {
                        stream.close().await;
                        return None;
                    }
                    StreamEvent::Open(_) => {
                        stream
                            .fail(&StreamError::bare(Condition::NotWellFormed), &s.domain)
                            .await;
                        return None;
                    }
                },
            };
            let step = if el.is("starttls", ns::TLS) {
                match (&s.tls, stream.secure) {
                    (Some(cfg), false) => {
                        let proceed = Element::new("proceed", ns::TLS);
                        stream.send(&proceed).await.ok()?;
                        let left = deadline.saturating_duration_since(Instant::now());
                        match stream.upgrade_tls(cfg.clone(), s.pre_auth, left).await {
                            Ok(st) => stream = st,
                            Err(e) => {
                                debug!("STARTTLS failed: {e}");
                                return None;
                            }
                        }
                        break;
                    }
                    _ => {
                        // RFC 6120 §5.4.2.2: failure, then close.
                        let _ = stream.send(&Element::new("failure", ns::TLS)).await;
                        stream.close().await;
                        return None;
                    }
                }
            } else if el.is("auth", ns::SASL) {
                sasl_auth(&mut stream, &el, s, policy, deadline, direct_tls).await
            } else if el.is("iq", ns::CLIENT)
                && el.first_child().is_some_and(|q| q.is("query", ns::IQ_AUTH))
            {
                legacy_auth(&mut stream, &el, s, policy, direct_tls).await
            } else {
                // RFC 6120 §4.9.3.12: no stanzas before authentication.
                stream
                    .fail(
                        &StreamError::new(Condition::NotAuthorized, "authenticate first"),
                        &s.domain,
                    )
                    .await;
                return None;
            };
            match step {
                Step::Continue => {
                    failures += 1;
                    if failures >= s.max_auth_failures {
                        stream
                            .fail(
                                &StreamError::new(
                                    Condition::PolicyViolation,
                                    "too many failed authentication attempts",
                                ),
                                &s.domain,
                            )
                            .await;
                        return None;
                    }
                }
                Step::Asked => {}
                Step::Closed => return None,
                Step::Restart(u) => {
                    stream.restart(s.post_auth);
                    user = Some(u);
                    break;
                }
                Step::Legacy(username, legacy) => {
                    stream.set_limits(s.post_auth);
                    return Some(Negotiated::Authenticated(Authenticated {
                        stream,
                        username,
                        legacy: Some(legacy),
                    }));
                }
                Step::Relay(node, user, reason, first) => {
                    return Some(Negotiated::Relay(RelayLogin {
                        stream,
                        node,
                        user,
                        reason,
                        first,
                        direct_tls,
                    }));
                }
            }
        }
    }
}

enum Opened {
    /// Our header and the pre-authentication features are out: read what the client does.
    Features,
    /// The stream restarted after SASL: the client is this user.
    Authenticated(String),
}

/// A (re)started stream: the peer's header, ours, and what follows it.
async fn open(
    stream: &mut XmlStream,
    s: &C2sSettings,
    policy: &dyn LoginPolicy,
    deadline: Instant,
    direct_tls: bool,
    user: &mut Option<String>,
) -> Option<Opened> {
    // (Re)start: the peer's stream header first (RFC 6120 §4.2, §4.3.3).
    let h = match read(stream, s, deadline, Some(s.stream_open_timeout)).await? {
        StreamEvent::Open(h) => h,
        _ => {
            stream
                .fail(&StreamError::bare(Condition::NotWellFormed), &s.domain)
                .await;
            return None;
        }
    };
    if let Err(e) = check_header(&h, &s.domain) {
        stream.fail(&e, &s.domain).await;
        return None;
    }
    let has_version = h.version.is_some();
    let to = h.from.as_deref().filter(|f| f.len() <= 3071);
    if stream
        .send_header(&s.domain, to, &new_id(), has_version)
        .await
        .is_err()
    {
        return None;
    }
    if let Some(username) = user.take() {
        if has_version {
            stream.send(&policy.session_features()).await.ok()?;
        }
        return Some(Opened::Authenticated(username));
    }
    // RFC 6120 §4.7.1: after TLS a client names itself in `from`. The username decides
    // (DESIGN.md D1), so redirect right away. COMPAT: xmpp.js 0.14 keeps its first SASL
    // exchange listening after a redirect that arrives mid-SASL and then garbles the login
    // at the slave; redirected here, before SASL, it reconnects cleanly. A login to relay
    // goes on to its first SASL message, where the relay starts.
    if (stream.secure || !s.tls_required)
        && let Some(user) = h.from.as_deref().and_then(|f| localpart_in(f, &s.domain))
    {
        match policy.route(&user, direct_tls) {
            LoginRoute::Redirect(addr) => {
                redirect(stream, s, &user, &addr).await;
                return None;
            }
            LoginRoute::Unavailable(text) => {
                unavailable(stream, s, &user, text).await;
                return None;
            }
            LoginRoute::Here | LoginRoute::Relay { .. } => {}
        }
    }
    if has_version {
        stream.send(&pre_auth_features(stream, s)).await.ok()?;
    }
    Some(Opened::Features)
}

/// The normalised localpart of `jid` if it is `user@domain` (any resource ignored).
fn localpart_in(jid: &str, domain: &str) -> Option<String> {
    let (local, rest) = jid.split_once('@')?;
    let host = rest.split('/').next().unwrap_or(rest);
    if !host.eq_ignore_ascii_case(domain) {
        return None;
    }
    normalize_localpart(local).ok()
}

fn pre_auth_features(stream: &XmlStream, s: &C2sSettings) -> Element {
    let mut f = Element::new("features", ns::STREAM);
    // A PLAIN-only backend offers nothing to log in with before TLS.
    let tls_first = s.tls_required || s.plain_only;
    if s.tls.is_some() && !stream.secure {
        let mut st = Element::new("starttls", ns::TLS);
        if tls_first {
            st = st.with_child(Element::new("required", ns::TLS));
        }
        f = f.with_child(st);
    }
    if stream.secure || !tls_first {
        let mut mechs = Element::new("mechanisms", ns::SASL);
        for m in Mechanism::ALL
            .iter()
            .filter(|m| !s.plain_only || m.scram_hash().is_none())
        {
            mechs = mechs.with_child(Element::new("mechanism", ns::SASL).with_text(m.name()));
        }
        f = f
            .with_child(mechs)
            .with_child(Element::new("auth", ns::IQ_AUTH_FEATURE));
    }
    f
}

/// Read one event before `deadline` (and within `first` if given); on any failure the stream
/// is answered as appropriate and `None` returned.
async fn read(
    stream: &mut XmlStream,
    s: &C2sSettings,
    deadline: Instant,
    first: Option<Duration>,
) -> Option<StreamEvent> {
    let mut left = deadline.saturating_duration_since(Instant::now());
    if let Some(f) = first {
        left = left.min(f);
    }
    let r = tokio::select! {
        r = stream.next_within(left) => r,
        _ = s.shutdown.cancelled() => {
            stream.fail(&StreamError::new(Condition::SystemShutdown, "the server is stopping"), &s.domain).await;
            return None;
        }
    };
    match r {
        Ok(ev) => Some(ev),
        Err(ReadError::Eof) | Err(ReadError::Io(_)) => None,
        Err(ReadError::Stream(e)) => {
            debug!("closing client stream: {e}");
            stream.fail(&e, &s.domain).await;
            None
        }
    }
}

async fn sasl_failure(stream: &mut XmlStream, condition: &str, text: Option<&str>) -> Step {
    let mut f =
        Element::new("failure", ns::SASL).with_child(Element::new(condition.to_owned(), ns::SASL));
    if let Some(t) = text {
        f = f.with_child(
            Element::new("text", ns::SASL)
                .with_attr("xml:lang", "en")
                .with_text(t),
        );
    }
    match stream.send(&f).await {
        Ok(()) => Step::Continue,
        Err(_) => Step::Closed,
    }
}

async fn redirect(stream: &mut XmlStream, s: &C2sSettings, user: &str, addr: &str) -> Step {
    info!(user, to = addr, peer = ?stream.peer, "redirecting login");
    stream
        .fail(&StreamError::see_other_host(addr), &s.domain)
        .await;
    Step::Closed
}

async fn unavailable(stream: &mut XmlStream, s: &C2sSettings, user: &str, text: String) -> Step {
    warn!(user, "login refused: {text}");
    stream
        .fail(
            &StreamError::new(Condition::RemoteConnectionFailed, text),
            &s.domain,
        )
        .await;
    Step::Closed
}

/// RFC 6120 §6.4: one SASL exchange.
async fn sasl_auth(
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
fn wait_text(t: &TooSoon) -> String {
    format!(
        "too many failed logins for {}; try again in {} s",
        t.what,
        t.wait.as_secs_f64().ceil().max(1.0)
    )
}

enum AuthFail {
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
async fn check_password(
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

/// XEP-0078 (legacy, but the seed's design): `get` learns the fields, `set` logs in.
async fn legacy_auth(
    stream: &mut XmlStream,
    iq: &Element,
    s: &C2sSettings,
    policy: &dyn LoginPolicy,
    direct_tls: bool,
) -> Step {
    let reply_err = |cond: ErrorCondition, etype: ErrorType, text: &str| {
        StanzaError::new(cond)
            .typed(etype)
            .text(text)
            .legacy()
            .reply_to(iq)
    };
    let Some(query) = iq.first_child() else {
        return Step::Continue;
    };
    let field = |name: &str| {
        query
            .child(name, ns::IQ_AUTH)
            .map(|e| e.text())
            .filter(|t| !t.is_empty())
    };
    let kind = IqType::of(iq);
    if (s.tls_required || s.plain_only) && !stream.secure {
        let e = reply_err(
            ErrorCondition::PolicyViolation,
            ErrorType::Auth,
            "use STARTTLS first",
        );
        return if stream.send(&e).await.is_ok() {
            Step::Continue
        } else {
            Step::Closed
        };
    }
    let username = field("username");
    let user = match username.as_deref().map(normalize_localpart) {
        Some(Ok(u)) => Some(u),
        Some(Err(_)) => {
            let e = reply_err(
                ErrorCondition::NotAuthorized,
                ErrorType::Auth,
                "invalid username",
            );
            let _ = stream.send(&e).await;
            return Step::Continue;
        }
        None => None,
    };
    let route = user.as_deref().map(|u| policy.route(u, direct_tls));
    if let (Some(u), Some(LoginRoute::Relay { node, reason })) = (&user, &route) {
        return Step::Relay(node.clone(), u.clone(), *reason, iq.clone());
    }
    if let (Some(u), Some(LoginRoute::Unavailable(text))) = (&user, &route) {
        let e = reply_err(ErrorCondition::RemoteServerTimeout, ErrorType::Wait, text);
        let _ = stream.send(&e).await;
        return unavailable(stream, s, u, text.clone()).await;
    }
    if let (Some(u), Some(LoginRoute::Redirect(addr))) = (&user, route) {
        // DESIGN.md D1. COMPAT: RFC 6120 wants a URI in <redirect/>; the seed's clients
        // expect the bare HOST:PORT.
        let e = StanzaError::new(ErrorCondition::Redirect)
            .content(&addr)
            .text(&format!("{u} is served by {addr}; log in there"))
            .legacy()
            .reply_to(iq);
        if stream.send(&e).await.is_err() {
            return Step::Closed;
        }
        return redirect(stream, s, u, &addr).await;
    }
    match kind {
        Some(IqType::Get) => {
            let mut q = Element::new("query", ns::IQ_AUTH);
            q = q.with_child(
                Element::new("username", ns::IQ_AUTH).with_text(username.unwrap_or_default()),
            );
            q = q
                .with_child(Element::new("password", ns::IQ_AUTH))
                .with_child(Element::new("resource", ns::IQ_AUTH));
            if stream.send(&iq_result(iq, Some(q))).await.is_err() {
                return Step::Closed;
            }
            // Asking is not a failed attempt.
            Step::Asked
        }
        Some(IqType::Set) => {
            let (Some(user), Some(password), Some(resource)) =
                (user, field("password"), field("resource"))
            else {
                let e = reply_err(
                    ErrorCondition::NotAcceptable,
                    ErrorType::Modify,
                    "username, password and resource are required",
                );
                let _ = stream.send(&e).await;
                return Step::Continue;
            };
            let Some(store) = policy.accounts() else {
                let e = reply_err(
                    ErrorCondition::ServiceUnavailable,
                    ErrorType::Cancel,
                    "no accounts here",
                );
                let _ = stream.send(&e).await;
                return Step::Continue;
            };
            let ip = stream.peer.map(|p| p.ip());
            if let Some(too_soon) = s.guard.check(ip, &user, Instant::now()) {
                debug!(user, peer = ?stream.peer, "login refused: {}", wait_text(&too_soon));
                let e = reply_err(
                    ErrorCondition::PolicyViolation,
                    ErrorType::Wait,
                    &wait_text(&too_soon),
                );
                let _ = stream.send(&e).await;
                return Step::Continue;
            }
            let checked = check_password(store, &user, password, s).await;
            match &checked {
                Ok(true) => s.guard.succeeded(&user),
                Ok(false) => s.guard.failed(ip, &user, Instant::now()),
                Err(_) => {}
            }
            match checked {
                Ok(true) => {
                    info!(user, peer = ?stream.peer, relayed = stream.relayed, "authenticated (iq:auth)");
                    Step::Legacy(
                        user,
                        LegacyLogin {
                            resource,
                            iq: iq.clone(),
                        },
                    )
                }
                Ok(false) => {
                    let e = reply_err(
                        ErrorCondition::NotAuthorized,
                        ErrorType::Auth,
                        "wrong username or password",
                    );
                    let _ = stream.send(&e).await;
                    Step::Continue
                }
                Err(_) => {
                    let e = reply_err(
                        ErrorCondition::ServiceUnavailable,
                        ErrorType::Wait,
                        "the account store is unavailable; try again later",
                    );
                    let _ = stream.send(&e).await;
                    Step::Continue
                }
            }
        }
        _ => {
            let e = reply_err(
                ErrorCondition::BadRequest,
                ErrorType::Modify,
                "iq:auth needs type get or set",
            );
            let _ = stream.send(&e).await;
            Step::Continue
        }
    }
}

impl C2sSettings {
    pub fn from_config(
        cfg: &jabberfarm_config::FarmConfig,
        tls: Option<Arc<rustls::ServerConfig>>,
        shutdown: CancellationToken,
    ) -> C2sSettings {
        let l = &cfg.limits;
        C2sSettings {
            domain: cfg.domain.clone(),
            tls,
            tls_required: cfg.tls.required,
            pre_auth: ParserLimits {
                max_stanza: l.max_stanza_pre_auth,
                max_depth: l.max_depth.min(ParserLimits::PRE_AUTH.max_depth),
            },
            post_auth: ParserLimits {
                max_stanza: l.max_stanza,
                max_depth: l.max_depth,
            },
            stream_open_timeout: l.stream_open_timeout,
            login_timeout: l.login_timeout,
            scram_iterations: cfg.storage.scram_iterations,
            fake_key: rand::random(),
            max_auth_failures: 3,
            password_checks: Arc::new(tokio::sync::Semaphore::new(
                2 * std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
            guard: Arc::new(LoginGuard::new(cfg.auth_limits.clone())),
            plain_only: cfg.storage.plain_only(),
            shutdown,
        }
    }
}

/// The address a client is redirected to for `node`: its advertised `HOST:PORT`, or for a
/// client that came in over direct TLS, the same host with the node's direct-TLS port.
pub fn redirect_address(node: &jabberfarm_config::NodeConfig, direct_tls: bool) -> String {
    if direct_tls
        && let Some(tls) = node.c2s_tls
        && let Some((host, _)) = node.advertise.rsplit_once(':')
    {
        return format!("{host}:{}", tls.port());
    }
    node.advertise.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_address_keeps_brackets_and_swaps_port_for_direct_tls() {
        let node = jabberfarm_config::NodeConfig {
            name: "slave1".into(),
            role: jabberfarm_config::Role::Slave,
            c2s: "[::1]:5322".parse().unwrap_or_else(|_| unreachable!()),
            c2s_tls: "[::1]:5323".parse().ok(),
            advertise: "[2001:db8::1]:5322".into(),
            farm: "[::1]:7101".parse().unwrap_or_else(|_| unreachable!()),
            s2s: None,
            weight: 1,
            redirect: None,
            redirect_tls: None,
        };
        assert_eq!(redirect_address(&node, false), "[2001:db8::1]:5322");
        assert_eq!(redirect_address(&node, true), "[2001:db8::1]:5323");
    }
}
