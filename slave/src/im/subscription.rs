//! The subscription state machine of RFC 6121 §3 as pure functions over a roster item: what a
//! subscription stanza does to the item, and what is to happen with the stanza. The presence
//! code ([`super::presence`]) reads and stores the item and sends what these decide; the tables
//! of RFC 6121 Appendix A are checked here, without a node.

use jabberfarm_proto::stanza::PresenceType;
use jabberfarm_store::im::{RosterItem, Subscription};

/// The user's own subscription stanza (§3.1.2, §3.2.2, §3.3.2, §3.4) changes `item`.
/// `pending_in`: a request from the contact was waiting (it matters to `subscribed` only; the
/// caller has taken it out of storage). Returns whether the stanza goes on to the contact;
/// `None` for a presence type that manages no subscription.
pub(crate) fn outbound(
    item: &mut RosterItem,
    kind: PresenceType,
    pending_in: bool,
) -> Option<bool> {
    let (to, from) = (item.subscription.has_to(), item.subscription.has_from());
    Some(match kind {
        PresenceType::Subscribe => {
            if !to {
                item.ask = true;
            }
            true
        }
        // Already approved: nothing to say again.
        PresenceType::Subscribed if from => false,
        PresenceType::Subscribed if pending_in => {
            item.subscription = Subscription::from_parts(to, true);
            item.approved = false;
            true
        }
        // §3.4: pre-approval; nothing goes out.
        PresenceType::Subscribed => {
            item.approved = true;
            false
        }
        PresenceType::Unsubscribe => {
            item.subscription = Subscription::from_parts(false, from);
            item.ask = false;
            true
        }
        PresenceType::Unsubscribed => {
            item.subscription = Subscription::from_parts(to, false);
            item.approved = false;
            true
        }
        _ => return None,
    })
}

/// What a contact's subscription stanza to the user leads to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    /// The contact already has the user's presence: the server answers `subscribed` for the
    /// user (§3.1.3), and nothing reaches the user.
    AnswerSubscribed,
    /// The user had pre-approved (§3.4): the item changed; answer `subscribed` and send the
    /// user's current presence.
    PreApproved,
    /// A request for the user to answer: kept until answered, delivered to who is online.
    Request,
    /// The item changed: store it, push it, deliver the stanza.
    Changed,
    /// A request withdrawn before it was answered: forget it.
    Withdrawn,
    /// Changes nothing and is not delivered (§3.1.6, §3.2.3, §3.3.3).
    Ignore,
}

/// The contact's half (§3.1.3, §3.1.6, §3.2.3, §3.3.3): `item` is the user's roster item for
/// the contact, if any, and changes in place.
pub(crate) fn inbound(item: Option<&mut RosterItem>, kind: PresenceType) -> Inbound {
    let Some(i) = item else {
        return match kind {
            PresenceType::Subscribe => Inbound::Request,
            PresenceType::Unsubscribe => Inbound::Withdrawn,
            _ => Inbound::Ignore,
        };
    };
    let (to, from) = (i.subscription.has_to(), i.subscription.has_from());
    match kind {
        PresenceType::Subscribe if from => Inbound::AnswerSubscribed,
        PresenceType::Subscribe if i.approved => {
            i.subscription = Subscription::from_parts(to, true);
            i.approved = false;
            Inbound::PreApproved
        }
        PresenceType::Subscribe => Inbound::Request,
        PresenceType::Subscribed if i.ask => {
            i.subscription = Subscription::from_parts(true, from);
            i.ask = false;
            Inbound::Changed
        }
        PresenceType::Unsubscribe if from => {
            i.subscription = Subscription::from_parts(to, false);
            Inbound::Changed
        }
        PresenceType::Unsubscribe => Inbound::Withdrawn,
        PresenceType::Unsubscribed if to || i.ask => {
            i.subscription = Subscription::from_parts(false, from);
            i.ask = false;
            Inbound::Changed
        }
        _ => Inbound::Ignore,
    }
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;
    use PresenceType::*;
    use Subscription::{Both, From, None as NoSub, To};

    fn item(subscription: Subscription, ask: bool, approved: bool) -> RosterItem {
        let juliet = jid::BareJid::new("juliet@example.com").expect("a valid JID");
        let mut i = RosterItem::new(juliet);
        i.subscription = subscription;
        i.ask = ask;
        i.approved = approved;
        i
    }

    /// (subscription, ask, approved) of an item.
    fn state(i: &RosterItem) -> (Subscription, bool, bool) {
        (i.subscription, i.ask, i.approved)
    }

    /// RFC 6121 Appendix A.2, the user's outbound stanzas, state by state.
    #[test]
    fn outbound_rfc6121_a2() {
        let cases = [
            // A.2.1 subscribe: ask set unless the user already has the contact's presence.
            (
                (NoSub, false, false),
                Subscribe,
                false,
                (NoSub, true, false),
                true,
            ),
            (
                (From, false, false),
                Subscribe,
                false,
                (From, true, false),
                true,
            ),
            (
                (To, false, false),
                Subscribe,
                false,
                (To, false, false),
                true,
            ),
            (
                (Both, false, false),
                Subscribe,
                false,
                (Both, false, false),
                true,
            ),
            // A.2.2 subscribed: approves a waiting request...
            (
                (NoSub, false, false),
                Subscribed,
                true,
                (From, false, false),
                true,
            ),
            (
                (NoSub, true, false),
                Subscribed,
                true,
                (From, true, false),
                true,
            ),
            // ...or, with none waiting, pre-approves (§3.4) and sends nothing...
            (
                (NoSub, false, false),
                Subscribed,
                false,
                (NoSub, false, true),
                false,
            ),
            // ...and says nothing again to a contact who has the presence already.
            (
                (From, false, false),
                Subscribed,
                true,
                (From, false, false),
                false,
            ),
            // A.2.3 unsubscribe: the user's half goes, and any request.
            (
                (Both, false, false),
                Unsubscribe,
                false,
                (From, false, false),
                true,
            ),
            (
                (NoSub, true, false),
                Unsubscribe,
                false,
                (NoSub, false, false),
                true,
            ),
            // A.2.4 unsubscribed: the contact's half goes, and any pre-approval.
            (
                (Both, false, false),
                Unsubscribed,
                false,
                (To, false, false),
                true,
            ),
            (
                (NoSub, false, true),
                Unsubscribed,
                false,
                (NoSub, false, false),
                true,
            ),
        ];
        for ((sub, ask, approved), kind, pending, after, forward) in cases {
            let mut i = item(sub, ask, approved);
            let got = outbound(&mut i, kind, pending);
            assert_eq!(
                (state(&i), got),
                (after, Some(forward)),
                "{kind:?} from {sub:?} ask={ask} approved={approved} pending={pending}"
            );
        }
        let mut i = item(Both, false, false);
        assert_eq!(outbound(&mut i, Probe, false), None);
        assert_eq!(outbound(&mut i, Available, false), None);
    }

    /// RFC 6121 Appendix A.3, the contact's inbound stanzas.
    #[test]
    fn inbound_rfc6121_a3() {
        use Inbound::*;
        let cases = [
            // A.3.1 subscribe
            (
                (From, false, false),
                Subscribe,
                (From, false, false),
                AnswerSubscribed,
            ),
            (
                (Both, false, false),
                Subscribe,
                (Both, false, false),
                AnswerSubscribed,
            ),
            (
                (NoSub, false, true),
                Subscribe,
                (From, false, false),
                PreApproved,
            ),
            (
                (To, false, true),
                Subscribe,
                (Both, false, false),
                PreApproved,
            ),
            (
                (NoSub, false, false),
                Subscribe,
                (NoSub, false, false),
                Request,
            ),
            ((To, false, false), Subscribe, (To, false, false), Request),
            // A.3.2 subscribed: only an outstanding request is answered.
            (
                (NoSub, true, false),
                Subscribed,
                (To, false, false),
                Changed,
            ),
            (
                (From, true, false),
                Subscribed,
                (Both, false, false),
                Changed,
            ),
            (
                (NoSub, false, false),
                Subscribed,
                (NoSub, false, false),
                Ignore,
            ),
            ((To, false, false), Subscribed, (To, false, false), Ignore),
            // A.3.3 unsubscribe: the contact's half goes; else a waiting request is withdrawn.
            (
                (From, false, false),
                Unsubscribe,
                (NoSub, false, false),
                Changed,
            ),
            (
                (Both, false, false),
                Unsubscribe,
                (To, false, false),
                Changed,
            ),
            (
                (NoSub, false, false),
                Unsubscribe,
                (NoSub, false, false),
                Withdrawn,
            ),
            // A.3.4 unsubscribed: the user's half goes, or the user's request is refused.
            (
                (To, false, false),
                Unsubscribed,
                (NoSub, false, false),
                Changed,
            ),
            (
                (Both, false, false),
                Unsubscribed,
                (From, false, false),
                Changed,
            ),
            (
                (NoSub, true, false),
                Unsubscribed,
                (NoSub, false, false),
                Changed,
            ),
            (
                (From, false, false),
                Unsubscribed,
                (From, false, false),
                Ignore,
            ),
        ];
        for ((sub, ask, approved), kind, after, effect) in cases {
            let mut i = item(sub, ask, approved);
            let got = inbound(Some(&mut i), kind);
            assert_eq!(
                (state(&i), got),
                (after, effect),
                "{kind:?} to {sub:?} ask={ask} approved={approved}"
            );
        }
        // No item: a request is kept, a withdrawal forgets it, the rest changes nothing.
        assert_eq!(inbound(None, Subscribe), Request);
        assert_eq!(inbound(None, Unsubscribe), Withdrawn);
        assert_eq!(inbound(None, Subscribed), Ignore);
        assert_eq!(inbound(None, Unsubscribed), Ignore);
        assert_eq!(inbound(None, Probe), Ignore);
    }
}
