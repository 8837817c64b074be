//! What the server itself answers: stanzas to the bare domain (XEP-0199 ping, XEP-0030
//! disco, XEP-0092 version, XEP-0012 uptime), and IQs to a user's bare JID that the server
//! handles on the user's behalf (disco#info, roster, vCard, last activity).

use jabberfarm_proto::ns;
use jabberfarm_proto::stanza::{
    ErrorCondition, Iq, IqError, Kind, Payload, StanzaError, iq_result,
};
use jabberfarm_proto::xml::Element;
use jid::Jid;

use crate::Slave;
use crate::im;
use jabberfarm_store::im::RosterStore;

/// Features in disco#info: exactly what this server supports.
pub const FEATURES: &[&str] = &[
    ns::DISCO_INFO,
    ns::DISCO_ITEMS,
    ns::PING,
    ns::IQ_AUTH,
    ns::VCARD,
    ns::MSGOFFLINE,
    ns::DELAY,
    ns::VERSION,
    ns::LAST,
];

/// Features in the disco#info of an account (its bare JID), answered by the server.
pub const ACCOUNT_FEATURES: &[&str] = &[ns::DISCO_INFO, ns::LAST, ns::VCARD];

/// A stanza addressed to the bare domain. Returns the reply, if any.
pub fn handle(slave: &Slave, el: Element) -> Option<Element> {
    if Kind::of(&el) != Some(Kind::Iq) {
        // Messages and presence to the server itself are not for anyone (RFC 6121 §8.5.1 says
        // the server handles them; we have nothing to do with them yet).
        return None;
    }
    let iq = match Iq::parse(&el) {
        Ok(iq) => iq,
        Err(IqError::Drop) => return None,
        Err(IqError::BadRequest(text)) => {
            return StanzaError::new(ErrorCondition::BadRequest)
                .text(text)
                .answer(&el);
        }
    };
    Some(match iq {
        Iq::Result(_) | Iq::Error(_) => return None,
        Iq::Get(Payload::Ping) => iq_result(&el, None),
        // RFC 3921 §3 session establishment: a no-op kept for old clients (RFC 6121 dropped it).
        Iq::Set(Payload::Session) => iq_result(&el, None),
        Iq::Get(Payload::DiscoInfo { node: None }) => iq_result(
            &el,
            Some(disco_info("server", "im", Some("jabberfarm"), FEATURES)),
        ),
        Iq::Get(Payload::DiscoItems { .. }) => {
            iq_result(&el, Some(Element::new("query", ns::DISCO_ITEMS)))
        }
        // XEP-0092
        Iq::Get(Payload::Version) => iq_result(
            &el,
            Some(
                Element::new("query", ns::VERSION)
                    .with_child(Element::new("name", ns::VERSION).with_text("jabberfarm"))
                    .with_child(
                        Element::new("version", ns::VERSION).with_text(env!("CARGO_PKG_VERSION")),
                    ),
            ),
        ),
        // XEP-0012 §5: a server's last activity is its uptime.
        Iq::Get(Payload::Last) => iq_result(
            &el,
            Some(im::last::query(
                slave.sessions.started.elapsed().as_secs(),
                "",
            )),
        ),
        Iq::Get(_) | Iq::Set(_) => {
            StanzaError::new(ErrorCondition::ServiceUnavailable).reply_to(&el)
        }
    })
}

/// `<query xmlns='disco#info'>` with one identity and `features`.
fn disco_info(category: &str, kind: &str, name: Option<&str>, features: &[&str]) -> Element {
    let mut q = Element::new("query", ns::DISCO_INFO).with_child(
        Element::new("identity", ns::DISCO_INFO)
            .with_attr("category", category)
            .with_attr("type", kind)
            .with_opt_attr("name", name),
    );
    for f in features {
        q = q.with_child(Element::new("feature", ns::DISCO_INFO).with_attr("var", *f));
    }
    q
}

/// Whether the sender of `iq` may see `user`'s presence: the user, or a contact the user's
/// roster has with a `from`/`both` subscription (RFC 6121 §3).
async fn may_see_presence(slave: &Slave, iq: &Element, user: &str, own: bool) -> bool {
    if own {
        return true;
    }
    let Some(from) = iq.attr("from").and_then(|f| Jid::new(f).ok()) else {
        return false;
    };
    matches!(slave.im.item(user, &from.to_bare()).await, Ok(Some(i)) if i.subscription.has_from())
}

/// An IQ to local user `user`'s bare JID (RFC 6121 §8.5.2.1: the server answers for the
/// account): ping, disco#info, roster (the user's own sessions only), vCard, last activity.
pub async fn handle_account_iq(slave: &Slave, el: Element, user: &str) -> Option<Element> {
    let iq = match Iq::parse(&el) {
        Ok(iq) if iq.is_request() => iq,
        Ok(_) | Err(IqError::Drop) => return None,
        Err(IqError::BadRequest(_)) => {
            return StanzaError::new(ErrorCondition::BadRequest).answer(&el);
        }
    };
    let own = format!("{user}@{}", slave.sessions.domain);
    // The sender's resource when the sender is this very account.
    let own_resource = el
        .attr("from")
        .and_then(|f| f.strip_prefix(own.as_str()))
        .and_then(|r| r.strip_prefix('/'))
        .map(str::to_owned);
    Some(match iq {
        Iq::Get(Payload::Ping) => iq_result(&el, None),
        Iq::Set(Payload::Session) => iq_result(&el, None),
        // XEP-0030 for an account, as Prosody answers it: to the user and to contacts who see
        // the user's presence; to others as if there were no such account.
        Iq::Get(Payload::DiscoInfo { node: None })
            if may_see_presence(slave, &el, user, own_resource.is_some()).await =>
        {
            iq_result(
                &el,
                Some(disco_info("account", "registered", None, ACCOUNT_FEATURES)),
            )
        }
        Iq::Get(Payload::Last) => {
            let may_see = may_see_presence(slave, &el, user, own_resource.is_some()).await;
            im::last::handle(slave, &el, user, may_see).await
        }
        Iq::Get(Payload::Roster(query)) => match own_resource {
            Some(res) => im::roster::get(slave, &el, query, user, &res).await,
            None => forbidden_roster(&el),
        },
        Iq::Set(Payload::Roster(query)) => match own_resource {
            Some(_) => im::roster::set(slave, &el, query, user).await,
            None => forbidden_roster(&el),
        },
        Iq::Get(Payload::VCard(_)) => im::vcard::get(slave, &el, user).await,
        Iq::Set(Payload::VCard(vcard)) => {
            im::vcard::set(slave, &el, vcard, user, own_resource.is_some()).await
        }
        _ => StanzaError::new(ErrorCondition::ServiceUnavailable).reply_to(&el),
    })
}

/// RFC 6121 §2.1.5: nobody but the user may see or change the roster.
fn forbidden_roster(iq: &Element) -> Element {
    StanzaError::new(ErrorCondition::Forbidden).reply_to(iq)
}
