//! Where a stanza goes once it is stamped: the rules of `docs/routing.md`, applied to stanzas
//! from local sessions and from farm links alike. Error replies are routed the same way (and
//! are never answered themselves).

use std::sync::Arc;
use std::time::Duration;

use jabberfarm_net::farm::{LINK_NS, LinkEvent, SendError};
use jabberfarm_net::receipt::Receipt;
use jabberfarm_proto::dialback::set_stanza_ns;
use jabberfarm_proto::ns;
use jabberfarm_proto::stanza::{ErrorCondition, ErrorType, Kind, StanzaError, worth_holding};
use jabberfarm_proto::xml::Element;
use jid::Jid;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::Slave;
use crate::im;
use crate::server;
use crate::sessions::Destination;

/// Where a stanza entered this slave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A session on this slave (its `from` was stamped by the session).
    Local,
    /// A farm link from the node named (trusted: the link is authenticated).
    Link(Arc<str>),
    /// A farm link, sent on by a node whose table gave the user to us while the sender's
    /// did not ([`REROUTED`]): it is not sent on again.
    Rerouted,
}

/// The wrapper of a stanza one node sends on to another because their tables disagreed
/// (`<rerouted xmlns=LINK_NS>stanza</rerouted>`): at most one more hop, so two nodes whose
/// tables point at each other never pass a stanza back and forth.
const REROUTED: &str = "rerouted";

impl Slave {
    /// Route `el` (with `from` and `to` set) to its destination; error replies go back the
    /// same way.
    ///
    /// Boxed: the IM rules route further stanzas while handling one (an automatic
    /// `subscribed`, answers to probes), each a finite chain by the RFC's state machine.
    pub fn route(
        &self,
        el: Element,
        origin: Origin,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        self.route_with(el, origin, None)
    }

    /// [`Self::route`] for a stanza whose sender waits until it is safe
    /// (`jabberfarm_net::receipt`): `receipt` goes along into a session's queue, a link's
    /// outbox or the store, and is dropped there once the stanza is written, acknowledged or
    /// stored — or here, once it was answered with an error or needs nothing more.
    pub fn route_with(
        &self,
        el: Element,
        origin: Origin,
        receipt: Option<Receipt>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if let Some(reply) = self.route_once(el, origin, receipt).await {
                // A reply is an error or a result: it is never answered, so one more hop ends it.
                let _ = self.route_once(reply, Origin::Local, None).await;
            }
        })
    }

    async fn route_once(
        &self,
        el: Element,
        origin: Origin,
        receipt: Option<Receipt>,
    ) -> Option<Element> {
        let to = match el.attr("to").map(Jid::new) {
            Some(Ok(j)) => j,
            Some(Err(_)) => {
                return StanzaError::new(ErrorCondition::JidMalformed)
                    .text("invalid 'to'")
                    .answer(&el);
            }
            None => return None,
        };
        match self.sessions.destination(&to) {
            Destination::Server => server::handle(self, el),
            Destination::Local { user, resource } => match Kind::of(&el) {
                Some(Kind::Iq) if resource.is_none() => {
                    server::handle_account_iq(self, el, &user).await
                }
                Some(Kind::Presence) => {
                    im::presence::inbound(self, el, &user, resource.as_deref()).await
                }
                Some(Kind::Message) if im::offline::wants_storage(&el) => {
                    im::offline::deliver_or_store(self, &user, resource.as_deref(), el, receipt)
                        .await
                }
                _ => self
                    .sessions
                    .deliver_tracked(el, &user, resource.as_deref(), receipt),
            },
            Destination::Node(node) if origin == Origin::Local => {
                self.send_to_node(&node, &to, el, receipt).await
            }
            // A peer thinks we own this user and we think another node does: the routing
            // tables disagree for the moment a change takes to cross the farm. The stanza
            // goes on once to the owner in our table (back to the sender too: by now it may
            // have the new table); a stanza already sent on is refused rather than passed on
            // again.
            Destination::Node(node) => match origin {
                Origin::Link(from) => {
                    debug!(to = %to, node, %from, "a stanza from {from} for {node}'s user: sent on");
                    let wrapped = Element::new(REROUTED, LINK_NS).with_child(el);
                    let sent = match receipt {
                        Some(r) => self.links.send_tracked(&node, &wrapped, r).await,
                        None => self.links.send(&node, &wrapped).await,
                    };
                    match sent {
                        Ok(()) => None,
                        Err(e) => {
                            debug!(to = %to, node, "cannot route: {e}");
                            StanzaError::server_unreachable().answer(wrapped.children().next()?)
                        }
                    }
                }
                _ => {
                    info!(to = %to, node, "stanza from a link for a user we do not own");
                    StanzaError::new(ErrorCondition::ServiceUnavailable)
                        .typed(ErrorType::Wait)
                        .text("the farm's routing is changing; try again")
                        .answer(&el)
                }
            },
            // DESIGN.md D4: out from this slave, in the public domain's name.
            Destination::Remote(_) => self.outbound.send(el),
        }
    }

    /// Sends `el` (for `to`) over the link to `node` (held while `node` is down, if it is
    /// worth holding); the error for its sender when it cannot go.
    async fn send_to_node(
        &self,
        node: &str,
        to: &Jid,
        el: Element,
        receipt: Option<Receipt>,
    ) -> Option<Element> {
        let holds = worth_holding(&el);
        if holds && self.holds_for(node).await {
            // Safe once written to the store: the receipt goes when this returns.
            return self
                .hold(node, to.node().map_or("", |n| n.as_str()), &el)
                .await;
        }
        let sent = if holds {
            self.links.send_or_hold(node, &el, receipt).await
        } else {
            self.links.send(node, &el).await
        };
        match sent {
            Ok(()) => None,
            Err(SendError::Full) => StanzaError::new(ErrorCondition::ResourceConstraint)
                .text("the farm link to the recipient's server is congested")
                .answer(&el),
            Err(e) => {
                debug!(to = %to, node, "cannot route: {e}");
                StanzaError::server_unreachable().answer(&el)
            }
        }
    }

    /// A stanza the link to `node` kept and could not deliver: held in the store if it is
    /// worth holding, else its sender gets the error it would have got had the link been
    /// down when it was sent.
    async fn undelivered(&self, node: &str, mut el: Element, receipt: Option<Receipt>) {
        if el.is(REROUTED, LINK_NS) {
            let Some(inner) = el.children().next().cloned() else {
                return;
            };
            el = inner;
        }
        if Kind::of(&el).is_none() {
            // The links' own elements (hand-overs, notices) have their own retries.
            return debug!(node, "not delivered to {node}: <{}/>", el.name);
        }
        set_stanza_ns(&mut el, ns::SERVER, ns::CLIENT);
        let error = if worth_holding(&el) {
            let user = el
                .attr("to")
                .and_then(|to| Jid::new(to).ok())
                .and_then(|to| to.node().map(|n| n.as_str().to_owned()))
                .unwrap_or_default();
            self.hold(node, &user, &el).await
        } else {
            StanzaError::server_unreachable().answer(&el)
        };
        // Held or answered: safe.
        drop(receipt);
        if let Some(error) = error {
            self.route(error, Origin::Local).await;
        }
    }

    /// Consume the farm links' events until they stop.
    ///
    /// Stanzas are handed to [`INBOUND_WORKERS`] workers, each user's always to the same one:
    /// order per user is kept, and one slow user (a database write, a full session queue, a
    /// congested link to answer on) holds up only the users of its worker. A worker that
    /// stays full for [`INBOUND_WAIT`] gets no more: the stanza is answered
    /// `resource-constraint`. A peer lost (restarted, not running, or away for `farm.hold`)
    /// waits for the workers to finish what they hold, so "gone" presences never overtake
    /// that node's last stanzas.
    pub async fn link_events(self: &Arc<Self>, mut rx: mpsc::Receiver<LinkEvent>) {
        let workers: Vec<mpsc::Sender<Inbound>> = (0..INBOUND_WORKERS)
            .map(|_| {
                let (tx, wrx) = mpsc::channel(INBOUND_QUEUE);
                let me = self.clone();
                self.tasks
                    .spawn(async move { me.inbound_worker(wrx).await });
                tx
            })
            .collect();
        loop {
            let ev = tokio::select! {
                ev = rx.recv() => ev,
                _ = self.shutdown.cancelled() => None,
            };
            let Some(ev) = ev else { break };
            match ev {
                LinkEvent::Stanza {
                    stanza, from_node, ..
                } if crate::handover::is_handover(&stanza) => {
                    self.handover.take(from_node, stanza);
                }
                LinkEvent::Stanza {
                    mut stanza,
                    from_node,
                    receipt,
                } => {
                    let mut origin = Origin::Link(from_node.into());
                    if stanza.is(REROUTED, LINK_NS) {
                        let Some(inner) = stanza.children().next().cloned() else {
                            continue;
                        };
                        stanza = inner;
                        origin = Origin::Rerouted;
                    }
                    // Relayed from another server by the master: our sessions speak jabber:client.
                    set_stanza_ns(&mut stanza, ns::SERVER, ns::CLIENT);
                    let worker = &workers[worker_of(&stanza)];
                    let refused = match worker
                        .send_timeout(Inbound::Stanza(stanza, origin, receipt), INBOUND_WAIT)
                        .await
                    {
                        Ok(()) => None,
                        Err(mpsc::error::SendTimeoutError::Timeout(Inbound::Stanza(el, ..))) => {
                            Some(el)
                        }
                        Err(_) => break,
                    };
                    if let Some(el) = refused {
                        warn!(to = el.attr("to"), "inbound worker full; stanza refused");
                        if let Some(e) = StanzaError::new(ErrorCondition::ResourceConstraint)
                            .text("the recipient's server is too busy; try again")
                            .answer(&el)
                        {
                            self.route(e, Origin::Local).await;
                        }
                    }
                }
                // The link may come back to the same process: nothing is lost yet.
                LinkEvent::Down(_) => {}
                LinkEvent::Undelivered {
                    node,
                    stanza,
                    receipt,
                } => self.undelivered(&node, stanza, receipt).await,
                LinkEvent::Lost(node) => {
                    let mut done = Vec::new();
                    for w in &workers {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        if w.send(Inbound::Barrier(tx)).await.is_ok() {
                            done.push(rx);
                        }
                    }
                    for rx in done {
                        let _ = tokio::time::timeout(INBOUND_WAIT, rx).await;
                    }
                    im::presence::node_down(self, &node);
                    if self.links.fails_over() && self.links.is_failed(&node) {
                        // Its users are served by other slaves now: what was held for it
                        // goes to them.
                        self.drain(&node);
                    }
                }
                // A link back: hand-overs that failed while it was down go again, and what
                // was held for the node is written.
                LinkEvent::Up(node) => {
                    self.mover.wake();
                    self.drain(&node);
                }
                LinkEvent::Topology(_) => self.mover.wake(),
            }
        }
    }

    /// One of the [`Self::link_events`] workers: its users' stanzas, in order.
    async fn inbound_worker(&self, mut rx: mpsc::Receiver<Inbound>) {
        while let Some(work) = rx.recv().await {
            match work {
                Inbound::Stanza(el, origin, receipt) => {
                    self.route_with(el, origin, Some(receipt)).await
                }
                Inbound::Barrier(done) => {
                    let _ = done.send(());
                }
            }
        }
    }
}

/// Workers for stanzas from farm links.
const INBOUND_WORKERS: usize = 16;
/// Stanzas queued per worker.
const INBOUND_QUEUE: usize = 256;
/// How long the link reader waits for room at a full worker before refusing the stanza.
const INBOUND_WAIT: Duration = Duration::from_secs(2);

enum Inbound {
    /// A stanza, how it came (a link, or sent on by another node), and the link's receipt
    /// for it.
    Stanza(Element, Origin, Receipt),
    /// Answered once everything queued before it was handled.
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// The worker of the user a stanza is for: a hash of its bare `to` address, case-folded
/// (stanzas for the bare domain share one worker).
fn worker_of(el: &Element) -> usize {
    use std::hash::{Hash, Hasher};
    let to = el.attr("to").unwrap_or("");
    let bare = to.split('/').next().unwrap_or(to);
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for b in bare.bytes() {
        b.to_ascii_lowercase().hash(&mut h);
    }
    (h.finish() % INBOUND_WORKERS as u64) as usize
}
