//! A client session after authentication: resource binding (RFC 6120 §7), the optional
//! legacy session (RFC 3921 §3), then the stanza loop: input from the client is stamped with
//! the session's full JID and routed; output from the router is written to the client.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use jabberfarm_net::c2s::Authenticated;
use jabberfarm_net::receipt::{Ledger, PATIENCE, Receipt};
use jabberfarm_net::shaper::Shaper;
use jabberfarm_net::stream::{ReadError, XmlStream, new_id};
use jabberfarm_proto::ns;
use jabberfarm_proto::sm::{self, Acks};
use jabberfarm_proto::stanza::{
    ErrorCondition, ErrorType, Iq, IqError, IqType, Kind, StanzaError, iq_result,
    is_error_or_result, worth_holding,
};
use jabberfarm_proto::xml::{Condition, Element, StreamError, StreamEvent};
use jid::{BareJid, FullJid, Jid, ResourcePart};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::Slave;
use crate::router::Origin;
use crate::sessions::{Closer, Outgoing, Queued, SESSION_QUEUE};

const TOO_MANY_RESOURCES: &str =
    "this account has as many resources bound as it may have (limits.max_resources)";

/// The stream features after authentication (RFC 6120 §7, RFC 6121 §2.6 roster versioning,
/// RFC 3921's session establishment marked optional as RFC 6121 Appendix E allows, XEP-0198
/// stream management).
pub fn features() -> Element {
    Element::new("features", ns::STREAM)
        .with_child(Element::new("bind", ns::BIND))
        .with_child(Element::new("ver", ns::ROSTER_VER_FEATURE))
        .with_child(
            Element::new("session", ns::SESSION).with_child(Element::new("optional", ns::SESSION)),
        )
        .with_child(Element::new("sm", sm::NS))
}

/// Serve one authenticated client until it leaves or the slave stops.
pub async fn run(slave: Arc<Slave>, auth: Authenticated) {
    let Authenticated {
        mut stream,
        username,
        legacy,
    } = auth;
    let domain = slave.sessions.domain.clone();
    let Ok(bare) = BareJid::new(&format!("{username}@{domain}")) else {
        stream
            .fail(&StreamError::bare(Condition::InternalServerError), &domain)
            .await;
        return;
    };
    let (tx, mut rx) = mpsc::channel(SESSION_QUEUE);
    let closer = Arc::new(Closer::default());
    // Bind a resource: from iq:auth directly, or wait for the client's bind request.
    let (jid, conn) = match legacy {
        Some(l) => match ResourcePart::new(&l.resource) {
            Ok(res) => {
                let jid = bare.with_resource(&res);
                let Some(conn) =
                    slave
                        .sessions
                        .bind(&username, res.as_str(), tx.clone(), closer.clone())
                else {
                    let e = StanzaError::new(ErrorCondition::ResourceConstraint)
                        .text(TOO_MANY_RESOURCES)
                        .legacy()
                        .reply_to(&l.iq);
                    let _ = stream.send(&e).await;
                    stream.close().await;
                    return;
                };
                if stream.send(&iq_result(&l.iq, None)).await.is_err() {
                    slave.sessions.unbind(&username, res.as_str(), conn);
                    return;
                }
                (jid, conn)
            }
            Err(_) => {
                let e = StanzaError::new(ErrorCondition::NotAcceptable)
                    .text("invalid resource")
                    .legacy()
                    .reply_to(&l.iq);
                let _ = stream.send(&e).await;
                stream.close().await;
                return;
            }
        },
        // Boxed, like the other rare steps below: an idle session's task keeps only the size
        // of its stanza loop.
        None => loop {
            let bound = Box::pin(bind(
                &slave,
                &mut stream,
                &bare,
                &username,
                tx.clone(),
                closer.clone(),
            ))
            .await;
            match bound {
                Some(Bound::Session(jid, conn)) => break (jid, conn),
                // XEP-0198 §5: the session waiting for this client takes the connection.
                Some(Bound::Resume { previd, h }) => {
                    match slave
                        .resumable
                        .hand_over(&previd, &username, Box::new(stream), h)
                    {
                        Ok(()) => return,
                        Err(back) => {
                            stream = *back;
                            let failed = sm::failed(ErrorCondition::ItemNotFound);
                            if stream.send(&failed).await.is_err() {
                                return;
                            }
                        }
                    }
                }
                None => return,
            }
        },
    };
    drop(tx);
    info!(jid = %jid, "session started");
    if !slave.store.looks_up_users() {
        // The backend cannot say who exists (LDAP bind mode): remember that this user does,
        // so messages to it while offline are kept (im/offline.rs). A read on most logins,
        // the write only on the first.
        let known = slave.im.is_known(&username).await;
        if !matches!(known, Ok(true))
            && let Err(e) = slave.im.mark_known(&username, crate::im::now_ms()).await
        {
            warn!(user = username, "could not record the login: {e}");
        }
    }
    let mut session = Session {
        slave: slave.clone(),
        from: jid.to_string(),
        jid,
        user: username,
        sm: None,
        taken: None,
        owed: None,
        resume: None,
        ask_at: None,
        offline: None,
    };
    let end = loop {
        let end = session.serve(&mut stream, &mut rx, &closer).await;
        let resumption = match end {
            End::Resume(r) => Some(*r),
            // Boxed, as every rare step here: an idle session's task keeps only the size of
            // its stanza loop.
            End::Gone if session.resume.is_some() => {
                Box::pin(session.detached(&mut rx, &closer)).await
            }
            end => break end,
        };
        let Some(r) = resumption else {
            break End::Gone;
        };
        // The old connection (if it still lingers) goes; the client's new one serves on.
        stream = *r.stream;
        if let Err(end) = Box::pin(session.resumed(&mut stream, r.h)).await {
            break end;
        }
    };
    // Not resumable any more: a client that tries now gets `item-not-found`.
    if let Some(r) = session.resume.take() {
        slave.resumable.remove(&r.id);
    }
    // Contacts see the session go, however it ended (RFC 6121 §4.5.2).
    Box::pin(crate::im::presence::gone(
        &slave,
        &session.jid,
        &session.user,
    ))
    .await;
    slave
        .sessions
        .unbind(&session.user, session.jid.resource().as_str(), conn);
    if let End::Error(e) = &end {
        // The client is there and reading (moved, replaced, the server stopping): what was
        // queued for it before the close goes out before the error (unbound now, nothing more
        // comes). A client that stopped reading has `limits.write_timeout`.
        let mut buf = String::new();
        // No `<r/>` here: the answer would come after our close (a client that acknowledges
        // on its own, as xmpp.js does before its close, is still read: `read_after_close`),
        // and xmpp.js 0.14, busy answering it, writes its close after our FIN and then does
        // not follow a `<see-other-host/>`.
        let mut carried = Carried::default();
        while let Ok(Outgoing::Stanza(q)) = rx.try_recv() {
            let _ = session.serialize(&stream, *q, &mut buf, &mut carried);
        }
        if !buf.is_empty() {
            if stream.send_raw(&buf).await.is_ok() {
                session.written(carried);
            } else {
                debug!(jid = %session.jid, "queued stanzas not written before {:?}", e.condition);
            }
        }
    }
    let closed_by_client = matches!(end, End::PeerClosed);
    match end {
        End::PeerClosed => stream.close().await,
        // A relayed client reconnects to the master, which relays it to the new owner; it
        // would not follow a redirect (that is why it is relayed).
        End::Error(e) if stream.relayed && e.condition == Condition::SeeOtherHost => {
            let e = StreamError::new(
                Condition::Reset,
                "your account moved to another server of this service; reconnect",
            );
            stream.send_error(&e, &domain).await;
            Box::pin(session.read_after_close(&mut stream)).await;
            stream.end().await;
        }
        End::Error(e) if e.condition == Condition::SeeOtherHost => {
            stream.send_error(&e, &domain).await;
            Box::pin(session.read_after_close(&mut stream)).await;
            stream.end().await;
        }
        End::Error(e) => stream.fail(&e, &domain).await,
        End::Gone | End::Dropped | End::Resume(_) => {}
    }
    // What was never written (the session ended before it could be) and, with stream
    // management, what the client never acknowledged, is not dropped. A client that closed
    // its stream itself read until our close: what we wrote counts as handled (xmpp.js 0.14,
    // for one, does not count the IQ results it consumes, so its last `h` is short).
    let mut left: Vec<Queued> = Vec::new();
    let offline = session.offline.take();
    if let Some(mut acks) = session.sm.take() {
        let h = session.taken.as_ref().map(|l| l.taken());
        debug!(jid = %session.jid, h, kept = acks.unacked(), closed_by_client, "stream management at the end");
        match offline {
            // Handled, as the rest: they go.
            Some((_, id)) if closed_by_client => {
                Box::pin(crate::im::offline::release(&slave, &session.user, id)).await;
            }
            // Never acknowledged: still stored, for the next login; not routed again.
            Some((last, _)) => {
                let first = acks.acked().wrapping_add(1);
                let stored = &domain;
                for (i, q) in acks.take_unacked().into_iter().enumerate() {
                    let at = first.wrapping_add(i as u32);
                    let from_storage = at.wrapping_sub(first) <= last.wrapping_sub(first)
                        && q.el.children().any(|c| {
                            c.is("delay", ns::DELAY) && c.attr("from") == Some(stored.as_str())
                        });
                    if !from_storage {
                        left.push(q);
                    }
                }
                crate::im::offline::give_back(&slave, &session.user);
            }
            None if !closed_by_client => left.extend(acks.take_unacked()),
            None => {}
        }
    }
    while let Ok(Outgoing::Stanza(q)) = rx.try_recv() {
        left.push(*q);
    }
    if !left.is_empty() {
        Box::pin(session.requeue(left)).await;
    }
    info!(jid = %session.jid, "session ended");
}

/// What a freshly authenticated client asked for.
enum Bound {
    /// A new session, bound to this full JID (its `Sessions` connection number).
    Session(FullJid, u64),
    /// To resume an earlier session (XEP-0198 §5), having handled `h` of its stanzas.
    Resume { previd: String, h: u32 },
}

/// RFC 6120 §7: wait for the bind request; only bind (and session), or a resumption
/// (XEP-0198), are allowed before it.
async fn bind(
    slave: &Slave,
    stream: &mut XmlStream,
    bare: &BareJid,
    user: &str,
    tx: mpsc::Sender<Outgoing>,
    closer: Arc<Closer>,
) -> Option<Bound> {
    let domain = &slave.sessions.domain;
    loop {
        let ev = stream
            .next_or_stop(slave.login_timeout, &slave.shutdown, domain)
            .await?;
        let iq = match ev {
            StreamEvent::Element(el) if el.is("iq", ns::CLIENT) => el,
            // XEP-0198: a resumption comes instead of binding; stream management is enabled
            // after binding.
            StreamEvent::Element(el) if el.ns == sm::NS => {
                let condition = match (&*el.name, el.attr("previd"), sm::h_of(&el)) {
                    ("resume", Some(previd), Some(h)) => {
                        let previd = previd.to_owned();
                        return Some(Bound::Resume { previd, h });
                    }
                    ("resume", _, _) => ErrorCondition::BadRequest,
                    _ => ErrorCondition::UnexpectedRequest,
                };
                stream.send(&sm::failed(condition)).await.ok()?;
                continue;
            }
            StreamEvent::Close => {
                stream.close().await;
                return None;
            }
            _ => {
                stream
                    .fail(
                        &StreamError::new(Condition::NotAuthorized, "bind a resource first"),
                        domain,
                    )
                    .await;
                return None;
            }
        };
        let Some(req) = iq.child("bind", ns::BIND) else {
            let reply = if iq.child("session", ns::SESSION).is_some() {
                iq_result(&iq, None)
            } else {
                StanzaError::new(ErrorCondition::NotAuthorized)
                    .typed(ErrorType::Wait)
                    .text("bind a resource first")
                    .reply_to(&iq)
            };
            stream.send(&reply).await.ok()?;
            continue;
        };
        if IqType::of(&iq) != Some(IqType::Set) {
            let e = StanzaError::new(ErrorCondition::BadRequest).reply_to(&iq);
            stream.send(&e).await.ok()?;
            continue;
        }
        let wanted = req
            .child("resource", ns::BIND)
            .map(|r| r.text())
            .filter(|r| !r.is_empty());
        let res = match wanted {
            // RFC 6120 §7.6: a server-generated resource when none is asked.
            None => ResourcePart::new(&new_id()).ok()?.into_owned(),
            Some(w) => match ResourcePart::new(&w).map(|r| r.into_owned()) {
                Ok(r) => r,
                Err(_) => {
                    // RFC 6120 §7.7.2.1
                    let e = StanzaError::new(ErrorCondition::BadRequest)
                        .text("invalid resource")
                        .reply_to(&iq);
                    stream.send(&e).await.ok()?;
                    continue;
                }
            },
        };
        let jid = bare.with_resource(&res);
        let Some(conn) = slave
            .sessions
            .bind(user, res.as_str(), tx.clone(), closer.clone())
        else {
            // RFC 6120 §7.6.2.2; the client may unbind another resource or give up.
            let e = StanzaError::new(ErrorCondition::ResourceConstraint)
                .text(TOO_MANY_RESOURCES)
                .reply_to(&iq);
            stream.send(&e).await.ok()?;
            continue;
        };
        let payload = Element::new("bind", ns::BIND)
            .with_child(Element::new("jid", ns::BIND).with_text(jid.to_string()));
        if stream.send(&iq_result(&iq, Some(payload))).await.is_err() {
            slave.sessions.unbind(user, res.as_str(), conn);
            return None;
        }
        return Some(Bound::Session(jid, conn));
    }
}

enum End {
    PeerClosed,
    Error(StreamError),
    /// The connection is gone; nothing more to send. A resumable session waits for its
    /// client.
    Gone,
    /// We dropped the connection, or the session was taken from it: the session ends.
    Dropped,
    /// The client resumed on a new connection while the old one still seemed alive.
    Resume(Box<Resumption>),
}

/// A client's new connection, handed to the session it resumes (XEP-0198 §5), with the
/// count of our stanzas it handled.
pub struct Resumption {
    stream: Box<XmlStream>,
    h: u32,
}

/// A session's resumption: its id, and where a new connection arrives.
struct Resume {
    id: String,
    rx: mpsc::Receiver<Resumption>,
}

/// The sessions a client may resume, by id; each for its own user only.
#[derive(Default)]
pub struct Resumable {
    sessions: Mutex<HashMap<String, (String, mpsc::Sender<Resumption>)>>,
}

impl Resumable {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (String, mpsc::Sender<Resumption>)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sessions that may be resumed now (connected or waiting for their client).
    pub fn count(&self) -> usize {
        self.lock().len()
    }

    /// A new resumable session of `user`: its id (96 random bits), and where resumptions come.
    fn add(&self, user: &str) -> Resume {
        let (tx, rx) = mpsc::channel(1);
        let id = new_id();
        self.lock().insert(id.clone(), (user.to_owned(), tx));
        Resume { id, rx }
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Give `stream` (authenticated as `user`) to the session `id`; it comes back when there
    /// is no such session of that user (ended, timed out, another user's id) or one
    /// resumption is already on its way to it.
    fn hand_over(
        &self,
        id: &str,
        user: &str,
        stream: Box<XmlStream>,
        h: u32,
    ) -> Result<(), Box<XmlStream>> {
        let tx = match self.lock().get(id) {
            Some((owner, tx)) if owner == user => tx.clone(),
            _ => return Err(stream),
        };
        tx.try_send(Resumption { stream, h })
            .map_err(|e| e.into_inner().stream)
    }

    /// Sessions that may be resumed now (connected or waiting).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The next resumption for a resumable session; never, for the others.
async fn next_resumption(resume: &mut Option<Resume>) -> Resumption {
    match resume {
        Some(r) => match r.rx.recv().await {
            Some(x) => x,
            None => std::future::pending().await,
        },
        None => std::future::pending().await,
    }
}

/// The stream error for an `<a/>` or `<resume/>` that acknowledges more than was sent.
fn too_high(e: sm::TooHigh) -> StreamError {
    StreamError::new(
        Condition::UndefinedCondition,
        format!(
            "handled count too high: {} acknowledged, {} sent (XEP-0198)",
            e.h, e.sent
        ),
    )
}

struct Session {
    slave: Arc<Slave>,
    jid: FullJid,
    /// `jid` as a string, stamped on every stanza the client sends.
    from: String,
    user: String,
    /// XEP-0198, once the client enabled it: what we wrote and the client did not
    /// acknowledge…
    sm: Option<Box<Acks<Queued>>>,
    /// …and what the client sent us, and which of it is safe (our `h`).
    taken: Option<Arc<Ledger>>,
    /// The client asked for our `h` while some of what it sent was not safe yet: when to
    /// tell it again, and what we told it.
    owed: Option<(tokio::time::Instant, u32)>,
    /// Set when the client asked for resumption.
    resume: Option<Resume>,
    /// When to ask the client for an acknowledgement ([`Session::ask`]).
    ask_at: Option<tokio::time::Instant>,
    /// With stream management: offline messages written and not yet acknowledged — the
    /// `total` after the last one, and its id. They stay stored until the client's `h`
    /// covers it (`im::offline::take`).
    offline: Option<(u32, i64)>,
}

impl Session {
    async fn serve(
        &mut self,
        stream: &mut XmlStream,
        rx: &mut mpsc::Receiver<Outgoing>,
        closer: &Closer,
    ) -> End {
        // limits.session_*: past the bursts, stop reading until the debt is paid back; the
        // client's TCP window does the rest.
        let mut shaper = Shaper::new(&self.slave.config.limits.session, Instant::now());
        let mut counted = stream.bytes_in();
        let mut paused: Option<tokio::time::Instant> = None;
        let mut throttled = false;
        loop {
            let timer = [paused, self.ask_at, self.owed.map(|o| o.0)]
                .into_iter()
                .flatten()
                .min();
            tokio::select! {
                ev = stream.next(), if paused.is_none() => match ev {
                    Ok(StreamEvent::Element(el)) => {
                        let read = stream.bytes_in();
                        let wait = shaper.spend(read - counted, Instant::now());
                        counted = read;
                        if let Err(e) = Box::pin(self.handle_input(el, stream)).await {
                            return e;
                        }
                        if !wait.is_zero() {
                            if !throttled {
                                throttled = true;
                                info!(jid = %self.jid, "sending faster than limits.session_* allow; reading slowed down");
                            }
                            paused = Some(tokio::time::Instant::now() + wait);
                        }
                    }
                    Ok(StreamEvent::Close) => return End::PeerClosed,
                    Ok(StreamEvent::Open(_)) => return End::Error(StreamError::bare(Condition::NotWellFormed)),
                    // The master's relay ended (the client left, or the master stops): a
                    // resumable session waits for its client to come back.
                    Err(ReadError::RelayEnded) if self.resume.is_some() => return End::Gone,
                    Err(ReadError::RelayEnded) => return End::Error(ReadError::relay_ended_error()),
                    Err(ReadError::Stream(e)) => return End::Error(e),
                    Err(_) => return End::Gone,
                },
                out = rx.recv() => match out {
                    Some(Outgoing::Stanza(q)) => {
                        // Write whatever else is queued in the same write.
                        let mut buf = String::with_capacity(512);
                        let mut carried = Carried::default();
                        let mut kept = self.serialize(stream, *q, &mut buf, &mut carried);
                        while buf.len() < 64 * 1024 && kept.is_ok() {
                            match rx.try_recv() {
                                Ok(Outgoing::Stanza(q)) => kept = self.serialize(stream, *q, &mut buf, &mut carried),
                                Err(_) => break,
                            }
                        }
                        if let Err(e) = kept {
                            return e;
                        }
                        self.ask(stream, &mut buf);
                        // A client that reads slowly (or not at all) is not waited for long
                        // once the session is told to close: after CLOSE_WRITE_GRACE the
                        // connection is dropped mid-write. A client that reads gets what was
                        // being written (a move must not lose it).
                        let sent = tokio::select! {
                            biased;
                            r = stream.send_raw(&buf) => r,
                            e = async {
                                let e = closer.closed().await;
                                tokio::time::sleep(CLOSE_WRITE_GRACE).await;
                                e
                            } => {
                                info!(jid = %self.jid, "dropping the session while a write waits: {e}");
                                return End::Dropped;
                            }
                        };
                        if let Err(e) = sent {
                            if e.kind() == std::io::ErrorKind::TimedOut {
                                // limits.write_timeout: the client stopped reading.
                                info!(jid = %self.jid, "dropping the session: {e}");
                            }
                            return End::Gone;
                        }
                        self.written(carried);
                    }
                    // The router dropped our queue: the session was replaced (its closer has
                    // the reason, set before) or the slave is going away.
                    None => return closer.take().map_or(End::Dropped, End::Error),
                },
                e = closer.closed() => return End::Error(e),
                r = next_resumption(&mut self.resume) => return End::Resume(Box::new(r)),
                // One timer for both (a task's size is its stanza loop's): the end of a pause,
                // and when to ask for an acknowledgement.
                _ = tokio::time::sleep_until(timer.unwrap_or_else(tokio::time::Instant::now)), if timer.is_some() => {
                    let now = tokio::time::Instant::now();
                    if paused.is_some_and(|p| p <= now) {
                        paused = None;
                    }
                    if self.ask_at.is_some_and(|a| a <= now)
                        && let Err(e) = self.ask_now(stream).await
                    {
                        return e;
                    }
                    if self.owed.is_some_and(|o| o.0 <= now)
                        && let Err(e) = self.answer_again(stream).await
                    {
                        return e;
                    }
                }
                _ = self.slave.shutdown.cancelled() => {
                    return End::Error(StreamError::new(Condition::SystemShutdown, "the server is stopping"));
                }
            }
        }
    }

    /// A stanza into `buf`, for the client; with stream management it is kept until the
    /// client acknowledges it (with its receipt until [`Self::written`]), else its receipt
    /// goes into `carried`. Past `limits.max_unacked` kept, the session ends.
    fn serialize(
        &mut self,
        stream: &XmlStream,
        q: Queued,
        buf: &mut String,
        carried: &mut Carried,
    ) -> Result<(), End> {
        stream.serialize_into(&q.el, buf);
        let Some(acks) = &mut self.sm else {
            carried.receipts.extend(q.receipt);
            return Ok(());
        };
        carried.kept += 1;
        carried.kept_receipts |= q.receipt.is_some();
        if acks.sent(q) {
            return Ok(());
        }
        Err(End::Error(StreamError::new(
            Condition::ResourceConstraint,
            "too many stanzas left unacknowledged (XEP-0198)",
        )))
    }

    /// What was serialized is written to the client's connection: it is safe, and its
    /// receipts go (with stream management, the newest kept stanzas hold them).
    fn written(&mut self, carried: Carried) {
        if let Some(acks) = &mut self.sm
            && carried.kept_receipts
        {
            for q in acks.kept_mut().rev().take(carried.kept) {
                q.receipt = None;
            }
        }
    }

    /// Our `h`: what the client sent that is safe (modulo 2^32), and whether some of it is
    /// not yet.
    fn safe_h(&self) -> (u32, bool) {
        self.taken.as_ref().map_or((0, false), |l| {
            let done = l.done();
            (done as u32, done < l.taken())
        })
    }

    /// The client asked for our `h` while some of its stanzas were not safe yet: it hears
    /// again when more is safe (XEP-0198 §4 lets either side send `<a/>` unasked), every
    /// [`ASK_DELAY`] until all of it is.
    async fn answer_again(&mut self, stream: &mut XmlStream) -> Result<(), End> {
        let Some((_, told)) = self.owed.take() else {
            return Ok(());
        };
        let (h, behind) = self.safe_h();
        if behind {
            self.owed = Some((tokio::time::Instant::now() + ASK_DELAY, h));
        }
        if h != told {
            stream.send(&sm::answer(h)).await.map_err(|_| End::Gone)?;
        }
        Ok(())
    }

    /// After stanzas in `buf`: an `<r/>` once [`ASK_EVERY`] stanzas wait for an
    /// acknowledgement and no request of ours is open; fewer are asked for [`ASK_DELAY`]
    /// later (`ask_at`), so a busy session does not ask after every write.
    fn ask(&mut self, stream: &XmlStream, buf: &mut String) {
        let Some(acks) = &mut self.sm else {
            return;
        };
        if acks.unacked() >= ASK_EVERY {
            if acks.should_ask() {
                stream.serialize_into(&sm::request(), buf);
            }
            self.ask_at = None;
        } else if acks.unacked() > 0 && self.ask_at.is_none() {
            self.ask_at = Some(tokio::time::Instant::now() + ASK_DELAY);
        }
    }

    /// [`ASK_DELAY`] after a write: the `<r/>` for what it left unacknowledged.
    async fn ask_now(&mut self, stream: &mut XmlStream) -> Result<(), End> {
        self.ask_at = None;
        if let Some(acks) = &mut self.sm
            && acks.should_ask()
        {
            let mut buf = String::new();
            stream.serialize_into(&sm::request(), &mut buf);
            return stream.send_raw(&buf).await.map_err(|_| End::Gone);
        }
        Ok(())
    }

    /// Stanzas for the client, in one write.
    async fn write(&mut self, stream: &mut XmlStream, stanzas: Vec<Element>) -> Result<(), End> {
        let mut buf = String::new();
        let mut carried = Carried::default();
        for el in stanzas {
            let q = Queued { el, receipt: None };
            self.serialize(stream, q, &mut buf, &mut carried)?;
        }
        self.ask(stream, &mut buf);
        stream.send_raw(&buf).await.map_err(|_| End::Gone)
    }

    /// XEP-0198 elements after binding: `<enable/>` (no resumption offered), `<r/>` and
    /// `<a/>`.
    async fn stream_management(&mut self, el: &Element, stream: &mut XmlStream) -> Result<(), End> {
        let reply = match (&*el.name, &mut self.sm) {
            ("enable", None) => {
                let limits = &self.slave.config.limits;
                self.sm = Some(Box::new(Acks::new(limits.max_unacked)));
                self.taken = Some(Ledger::new(self.from.as_str(), 0, PATIENCE));
                if sm::wants_resume(el) {
                    self.resume = Some(self.slave.resumable.add(&self.user));
                }
                debug!(jid = %self.jid, resumable = self.resume.is_some(), "stream management enabled");
                let max = limits.resume_timeout.as_secs();
                sm::enabled(self.resume.as_ref().map(|r| (r.id.as_str(), max)))
            }
            // Enabled twice, or a resumption inside a session.
            ("enable" | "resume", _) => sm::failed(ErrorCondition::UnexpectedRequest),
            ("r", Some(_)) => {
                let (h, behind) = self.safe_h();
                self.owed = behind.then(|| (tokio::time::Instant::now() + ASK_DELAY, h));
                sm::answer(h)
            }
            ("a", Some(acks)) => {
                let Some(h) = sm::h_of(el) else {
                    return Err(End::Error(StreamError::new(
                        Condition::InvalidXml,
                        "<a/> without a number in 'h'",
                    )));
                };
                let released = acks.on_ack(h).map_err(|e| End::Error(too_high(e)))?;
                debug!(jid = %self.jid, h, released, kept = acks.unacked(), "acknowledged");
                self.release_offline().await;
                return Ok(());
            }
            // Without stream management enabled an ack means nothing.
            ("r" | "a", None) => return Ok(()),
            (other, _) => {
                return Err(End::Error(StreamError::new(
                    Condition::UnsupportedStanzaType,
                    format!("<{other}/> of stream management is not supported"),
                )));
            }
        };
        stream.send(&reply).await.map_err(|_| End::Gone)
    }

    /// The connection is lost but the client may resume (XEP-0198 §5): the session stays
    /// bound and available; what comes for it is kept with what the client has not
    /// acknowledged, to be written when it resumes — until `limits.resume_timeout`, a close
    /// (replaced, moved, the slave stopping) or `limits.max_unacked` kept.
    async fn detached(
        &mut self,
        rx: &mut mpsc::Receiver<Outgoing>,
        closer: &Closer,
    ) -> Option<Resumption> {
        let wait = self.slave.config.limits.resume_timeout;
        info!(jid = %self.jid, "connection lost; the session waits {} s to be resumed", wait.as_secs());
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                r = next_resumption(&mut self.resume) => return Some(r),
                out = rx.recv() => match out {
                    Some(Outgoing::Stanza(q)) => {
                        if !self.sm.as_mut()?.sent(*q) {
                            info!(jid = %self.jid, "too much kept for a client that does not resume; the session ends");
                            return None;
                        }
                    }
                    None => return None,
                },
                _ = closer.closed() => return None,
                _ = tokio::time::sleep_until(deadline) => {
                    info!(jid = %self.jid, "not resumed in {} s; the session ends", wait.as_secs());
                    return None;
                }
                _ = self.slave.shutdown.cancelled() => return None,
            }
        }
    }

    /// The client's new connection took the session over (XEP-0198 §5): what it handled is
    /// released, `<resumed/>` says what we handled, and the rest of what we kept is written
    /// again, in order.
    async fn resumed(&mut self, stream: &mut XmlStream, h: u32) -> Result<(), End> {
        let Some(acks) = &mut self.sm else {
            return Err(End::Dropped);
        };
        acks.on_ack(h).map_err(|e| End::Error(too_high(e)))?;
        self.release_offline().await;
        let (Some(acks), Some(resume)) = (&mut self.sm, &self.resume) else {
            return Err(End::Dropped);
        };
        // Everything read counts as handled, safe or not yet: this process has it, and a
        // client told less would send it again.
        let h = self.taken.as_ref().map_or(0, |l| l.taken() as u32);
        let mut buf = String::new();
        stream.serialize_into(&sm::resumed(&resume.id, h), &mut buf);
        for q in acks.kept() {
            stream.serialize_into(&q.el, &mut buf);
        }
        let again = acks.unacked();
        self.ask(stream, &mut buf);
        info!(jid = %self.jid, again, "session resumed");
        stream.send_raw(&buf).await.map_err(|_| End::Gone)?;
        self.written(Carried {
            receipts: Vec::new(),
            kept: again,
            kept_receipts: true,
        });
        Ok(())
    }

    /// The offline messages the client got are deleted once its `h` covers them.
    async fn release_offline(&mut self) {
        if let (Some((last, id)), Some(acks)) = (self.offline, &self.sm)
            && acks.covers(last)
        {
            self.offline = None;
            Box::pin(crate::im::offline::release(&self.slave, &self.user, id)).await;
        }
    }

    /// What the client never got (never written, or never acknowledged with stream
    /// management), its session gone (XEP-0198 §5): as for a resource that went away (RFC
    /// 6121 §8.5.3.2), messages go to the resource if it is bound again, else to the user's
    /// other resources or offline storage; IQ requests get `service-unavailable` for their
    /// senders; the rest (presence, errors, results) is moot.
    async fn requeue(&self, unacked: Vec<Queued>) {
        let (mut messages, mut iqs) = (0, 0);
        for Queued { el, receipt } in unacked {
            match Kind::of(&el) {
                Some(Kind::Message) if crate::im::offline::wants_storage(&el) => {
                    messages += 1;
                    self.slave.route_with(el, Origin::Local, receipt).await;
                }
                Some(Kind::Iq) if matches!(IqType::of(&el), Some(IqType::Get | IqType::Set)) => {
                    iqs += 1;
                    if let Some(e) =
                        StanzaError::new(ErrorCondition::ServiceUnavailable).answer(&el)
                    {
                        self.slave.route(e, Origin::Local).await;
                    }
                }
                _ => {}
            }
        }
        if messages + iqs > 0 {
            info!(jid = %self.jid, messages, iqs, "unacknowledged when the session ended: delivered again / answered");
        }
    }

    /// The user was moved and our closing error is out (RFC 6120 §4.4: the client may still
    /// send what it wrote before it read our close). Its messages — what it would resend
    /// only with stream management — are routed, until its own `</stream:stream>`, at most
    /// [`AFTER_CLOSE_MESSAGES`] of them or for [`AFTER_CLOSE`]; the rest is dropped (the
    /// session is gone: no presence, no IQ answers).
    async fn read_after_close(&mut self, stream: &mut XmlStream) {
        let deadline = tokio::time::Instant::now() + AFTER_CLOSE;
        let mut routed = 0;
        while routed < AFTER_CLOSE_MESSAGES {
            let Ok(Ok(StreamEvent::Element(mut el))) =
                tokio::time::timeout_at(deadline, stream.next()).await
            else {
                break;
            };
            // What the client acknowledges now is not delivered again.
            if el.is("a", sm::NS)
                && let (Some(acks), Some(h)) = (&mut self.sm, sm::h_of(&el))
            {
                let _ = acks.on_ack(h);
                self.release_offline().await;
            }
            if Kind::of(&el) != Some(Kind::Message) {
                continue;
            }
            el.set_attr("from", self.from.as_str());
            match el.attr("to").map(Jid::new) {
                Some(Ok(_)) => {}
                None => el.set_attr("to", self.jid.to_bare().to_string()),
                Some(Err(_)) => continue,
            }
            self.slave.route(el, Origin::Local).await;
            routed += 1;
        }
        if routed > 0 {
            debug!(jid = %self.jid, "{routed} message(s) read after the close");
        }
    }

    /// One element from the client: a stanza (RFC 6120 §8.1.2.1: `from` is always ours), or
    /// stream management's.
    async fn handle_input(&mut self, mut el: Element, stream: &mut XmlStream) -> Result<(), End> {
        if el.ns == sm::NS {
            return self.stream_management(&el, stream).await;
        }
        let Some(kind) = Kind::of(&el) else {
            if el.ns == ns::CLIENT {
                return Err(End::Error(StreamError::new(
                    Condition::UnsupportedStanzaType,
                    format!("<{}/> is not a stanza", el.name),
                )));
            }
            return Err(End::Error(StreamError::new(
                Condition::InvalidNamespace,
                format!("unexpected element in namespace {}", el.ns),
            )));
        };
        // With stream management, a message (or subscription request) counts in our `h` once
        // it is safe: written to its recipient, stored, or taken by the next node.
        let receipt = match &self.taken {
            Some(l) if worth_holding(&el) => Some(l.track()),
            Some(l) => {
                l.took();
                None
            }
            None => None,
        };
        el.set_attr("from", self.from.as_str());
        let to = match el.attr("to").map(Jid::new) {
            None => None,
            Some(Ok(j)) => Some(j),
            Some(Err(_)) => {
                if !is_error_or_result(&el) {
                    let e = StanzaError::new(ErrorCondition::JidMalformed).reply_to(&el);
                    self.write(stream, vec![e]).await?;
                }
                return Ok(());
            }
        };
        if kind == Kind::Iq {
            // RFC 6120 §8.1.3, §8.2.3, here where client stanzas enter: for IQs to anyone.
            match Iq::parse(&el) {
                Ok(_) => {}
                Err(IqError::Drop) => return Ok(()),
                Err(IqError::BadRequest(text)) => {
                    let e = StanzaError::new(ErrorCondition::BadRequest)
                        .text(text)
                        .reply_to(&el);
                    return self.write(stream, vec![e]).await;
                }
            }
        }
        if kind == Kind::Presence {
            // RFC 6121 §4: broadcast, directed and subscription presence.
            let mut offline = None;
            let keep = self.sm.is_some().then_some(&mut offline);
            let for_me =
                crate::im::presence::outbound(&self.slave, &self.jid, &self.user, el, keep).await;
            // The offline messages are the last of `for_me`.
            if let (Some(id), Some(acks)) = (offline, &self.sm) {
                self.offline = Some((acks.total().wrapping_add(for_me.len() as u32), id));
            }
            if !for_me.is_empty() {
                self.write(stream, for_me).await?;
            }
            return Ok(());
        }
        if to.is_none() {
            // RFC 6120 §10.3: no `to` means the user's own account.
            el.set_attr("to", self.jid.to_bare().to_string());
        }
        self.slave.route_with(el, Origin::Local, receipt).await;
        Ok(())
    }
}

/// The receipts of the stanzas one write carries (`jabberfarm_net::receipt`): they are safe
/// once the write is done.
#[derive(Default)]
struct Carried {
    /// Those of a session without stream management.
    receipts: Vec<Receipt>,
    /// With stream management: how many stanzas the write added to those kept, and whether
    /// any of them holds a receipt.
    kept: usize,
    kept_receipts: bool,
}

/// With stream management, stanzas that wait for the client's acknowledgement before an
/// `<r/>` goes out at once…
const ASK_EVERY: usize = 16;
/// …and how long after a write that left fewer.
const ASK_DELAY: Duration = Duration::from_millis(100);

/// How long a write to a client may still take once its session is told to close.
const CLOSE_WRITE_GRACE: Duration = Duration::from_secs(2);

/// How long a moved session's client may still be read after our closing error, and how many
/// of its messages are routed then.
const AFTER_CLOSE: Duration = Duration::from_secs(2);
const AFTER_CLOSE_MESSAGES: usize = 1000;
