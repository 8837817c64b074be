//! Inbound server-to-server at the master (DESIGN.md D4): remote servers connect here for the
//! public domain. The master
//!
//! - offers STARTTLS with the domain's certificate, then server dialback (XEP-0220);
//! - verifies a remote's `<db:result/>` by asking the remote's authoritative server
//!   (`<db:verify/>` on a stream of its own);
//! - answers `<db:verify/>` for keys any node of the farm handed out, from the farm secret
//!   (XEP-0185), without per-stream state;
//! - accepts a stanza only when its `from` domain was authenticated on this stream and its
//!   `to` is the public domain, and relays it over the farm link to the slave that owns the
//!   user (DESIGN.md D2); stanzas for the bare domain it answers itself.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::mpsc;

use jabberfarm_net::s2s as outbound;
use jabberfarm_net::stream::{XmlStream, new_id};
use jabberfarm_proto::dialback::{dialback_key, domain_of, key_matches};
use jabberfarm_proto::ns;
use jabberfarm_proto::routing::normalize_localpart;
use jabberfarm_proto::stanza::{
    ErrorCondition, Iq, IqError, Kind, Payload, StanzaError, iq_result, worth_holding,
};
use jabberfarm_proto::xml::{Condition, Element, ParserLimits, StreamError, StreamEvent};
use tracing::{debug, info, warn};

use crate::Master;

/// Dialback checks of one stream running at once (XEP-0220 lets a remote ask for several
/// domains on one stream); one more is a `policy-violation`.
const DIALBACK_AT_ONCE: usize = 4;
/// Dialback requests one stream may make in all, answered or not.
const DIALBACK_PER_STREAM: u32 = 16;

/// What a dialback check running off the read loop found.
struct Checked {
    remote: String,
    to: String,
    valid: bool,
}

/// Serve one inbound s2s connection until it closes.
///
/// Until a remote domain is authenticated the stream is read with the pre-authentication
/// limits (`limits.max_stanza_pre_auth`, a shallow depth), as a client's is. Each
/// `<db:result/>` makes the master dial the domain it names: those checks run on tasks of
/// their own (the stream goes on being read meanwhile), at most [`DIALBACK_AT_ONCE`] at once
/// and [`DIALBACK_PER_STREAM`] in all.
pub async fn serve(m: Arc<Master>, mut stream: XmlStream) {
    let domain = m.config.domain.clone();
    let pre_auth = ParserLimits {
        max_stanza: m.config.limits.max_stanza_pre_auth,
        max_depth: m
            .config
            .limits
            .max_depth
            .min(ParserLimits::PRE_AUTH.max_depth),
    };
    let limits = |authenticated: &HashSet<String>| {
        if authenticated.is_empty() {
            pre_auth
        } else {
            m.s2s_settings.limits
        }
    };
    stream.set_limits(pre_auth);
    // Remote domains authenticated by dialback on this stream.
    let mut authenticated: HashSet<String> = HashSet::new();
    let (checked_tx, mut checked_rx) = mpsc::channel::<Checked>(DIALBACK_AT_ONCE);
    let mut running = 0usize;
    let mut asked = 0u32;
    loop {
        let h = match read(&m, &mut stream, true).await {
            Some(StreamEvent::Open(h)) => h,
            _ => return,
        };
        if !h
            .to
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(&domain))
        {
            let e = StreamError::new(
                Condition::HostUnknown,
                format!("this server serves {domain}"),
            );
            stream.fail(&e, &domain).await;
            return;
        }
        let id = new_id();
        if stream
            .send_header(&domain, h.from.as_deref(), &id, h.version.is_some())
            .await
            .is_err()
        {
            return;
        }
        let mut features = Element::new("features", ns::STREAM);
        if m.tls.is_some() && !stream.secure {
            features = features.with_child(Element::new("starttls", ns::TLS));
        }
        features = features.with_child(
            Element::new("dialback", ns::DIALBACK_FEATURE)
                .with_child(Element::new("errors", ns::DIALBACK_FEATURE)),
        );
        if h.version.is_some() && stream.send(&features).await.is_err() {
            return;
        }
        loop {
            let el = tokio::select! {
                ev = read(&m, &mut stream, false) => match ev {
                    Some(StreamEvent::Element(el)) => el,
                    Some(StreamEvent::Close) => {
                        stream.close().await;
                        return;
                    }
                    _ => return,
                },
                Some(c) = checked_rx.recv() => {
                    running -= 1;
                    if stream.send(&result_answer(&c.to, &c.remote, c.valid)).await.is_err() {
                        return;
                    }
                    if c.valid {
                        authenticated.insert(c.remote);
                        stream.set_limits(limits(&authenticated));
                    }
                    continue;
                }
            };
            if el.is("starttls", ns::TLS) {
                let Some(tls) = m.tls.clone().filter(|_| !stream.secure) else {
                    let _ = stream.send(&Element::new("failure", ns::TLS)).await;
                    stream.close().await;
                    return;
                };
                if stream
                    .send(&Element::new("proceed", ns::TLS))
                    .await
                    .is_err()
                {
                    return;
                }
                let within = m.s2s_settings.connect_timeout;
                match stream
                    .upgrade_tls(tls, limits(&authenticated), within)
                    .await
                {
                    Ok(s) => stream = s,
                    Err(e) => {
                        debug!("s2s STARTTLS failed: {e}");
                        return;
                    }
                }
                break; // the stream restarts
            } else if el.is("result", ns::DIALBACK) {
                asked += 1;
                if running >= DIALBACK_AT_ONCE || asked > DIALBACK_PER_STREAM {
                    let e = StreamError::new(
                        Condition::PolicyViolation,
                        format!(
                            "too many dialback requests on one stream (at most \
                             {DIALBACK_AT_ONCE} at once, {DIALBACK_PER_STREAM} in all)"
                        ),
                    );
                    warn!(peer = ?stream.peer, "s2s: {e}");
                    stream.fail(&e, &domain).await;
                    return;
                }
                if let Some(check) = dialback_result(&m, &mut stream, &el, &id).await {
                    running += 1;
                    let tx = checked_tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(check.await).await;
                    });
                }
            } else if el.is("verify", ns::DIALBACK) {
                dialback_verify(&m, &mut stream, &el).await;
            } else if Kind::of(&el).is_some() {
                if let Err(e) = stanza(&m, el, &authenticated).await {
                    stream.fail(&e, &domain).await;
                    return;
                }
            } else {
                let e = StreamError::new(
                    Condition::UnsupportedStanzaType,
                    format!("<{}/> is not expected here", el.name),
                );
                stream.fail(&e, &domain).await;
                return;
            }
        }
    }
}

async fn read(m: &Master, stream: &mut XmlStream, header: bool) -> Option<StreamEvent> {
    let domain = &m.config.domain;
    let wait = if header {
        m.config.limits.stream_open_timeout
    } else {
        // Idle inbound streams: the remote closes them itself; bound the wait anyway.
        m.s2s_settings.idle_timeout * 2
    };
    stream.next_or_stop(wait, &m.shutdown, domain).await
}

/// XEP-0220 §2.1.2–2.1.4: the remote wants to send as `from`. A request that cannot be
/// valid is answered `invalid` at once (`None`); otherwise the returned check asks the
/// remote's authoritative server, to be run off the read loop.
async fn dialback_result(
    m: &Master,
    stream: &mut XmlStream,
    el: &Element,
    stream_id: &str,
) -> Option<impl std::future::Future<Output = Checked> + Send + 'static> {
    let domain = &m.config.domain;
    let (Some(remote), Some(to)) = (el.attr("from"), el.attr("to")) else {
        return None;
    };
    let remote = remote.to_ascii_lowercase();
    let key = el.text();
    if !to.eq_ignore_ascii_case(domain) || remote.eq_ignore_ascii_case(domain) || key.is_empty() {
        let _ = stream.send(&result_answer(to, &remote, false)).await;
        return None;
    }
    let (settings, id, to) = (m.s2s_settings.clone(), stream_id.to_owned(), to.to_owned());
    let key = key.trim().to_owned();
    Some(async move {
        let valid = match outbound::verify(&settings, &remote, &id, &key).await {
            Ok(v) => v,
            Err(e) => {
                warn!(remote, "dialback: cannot verify {remote}: {e}");
                false
            }
        };
        if valid {
            info!(remote, "s2s from {remote} authenticated (dialback)");
        } else {
            warn!(remote, "s2s from {remote}: dialback key refused");
        }
        Checked { remote, to, valid }
    })
}

/// XEP-0220 §2.1.4: our verdict on a remote's `<db:result/>`.
fn result_answer(from: &str, to: &str, valid: bool) -> Element {
    Element::new("result", ns::DIALBACK)
        .with_attr("from", from)
        .with_attr("to", to)
        .with_attr("type", if valid { "valid" } else { "invalid" })
}

/// XEP-0220 §2.1.3: a remote checks a key one of our nodes gave it. Every node computes keys
/// from the farm secret (XEP-0185), so the master knows the answer for all of them.
async fn dialback_verify(m: &Master, stream: &mut XmlStream, el: &Element) {
    let (Some(receiving), Some(originating), Some(id)) =
        (el.attr("from"), el.attr("to"), el.attr("id"))
    else {
        return;
    };
    let ours = originating.eq_ignore_ascii_case(&m.config.domain);
    let expected = dialback_key(&m.config.secret, receiving, originating, id);
    let valid = ours && key_matches(el.text().trim(), &expected);
    debug!(receiving, valid, "dialback verify");
    let answer = Element::new("verify", ns::DIALBACK)
        .with_attr("from", originating)
        .with_attr("to", receiving)
        .with_attr("id", id)
        .with_attr("type", if valid { "valid" } else { "invalid" });
    let _ = stream.send(&answer).await;
}

/// A stanza on an inbound stream (RFC 6120 §8.1.1.2, §13.7.1.3 on `from`).
async fn stanza(
    m: &Master,
    el: Element,
    authenticated: &HashSet<String>,
) -> Result<(), StreamError> {
    let domain = &m.config.domain;
    let (Some(from), Some(to)) = (el.attr("from"), el.attr("to")) else {
        return Err(StreamError::new(
            Condition::ImproperAddressing,
            "stanzas between servers need from and to",
        ));
    };
    if !authenticated.contains(&domain_of(from).to_ascii_lowercase()) {
        return Err(StreamError::new(
            Condition::InvalidFrom,
            format!("{} is not authenticated on this stream", domain_of(from)),
        ));
    }
    if !domain_of(to).eq_ignore_ascii_case(domain) {
        return Err(StreamError::new(
            Condition::HostUnknown,
            format!("this server serves {domain}"),
        ));
    }
    let localpart = to.split_once('@').map(|(l, _)| l);
    let reply = match localpart {
        Some(l) => match normalize_localpart(l) {
            Ok(user) => {
                // Its owner, or the slave that took its users over (failover).
                let owner = m.links.serving(&m.topology.load(), &user).to_owned();
                let sent = if worth_holding(&el) {
                    m.links.send_or_hold(&owner, &el, None).await
                } else {
                    m.links.send(&owner, &el).await
                };
                match sent {
                    Ok(()) => None,
                    Err(e) => {
                        warn!(to, owner, "cannot relay to {owner}: {e}");
                        StanzaError::server_unreachable().answer(&el)
                    }
                }
            }
            Err(_) => StanzaError::new(ErrorCondition::JidMalformed)
                .text("invalid recipient")
                .answer(&el),
        },
        None => answer_for_domain(&el),
    };
    if let Some(r) = reply {
        m.outbound.send(r);
    }
    Ok(())
}

/// What the master answers for the bare domain (XEP-0030, XEP-0199).
fn answer_for_domain(el: &Element) -> Option<Element> {
    if Kind::of(el) != Some(Kind::Iq) {
        return None;
    }
    Some(match Iq::parse(el) {
        Ok(Iq::Get(Payload::Ping)) => iq_result(el, None),
        Ok(Iq::Get(Payload::DiscoInfo { .. })) => iq_result(
            el,
            Some(
                Element::new("query", ns::DISCO_INFO)
                    .with_child(
                        Element::new("identity", ns::DISCO_INFO)
                            .with_attr("category", "server")
                            .with_attr("type", "im")
                            .with_attr("name", "jabberfarm"),
                    )
                    .with_child(
                        Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::DISCO_INFO),
                    )
                    .with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", ns::PING)),
            ),
        ),
        Ok(Iq::Get(Payload::DiscoItems { .. })) => {
            iq_result(el, Some(Element::new("query", ns::DISCO_ITEMS)))
        }
        Ok(Iq::Get(_) | Iq::Set(_)) => {
            StanzaError::new(ErrorCondition::ServiceUnavailable).reply_to(el)
        }
        Ok(Iq::Result(_) | Iq::Error(_)) | Err(IqError::Drop) => return None,
        Err(IqError::BadRequest(text)) => StanzaError::new(ErrorCondition::BadRequest)
            .text(text)
            .reply_to(el),
    })
}
