//! Legacy authentication (XEP-0078, iq:auth): `get` learns the fields, `set` logs in. Old
//! clients, and the seed's design, use it; errors carry XEP-0086 codes.

use tokio::time::Instant;
use tracing::{debug, info};

use super::auth::{check_password, wait_text};
use super::{C2sSettings, LegacyLogin, LoginPolicy, LoginRoute, Step, redirect, unavailable};
use crate::stream::XmlStream;
use jabberfarm_proto::ns;
use jabberfarm_proto::routing::normalize_localpart;
use jabberfarm_proto::stanza::{ErrorCondition, ErrorType, IqType, StanzaError, iq_result};
use jabberfarm_proto::xml::Element;

/// XEP-0078 (legacy, but the seed's design): `get` learns the fields, `set` logs in.
pub(super) async fn legacy_auth(
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
                Ok(false) => {
                    s.guard.failed(ip, &user, Instant::now());
                    s.counters.auth_failed.inc();
                }
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
