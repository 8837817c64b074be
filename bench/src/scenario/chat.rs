//! `chat`: P pairs of logged-in users exchange messages; both users of a pair are served by
//! the same server, or with `--across` by different ones (farm slaves: over a farm link), or
//! with `--peer-host` one by the target and one by another server of another domain
//! (federation: every message crosses server-to-server streams).
//!
//! - closed loop (no `--rate`): the two users of a pair bounce one message back and forth;
//!   each is sent the moment the previous one arrived, so P messages are in flight and the
//!   rate is the most the server (and this client) can carry with that many.
//! - open loop (`--rate R`): in each pair one user sends to the other on a fixed schedule,
//!   R/P per second, whatever the server does; the latency at a given offered rate.
//!
//! Each body starts with the send time (nanoseconds since the run started), so latency is
//! measured by the receiver from the message alone, whatever the server.
//!
//! `--follow-moves` (open loop; live rebalancing, docs/rebalancing.md): a session the server
//! moves (`<see-other-host/>` after login) logs in again where it is sent and goes on. Each
//! message's id carries its number, so the receivers count duplicates; each sender pings its
//! server after every message, and the answer acknowledges everything sent before it (a
//! session handles its stanzas in order). Messages sent and not yet acknowledged when the
//! sender is moved are counted apart (`unacked_at_move`: without stream management a client
//! cannot know whether the server read them); every other message must arrive, once:
//! `lost` is what is neither delivered nor among those. With `--sm` the acknowledgement is
//! the server's XEP-0198 `<a h/>` (asked for with an `<r/>` after every message) instead of a
//! ping's answer: it says the message is safe (delivered, stored or with the next server), so
//! a server killed with kill -9 may lose none of those. A session that ends without saying
//! where to go logs in again from the start, retrying for [`RELOGIN_FOR`] (a server that is
//! restarting). Receivers count messages that arrive after a later one (`out_of_order`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jabberfarm_proto::ns;
use jabberfarm_proto::xml::{Element, StreamEvent, escape_into};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::Ctx;
use crate::client::{self, ClientConfig, Conn, Session};
use crate::error::{BenchError, Result};
use crate::measure::{SelfCpu, nanos, summarize};
use crate::report::{ChatFigures, Report};
use crate::runner::run_pool;

/// The resource every chat session binds.
const CHAT_RESOURCE: &str = "chat";

/// How long messages still in flight at the end of the measured phase may take to arrive.
const GRACE: Duration = Duration::from_secs(2);

/// How long a session that lost its server keeps trying to log in again, and how often.
const RELOGIN_FOR: Duration = Duration::from_secs(30);
const RELOGIN_EVERY: Duration = Duration::from_millis(500);

pub struct ChatArgs {
    pub pairs: usize,
    /// Messages per second over all pairs (open loop); `None`: closed loop.
    pub rate: Option<f64>,
    /// At most this many messages are sent.
    pub count: u64,
    /// Body length in bytes (the timestamp, a space, padding).
    pub body_size: usize,
    /// Logins at a time while setting up.
    pub concurrency: usize,
    /// Pair users served by different servers (messages cross a farm link).
    pub across: bool,
    /// Tell servers apart by this routing table's owner instead of by address (a jabberfarm
    /// master that relays serves every user at its own address).
    pub owners: Option<jabberfarm_proto::routing::RoutingTable>,
    /// Pair each user with one of another server (federation).
    pub peer: Option<Peer>,
    /// Sessions the server moves log in again where it sends them (open loop only).
    pub follow_moves: bool,
}

/// The other server of federated pairs.
pub struct Peer {
    pub cfg: Arc<ClientConfig>,
    pub addr: SocketAddr,
    pub users: super::Users,
}

struct Shared {
    /// Set at the end of the measured phase: no more sends.
    stop: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
    bounced: AtomicU64,
    count: u64,
    epoch: std::time::Instant,
    pad: String,
    /// `--follow-moves`: the message numbers received, to count duplicates.
    seen: Option<Mutex<std::collections::HashSet<u64>>>,
    duplicates: AtomicU64,
    /// Messages that arrived after a later one from the same sender…
    out_of_order: AtomicU64,
    /// …the first few: the number, and the later one before it.
    out_of_order_ids: Mutex<Vec<(u64, u64)>>,
    moved: AtomicU64,
    move_failed: AtomicU64,
    unacked_at_move: AtomicU64,
    /// The numbers of those messages.
    unacked: Mutex<Vec<u64>>,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        nanos(self.epoch.elapsed())
    }

    /// Send the next message to `to` unless the run is over. Returns whether it was sent.
    async fn send(&self, conn: &mut Conn, to: &str, out: &mut String) -> Result<bool> {
        Ok(self.send_numbered(conn, to, out).await?.is_some())
    }

    /// [`Self::send`], returning the message's number.
    async fn send_numbered(
        &self,
        conn: &mut Conn,
        to: &str,
        out: &mut String,
    ) -> Result<Option<u64>> {
        if self.stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let seq = self.sent.fetch_add(1, Ordering::Relaxed);
        if seq >= self.count {
            self.sent.fetch_sub(1, Ordering::Relaxed);
            self.stop.store(true, Ordering::Relaxed);
            return Ok(None);
        }
        out.clear();
        out.push_str("<message type='chat' to='");
        out.push_str(to);
        out.push_str("' id='m");
        out.push_str(&seq.to_string());
        out.push_str("'><body>");
        out.push_str(&self.now_ns().to_string());
        out.push(' ');
        out.push_str(&self.pad);
        out.push_str("</body></message>");
        conn.send(out).await?;
        Ok(Some(seq))
    }

    /// The session was moved to `at` (or lost its server): log in there, trying again for
    /// [`RELOGIN_FOR`]. `None` (counted) when that fails.
    async fn moved(&self, again: &client::Relogin, at: &str) -> Option<Session> {
        let until = Instant::now() + RELOGIN_FOR;
        loop {
            match again.login_at(at).await {
                Ok(s) => {
                    self.moved.fetch_add(1, Ordering::Relaxed);
                    return Some(s);
                }
                Err(_) if Instant::now() < until => tokio::time::sleep(RELOGIN_EVERY).await,
                Err(_) => {
                    self.move_failed.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
            }
        }
    }

    /// [`Self::receive`] for a receiver that remembers the last number it got from its
    /// partner (`last`): one that comes after a later one is counted.
    fn receive_in_order(&self, el: &Element, last: &mut Option<u64>) -> Option<u64> {
        let (lat, seq) = self.take(el)?;
        if let Some(seq) = seq {
            if let Some(l) = *last
                && seq < l
            {
                self.out_of_order.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut ids) = self.out_of_order_ids.lock()
                    && ids.len() < 10
                {
                    ids.push((seq, l));
                }
            }
            *last = Some(last.map_or(seq, |l| l.max(seq)));
        }
        Some(lat)
    }

    /// A message from the partner: its latency. Bounces are counted.
    fn receive(&self, el: &Element) -> Option<u64> {
        self.take(el).map(|(lat, _)| lat)
    }

    /// [`Self::receive`], with the message's number when duplicates are counted.
    fn take(&self, el: &Element) -> Option<(u64, Option<u64>)> {
        if !el.is("message", ns::CLIENT) {
            return None;
        }
        if el.attr("type") == Some("error") {
            self.bounced.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut number = None;
        if let Some(seen) = &self.seen {
            let seq: u64 = el.attr("id")?.strip_prefix('m')?.parse().ok()?;
            if !seen.lock().is_ok_and(|mut s| s.insert(seq)) {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            number = Some(seq);
        }
        let body = el.child("body", ns::CLIENT)?.text();
        let sent: u64 = body.split(' ').next()?.parse().ok()?;
        self.received.fetch_add(1, Ordering::Relaxed);
        Some((self.now_ns().saturating_sub(sent), number))
    }
}

pub async fn run(ctx: &Ctx, a: ChatArgs) -> Result<Report> {
    let mut rep = ctx.report("chat", "message");
    let mode = if a.rate.is_some() { "open" } else { "closed" };
    rep.param("pairs", a.pairs);
    rep.param("mode", mode);
    let pairing = match (&a.peer, a.across) {
        (Some(_), _) => "federated",
        (None, true) => "across",
        (None, false) => "same",
    };
    rep.param("pairing", pairing);
    if let Some(p) = &a.peer {
        rep.param("peer", format!("{} ({})", p.addr, p.cfg.domain));
    }
    if let Some(r) = a.rate {
        rep.param("rate", r);
    }
    rep.param("count", a.count);
    rep.param("body_size", a.body_size);

    let pairs = match &a.peer {
        Some(peer) => federated_pairs(ctx, peer, a.pairs, a.concurrency).await?,
        None => local_pairs(ctx, &a).await?,
    };
    let sessions = login_all(&pairs, a.concurrency).await?;

    let period = a
        .rate
        .map(|r| Duration::from_secs_f64(a.pairs as f64 / r.max(1e-3)));
    let sh = Arc::new(Shared {
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        bounced: AtomicU64::new(0),
        count: a.count,
        epoch: std::time::Instant::now(),
        pad: "x".repeat(a.body_size.saturating_sub(20)),
        seen: a.follow_moves.then(Default::default),
        duplicates: AtomicU64::new(0),
        out_of_order: AtomicU64::new(0),
        out_of_order_ids: Mutex::default(),
        moved: AtomicU64::new(0),
        move_failed: AtomicU64::new(0),
        unacked_at_move: AtomicU64::new(0),
        unacked: Mutex::default(),
    });
    if a.follow_moves && period.is_none() {
        return Err(BenchError::Setup(
            "--follow-moves needs the open loop (--rate)".into(),
        ));
    }
    let done = CancellationToken::new();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    let me = SelfCpu::start();
    let cpu0 = ctx.cpu()?;
    let t0 = Instant::now();
    let deadline = t0 + ctx.duration;
    for (k, ((sa, sb), (la, lb))) in sessions.into_iter().zip(&pairs).enumerate() {
        let (ja, jb) = (esc(&sa.jid), esc(&sb.jid));
        let again = |l: &Login| {
            a.follow_moves.then(|| client::Relogin {
                cfg: l.2.clone(),
                user: l.0.clone(),
                resource: CHAT_RESOURCE.to_owned(),
                home: ctx.start.to_string(),
            })
        };
        match period {
            None => {
                receivers.push(tokio::spawn(peer(
                    sa,
                    jb,
                    true,
                    true,
                    sh.clone(),
                    done.clone(),
                    None,
                )));
                receivers.push(tokio::spawn(peer(
                    sb,
                    ja,
                    false,
                    true,
                    sh.clone(),
                    done.clone(),
                    None,
                )));
            }
            Some(p) => {
                // Spread the senders over one period.
                let offset = p.mul_f64(k as f64 / a.pairs as f64);
                senders.push(tokio::spawn(open_sender(
                    sa,
                    jb,
                    t0 + offset,
                    p,
                    sh.clone(),
                    done.clone(),
                    again(la),
                )));
                receivers.push(tokio::spawn(peer(
                    sb,
                    ja,
                    false,
                    false,
                    sh.clone(),
                    done.clone(),
                    again(lb),
                )));
            }
        }
    }
    while Instant::now() < deadline && !sh.stop.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sh.stop.store(true, Ordering::Relaxed);
    let window = t0.elapsed();
    let delivered = sh.received.load(Ordering::Relaxed);
    let sent = sh.sent.load(Ordering::Relaxed);
    rep.server = ctx.server_figures(cpu0.as_ref(), delivered)?;
    rep.set_cpu(&me);
    if let Some(s) = rep.server.as_mut() {
        s.cpu_s_per_100k_messages = Some(s.cpu_us_per_op / 10.0);
    }
    let grace_end = Instant::now() + GRACE;
    while Instant::now() < grace_end && sh.received.load(Ordering::Relaxed) < sent {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done.cancel();
    let mut lags = Vec::new();
    for t in senders {
        match t.await {
            Ok(l) => lags.extend(l),
            Err(e) => rep.count_error(&BenchError::Setup(format!("sender task: {e}"))),
        }
    }
    let mut lats = Vec::new();
    let mut closed_early = 0u64;
    for t in receivers {
        match t.await {
            Ok((l, early)) => {
                lats.extend(l);
                closed_early += u64::from(early);
            }
            Err(e) => rep.count_error(&BenchError::Setup(format!("receiver task: {e}"))),
        }
    }
    let received_total = sh.received.load(Ordering::Relaxed);
    let bounced = sh.bounced.load(Ordering::Relaxed);
    if bounced > 0 {
        rep.error_kinds.insert("message bounced".into(), bounced);
        rep.errors += bounced;
    }
    if closed_early > 0 {
        rep.error_kinds
            .insert("session closed by server".into(), closed_early);
        rep.errors += closed_early;
    }
    rep.fill(delivered, window);
    rep.latency_us = summarize(lats);
    let mut lost = sent.saturating_sub(received_total);
    if let Some(seen) = &sh.seen {
        // Exactly: every number sent that did not arrive and was acknowledged (or sent by a
        // sender that was never moved).
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        let unacked: std::collections::HashSet<u64> = sh
            .unacked
            .lock()
            .map(|u| u.iter().copied().collect())
            .unwrap_or_default();
        let missing: Vec<u64> = (0..sent)
            .filter(|n| !seen.contains(n) && !unacked.contains(n))
            .collect();
        lost = missing.len() as u64;
        if !missing.is_empty() {
            // Their ids (`m` and the number), to look for in the servers' logs.
            rep.param(
                "lost_ids",
                missing
                    .iter()
                    .take(10)
                    .map(|n| format!("m{n}"))
                    .collect::<Vec<_>>(),
            );
        }
        let unacked_arrived = unacked.iter().filter(|n| seen.contains(n)).count();
        rep.param("moved", sh.moved.load(Ordering::Relaxed));
        rep.param("move_failed", sh.move_failed.load(Ordering::Relaxed));
        rep.param("duplicates", sh.duplicates.load(Ordering::Relaxed));
        rep.param("out_of_order", sh.out_of_order.load(Ordering::Relaxed));
        if let Ok(ids) = sh.out_of_order_ids.lock()
            && !ids.is_empty()
        {
            // `m5 after m9`: to look for in the servers' logs.
            rep.param(
                "out_of_order_ids",
                ids.iter()
                    .map(|(n, l)| format!("m{n} after m{l}"))
                    .collect::<Vec<_>>(),
            );
        }
        rep.param("unacked_at_move", unacked.len() as u64);
        rep.param("unacked_at_move_arrived", unacked_arrived as u64);
    }
    let secs = window.as_secs_f64().max(1e-9);
    rep.chat = Some(ChatFigures {
        mode: mode.into(),
        pairs: a.pairs as u64,
        offered_per_s: a.rate,
        sent,
        delivered: received_total,
        lost,
        sent_per_s: sent as f64 / secs,
        send_lag_us: period.map(|_| summarize(lags)),
    });
    Ok(rep)
}

/// Where each user of a pair logs in, and with which settings.
type Login = (String, SocketAddr, Arc<ClientConfig>);

/// Pairs of the target's users on the same server (or, `across`, on different ones).
async fn local_pairs(ctx: &Ctx, a: &ChatArgs) -> Result<Vec<(Login, Login)>> {
    // Users that share a server, paired in user order.
    let candidates = ctx.users.count.min(4 * a.pairs as u64 + 8);
    let routes = ctx.discover(candidates, a.concurrency).await?;
    let mut waiting: HashMap<String, Vec<String>> = HashMap::new();
    let mut pairs: Vec<(String, String)> = Vec::new();
    for i in 0..candidates {
        if pairs.len() == a.pairs {
            break;
        }
        let user = ctx.users.name(i);
        let Some(addr) = routes.get(&user).copied() else {
            continue;
        };
        let server = match &a.owners {
            Some(table) => table.owner(&user).to_owned(),
            None => addr.to_string(),
        };
        // Same server: a user waiting at this address; across: one waiting at another.
        let partner = waiting
            .iter_mut()
            .find(|(k, v)| (**k != server) == a.across && !v.is_empty())
            .and_then(|(_, v)| v.pop());
        match partner {
            Some(other) => pairs.push((other, user)),
            None => waiting.entry(server).or_default().push(user),
        }
    }
    if pairs.len() < a.pairs {
        let how = if a.across {
            "on different servers"
        } else {
            "on the same server"
        };
        return Err(BenchError::Setup(format!(
            "only {} pairs of users {how} among the first {candidates} users; \
             raise --user-count",
            pairs.len()
        )));
    }
    let at = |u: String| {
        let addr = routes.get(&u).copied().unwrap_or(ctx.start);
        (u, addr, ctx.cfg.clone())
    };
    Ok(pairs.into_iter().map(|(x, y)| (at(x), at(y))).collect())
}

/// Pairs of a target user and a user of the peer server.
async fn federated_pairs(
    ctx: &Ctx,
    peer: &Peer,
    n: usize,
    concurrency: usize,
) -> Result<Vec<(Login, Login)>> {
    let routes = ctx.discover(n as u64, concurrency).await?;
    let pairs = (0..n as u64)
        .map(|i| {
            let u = ctx.users.name(i);
            let addr = routes.get(&u).copied().unwrap_or(ctx.start);
            (
                (u, addr, ctx.cfg.clone()),
                (peer.users.name(i), peer.addr, peer.cfg.clone()),
            )
        })
        .collect();
    Ok(pairs)
}

/// Log in both users of every pair (bounded concurrency).
async fn login_all(
    pairs: &[(Login, Login)],
    concurrency: usize,
) -> Result<Vec<(Session, Session)>> {
    let names: Arc<Vec<Login>> = Arc::new(
        pairs
            .iter()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .collect(),
    );
    let slots: Arc<Mutex<Vec<Option<Session>>>> =
        Arc::new(Mutex::new((0..names.len()).map(|_| None).collect()));
    let (n, s) = (names.clone(), slots.clone());
    let deadline = Instant::now() + Duration::from_secs(crate::MAX_SETUP_SECS);
    let pool = run_pool(concurrency, names.len() as u64, deadline, move |i, _| {
        let (n, s) = (n.clone(), s.clone());
        async move {
            let idx = usize::try_from(i).unwrap_or(usize::MAX);
            let Some((user, addr, cfg)) = n.get(idx) else {
                return Err(BenchError::Setup("no such user slot".into()));
            };
            let session = client::login(cfg, *addr, user, CHAT_RESOURCE).await?;
            if let Ok(mut slots) = s.lock()
                && let Some(slot) = slots.get_mut(idx)
            {
                *slot = Some(session);
            }
            Ok(Duration::ZERO)
        }
    })
    .await;
    if pool.errors() > 0 {
        return Err(BenchError::Setup(format!(
            "{} of {} chat users could not log in; first error: {}",
            pool.errors(),
            names.len(),
            pool.first_error.unwrap_or_default()
        )));
    }
    let all: Vec<Option<Session>> = slots
        .lock()
        .map(|mut s| s.drain(..).collect())
        .unwrap_or_default();
    let mut it = all.into_iter();
    let mut out = Vec::new();
    while let (Some(Some(a)), Some(Some(b))) = (it.next(), it.next()) {
        out.push((a, b));
    }
    if out.len() != pairs.len() {
        return Err(BenchError::Setup("a chat session went missing".into()));
    }
    Ok(out)
}

/// A user that answers every message from its partner with the next one (closed loop,
/// `reply`), or only receives (open loop). `first`: sends the pair's first message.
/// Returns the latencies it measured and whether the server closed the session early.
#[allow(clippy::too_many_arguments)]
async fn peer(
    mut s: Session,
    to: String,
    first: bool,
    reply: bool,
    sh: Arc<Shared>,
    done: CancellationToken,
    again: Option<client::Relogin>,
) -> (Vec<u64>, bool) {
    let mut lats = Vec::new();
    let mut out = String::with_capacity(256);
    let mut early = false;
    let mut last = None;
    if first && sh.send(&mut s.conn, &to, &mut out).await.is_err() {
        return (lats, true);
    }
    loop {
        tokio::select! {
            ev = s.conn.next() => match ev {
                Ok(StreamEvent::Element(el)) => {
                    if let Some(a) = s.handled(&el)
                        && s.conn.send(&a).await.is_err()
                    {
                        early = true;
                        break;
                    }
                    if let (Some(at), Some(again)) = (client::Relogin::moved_to(&el), &again) {
                        match sh.moved(again, &at).await {
                            Some(new) => {
                                s = new;
                                for el in std::mem::take(&mut s.early) {
                                    lats.extend(sh.receive_in_order(&el, &mut last));
                                }
                                continue;
                            }
                            None => {
                                early = true;
                                break;
                            }
                        }
                    }
                    if let Some(lat) = sh.receive_in_order(&el, &mut last) {
                        lats.push(lat);
                        if reply && sh.send(&mut s.conn, &to, &mut out).await.is_err() {
                            early = true;
                            break;
                        }
                    }
                }
                Ok(_) | Err(_) => {
                    // Ended without saying where to go: log in again from the start.
                    if let Some(again) = &again
                        && let Some(new) = sh.moved(again, &again.home).await
                    {
                        s = new;
                        for el in std::mem::take(&mut s.early) {
                            lats.extend(sh.receive_in_order(&el, &mut last));
                        }
                        continue;
                    }
                    early = true;
                    break;
                }
            },
            _ = done.cancelled() => break,
        }
    }
    if !early {
        s.conn.close().await;
    }
    (lats, early)
}

/// Open loop: send on schedule (period `period`, from `start`) until the run stops; drain
/// whatever the server sends. Returns how late each send was against its schedule.
#[allow(clippy::too_many_arguments)]
async fn open_sender(
    mut s: Session,
    to: String,
    start: Instant,
    period: Duration,
    sh: Arc<Shared>,
    done: CancellationToken,
    again: Option<client::Relogin>,
) -> Vec<u64> {
    let mut lags = Vec::new();
    let mut out = String::with_capacity(256);
    // --follow-moves: numbers sent and not yet acknowledged (by a ping's answer, or with
    // stream management by the server's `h`: each with the count of stanzas it made).
    let mut unacked: std::collections::VecDeque<(u32, u64)> = Default::default();
    let mut iv = tokio::time::interval_at(start, period);
    // Catch up after a stall: the offered rate stays what was asked.
    iv.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut sending = true;
    loop {
        tokio::select! {
            t = iv.tick(), if sending => {
                lags.push(nanos(t.elapsed()));
                let sent = match sh.send_numbered(&mut s.conn, &to, &mut out).await {
                    Ok(Some(seq)) if again.is_some() && s.sm.is_some() => {
                        s.sm_sent = s.sm_sent.wrapping_add(1);
                        unacked.push_back((s.sm_sent, seq));
                        s.conn.send("<r xmlns='urn:xmpp:sm:3'/>").await.map_err(|_| ())
                    }
                    Ok(Some(seq)) if again.is_some() => {
                        unacked.push_back((0, seq));
                        // The answer acknowledges the message (stanzas are handled in order).
                        let ping = format!(
                            "<iq type='get' id='a{seq}'><ping xmlns='urn:xmpp:ping'/></iq>"
                        );
                        s.conn.send(&ping).await.map_err(|_| ())
                    }
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => {
                        sending = false;
                        Ok(())
                    }
                    Err(_) => Err(()),
                };
                if sent.is_err() {
                    // The server closed: moved (its error is still to be read), or gone.
                    let Some(again) = &again else { return lags };
                    let mut at = again.home.clone();
                    while let Ok(StreamEvent::Element(el)) = s.conn.next().await {
                        if let Some(to) = client::Relogin::moved_to(&el) {
                            at = to;
                            break;
                        }
                        sh.receive(&el);
                    }
                    sh.unacked_at_move
                        .fetch_add(unacked.len() as u64, Ordering::Relaxed);
                    if let Ok(mut all) = sh.unacked.lock() {
                        all.extend(unacked.drain(..).map(|u| u.1));
                    }
                    match sh.moved(again, &at).await {
                        Some(new) => s = new,
                        None => return lags,
                    }
                }
            }
            ev = s.conn.next() => match ev {
                Ok(StreamEvent::Element(el)) => {
                    if let Some(a) = s.handled(&el) {
                        let _ = s.conn.send(&a).await;
                    }
                    if let (Some(at), Some(again)) = (client::Relogin::moved_to(&el), &again) {
                        // What the server may not have read before it moved us.
                        sh.unacked_at_move
                            .fetch_add(unacked.len() as u64, Ordering::Relaxed);
                        if let Ok(mut all) = sh.unacked.lock() {
                            all.extend(unacked.drain(..).map(|u| u.1));
                        }
                        match sh.moved(again, &at).await {
                            Some(new) => {
                                s = new;
                                continue;
                            }
                            None => return lags,
                        }
                    }
                    if el.is("iq", ns::CLIENT)
                        && let Some(acked) = el
                            .attr("id")
                            .and_then(|id| id.strip_prefix('a')?.parse::<u64>().ok())
                    {
                        while unacked.front().is_some_and(|&(_, n)| n <= acked) {
                            unacked.pop_front();
                        }
                        continue;
                    }
                    if el.is("a", ns::SM)
                        && let Some(h) = el.attr("h").and_then(|h| h.parse::<u32>().ok())
                    {
                        // Counts wrap at 2^32: what lies at most half of that behind `h`.
                        while unacked
                            .front()
                            .is_some_and(|&(k, _)| h.wrapping_sub(k) < 1 << 31)
                        {
                            unacked.pop_front();
                        }
                        continue;
                    }
                    sh.receive(&el);
                }
                Ok(_) | Err(_) => {
                    // Ended without saying where to go: log in again from the start.
                    let Some(again) = &again else { return lags };
                    sh.unacked_at_move
                        .fetch_add(unacked.len() as u64, Ordering::Relaxed);
                    if let Ok(mut all) = sh.unacked.lock() {
                        all.extend(unacked.drain(..).map(|u| u.1));
                    }
                    match sh.moved(again, &again.home).await {
                        Some(new) => s = new,
                        None => return lags,
                    }
                }
            },
            _ = done.cancelled() => break,
        }
    }
    s.conn.close().await;
    lags
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(&mut out, s);
    out
}
