//! Client stream negotiation up to authentication, the part master and slave share
//! (RFC 6120 §4–§6, XEP-0078): stream header, STARTTLS, SASL or legacy iq:auth.
//!
//! The moment the username is known, the [`LoginPolicy`] says whether this node serves it,
//! where the client must go instead (DESIGN.md D1), or which node the stream is relayed to
//! (D1b). The master redirects or relays; a slave redirects what it does not own and
//! authenticates the rest against its account store — also when the master relays the client
//! ([`negotiate_relayed`] picks the stream up at the first SASL message).
//!
//! Here: the settings, the policy and account traits, the driver (header, features, STARTTLS,
//! then one login attempt after another). `auth.rs`: SASL and the password check, with the
//! login guard's waits. `legacy.rs`: iq:auth (XEP-0078).

mod auth;
mod legacy;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::login_guard::LoginGuard;
use crate::metrics::{Counters, label};
use crate::relay::RelayReason;
use crate::stream::{XmlStream, check_header, new_id};
use jabberfarm_proto::ns;
use jabberfarm_proto::routing::normalize_localpart;
use jabberfarm_proto::sasl::Mechanism;
use jabberfarm_proto::scram::{ScramCredentials, ScramHash};
use jabberfarm_proto::xml::{Condition, Element, ParserLimits, StreamError, StreamEvent};
use prometheus_client::metrics::counter::Counter;

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
    /// What logins came to (the node's metrics).
    pub counters: C2sCounters,
}

/// What client logins at a node came to, for its metrics (`crate::metrics`).
#[derive(Default)]
pub struct C2sCounters {
    /// By `route`: `here` (authenticated at this node), `redirect`, `relay` (the master
    /// relays the client), `unavailable` (its node is not reachable).
    pub logins: Counters,
    /// Wrong passwords (and unknown users).
    pub auth_failed: Counter,
}

impl C2sCounters {
    fn login(&self, route: &str) {
        self.logins.get_or_create(&label("route", route)).inc();
    }
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
                auth::sasl_auth(&mut stream, &el, s, policy, deadline, direct_tls).await
            } else if el.is("iq", ns::CLIENT)
                && el.first_child().is_some_and(|q| q.is("query", ns::IQ_AUTH))
            {
                legacy::legacy_auth(&mut stream, &el, s, policy, direct_tls).await
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
                    s.counters.login("here");
                    stream.restart(s.post_auth);
                    user = Some(u);
                    break;
                }
                Step::Legacy(username, legacy) => {
                    s.counters.login("here");
                    stream.set_limits(s.post_auth);
                    return Some(Negotiated::Authenticated(Authenticated {
                        stream,
                        username,
                        legacy: Some(legacy),
                    }));
                }
                Step::Relay(node, user, reason, first) => {
                    s.counters.login("relay");
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
    stream.next_or_stop(left, &s.shutdown, &s.domain).await
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
    s.counters.login("redirect");
    stream
        .fail(&StreamError::see_other_host(addr), &s.domain)
        .await;
    Step::Closed
}

async fn unavailable(stream: &mut XmlStream, s: &C2sSettings, user: &str, text: String) -> Step {
    warn!(user, "login refused: {text}");
    s.counters.login("unavailable");
    stream
        .fail(
            &StreamError::new(Condition::RemoteConnectionFailed, text),
            &s.domain,
        )
        .await;
    Step::Closed
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
            counters: C2sCounters::default(),
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
            metrics: None,
            inservice: true,
            drain: None,
        };
        assert_eq!(redirect_address(&node, false), "[2001:db8::1]:5322");
        assert_eq!(redirect_address(&node, true), "[2001:db8::1]:5323");
    }
}

#[cfg(test)]
mod negotiation_tests;
