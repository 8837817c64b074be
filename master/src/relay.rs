//! The master as a connection manager for clients that do not follow redirects (DESIGN.md
//! D1b): which logins are relayed ([`RelayMemory`] for `redirect = "auto"`), and the relay
//! itself (handoff to the slave over its farm port, then [`jabberfarm_net::relay::pump`]).
//!
//! `auto`: every login is redirected, and the redirect is noted. The owning slave tells the
//! master (a `<login/>` notice on its farm link) when a user logs in there directly, which
//! clears the note. A user who comes back to the master while the note stands — within
//! `relay.window` — did not reach its slave: that login is relayed, and once a relayed login
//! succeeds (the slave's `<login relayed='true'/>`), the user is relayed on every login for
//! `relay.remember`. A redirect-following client therefore stays redirected, and one that does
//! not follow needs its own retry once.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jabberfarm_net::c2s::RelayLogin;
use jabberfarm_net::farm::FarmLinks;
use jabberfarm_net::relay::{self, Handoff, RelayReason};
use jabberfarm_net::stream::{Io, RelayParts};
use jabberfarm_proto::xml::{Condition, StreamError};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// What the master remembers about users in `auto` mode. Both maps are bounded: when one is
/// full, expired entries are swept, and if it is still full, new users are not noted (they
/// are redirected as usual; at worst a non-following client needs one more retry).
pub struct RelayMemory {
    window: Duration,
    remember: Duration,
    max: usize,
    inner: Mutex<Maps>,
}

#[derive(Default)]
struct Maps {
    /// Redirected, not yet seen logging in at the slave: when.
    redirected: HashMap<String, Instant>,
    /// Needed the relay: the last relayed login.
    relayed: HashMap<String, Instant>,
}

impl RelayMemory {
    pub fn new(window: Duration, remember: Duration, max: usize) -> RelayMemory {
        RelayMemory {
            window,
            remember,
            max,
            inner: Mutex::new(Maps::default()),
        }
    }

    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `user`'s login is relayed (and why); `None`: redirect it.
    pub fn relay_reason(&self, user: &str, now: Instant) -> Option<RelayReason> {
        let m = self.maps();
        if m.relayed
            .get(user)
            .is_some_and(|t| now.duration_since(*t) < self.remember)
        {
            return Some(RelayReason::Remembered);
        }
        if m.redirected
            .get(user)
            .is_some_and(|t| now.duration_since(*t) < self.window)
        {
            return Some(RelayReason::CameBack);
        }
        None
    }

    /// `user` is being redirected now.
    pub fn redirected(&self, user: &str, now: Instant) {
        let window = self.window;
        let mut m = self.maps();
        insert_bounded(&mut m.redirected, user, now, self.max, |t| {
            now.duration_since(t) >= window
        });
    }

    /// The owning slave saw `user` log in directly: the redirect worked.
    pub fn logged_in_at_slave(&self, user: &str) {
        self.maps().redirected.remove(user);
    }

    /// A relayed login of `user` succeeded: keep relaying it.
    pub fn relayed_login(&self, user: &str, now: Instant) {
        let remember = self.remember;
        let mut m = self.maps();
        m.redirected.remove(user);
        insert_bounded(&mut m.relayed, user, now, self.max, |t| {
            now.duration_since(t) >= remember
        });
    }

    /// (recently redirected, remembered as needing the relay)
    pub fn sizes(&self) -> (usize, usize) {
        let m = self.maps();
        (m.redirected.len(), m.relayed.len())
    }

    /// Write the users remembered as needing the relay to `path` (one `user<TAB>unix-seconds
    /// of the last relayed login` per line; a new file renamed over the old one), so that a
    /// restarted master keeps relaying them instead of making each client retry once more.
    pub fn save(&self, path: &Path) -> std::io::Result<usize> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut text = String::from(
            "# jabberfarm master: users relayed by redirect = \"auto\" (user, last relayed \
             login in seconds since 1970)\n",
        );
        let mut n = 0;
        for (user, t) in self.maps().relayed.iter() {
            let age = now.saturating_duration_since(*t);
            if age >= self.remember {
                continue;
            }
            let secs = wall
                .checked_sub(age)
                .and_then(|w| w.duration_since(UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            text.push_str(&format!("{user}\t{secs}\n"));
            n += 1;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        Ok(n)
    }

    /// Read what [`Self::save`] wrote: entries older than `relay.remember`, lines that do not
    /// parse and users beyond `relay.max_remembered` are skipped. A missing file is no error.
    pub fn load(&self, path: &Path) -> std::io::Result<usize> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(e),
        };
        let (now, wall) = (Instant::now(), SystemTime::now());
        let remember = self.remember;
        let mut m = self.maps();
        let mut n = 0;
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((user, secs)) = line.split_once('\t') else {
                continue;
            };
            let Ok(secs) = secs.trim().parse::<u64>() else {
                continue;
            };
            let at = UNIX_EPOCH + Duration::from_secs(secs);
            let age = wall.duration_since(at).unwrap_or(Duration::ZERO);
            if age >= remember || user.is_empty() {
                continue;
            }
            let Some(t) = now.checked_sub(age) else {
                continue;
            };
            insert_bounded(&mut m.relayed, user, t, self.max, |t| {
                now.duration_since(t) >= remember
            });
            n += 1;
        }
        Ok(n)
    }
}

fn insert_bounded(
    map: &mut HashMap<String, Instant>,
    user: &str,
    now: Instant,
    max: usize,
    expired: impl Fn(Instant) -> bool,
) {
    if let Some(t) = map.get_mut(user) {
        *t = now;
        return;
    }
    if map.len() >= max {
        map.retain(|_, t| !expired(*t));
        if map.len() >= max {
            return;
        }
    }
    map.insert(user.to_owned(), now);
}

/// Counters for the log (and, with the metrics issue, for Prometheus).
#[derive(Default)]
pub struct RelayStats {
    pub started: [AtomicU64; 3],
    pub failed: AtomicU64,
    pub refused_full: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

fn reason_index(r: RelayReason) -> usize {
    match r {
        RelayReason::Never => 0,
        RelayReason::CameBack => 1,
        RelayReason::Remembered => 2,
    }
}

impl RelayStats {
    pub fn summary(&self, open: usize) -> String {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        format!(
            "relayed sessions open {open}; started: never-redirect {}, came-back {}, \
             remembered {}; failed {}; refused (limit) {}; bytes up {} down {}",
            n(&self.started[0]),
            n(&self.started[1]),
            n(&self.started[2]),
            n(&self.failed),
            n(&self.refused_full),
            n(&self.bytes_up),
            n(&self.bytes_down),
        )
    }
}

/// Everything a relay needs from the master.
pub struct Relayer {
    pub links: std::sync::Arc<FarmLinks>,
    pub domain: String,
    /// One permit per relayed session, `max_sessions` of them (`relay.max_sessions`).
    pub slots: std::sync::Arc<Semaphore>,
    pub max_sessions: usize,
    pub stats: RelayStats,
    /// Cancelled when the master stops: relayed streams end with the slave's
    /// `<system-shutdown/>`.
    pub stop: CancellationToken,
    /// How long a relayed stream's other direction may take to finish after one ended.
    pub grace: Duration,
    /// `limits.write_timeout`: a side that takes nothing for this long ends the relay.
    pub write_timeout: Duration,
    /// The node's tasks: each relayed stream runs as its own, small task.
    pub tracker: tokio_util::task::TaskTracker,
}

impl Relayer {
    /// Relay `login` on a task of its own: the login's task ends, and what stays for the
    /// session is only the relay's state (the pump, the two connections).
    pub fn start(self: &std::sync::Arc<Self>, login: RelayLogin) {
        let me = self.clone();
        // Boxed, and handed over by a boxed future: the task's own future is sized for the
        // pump alone, not for the login's stream (that was 2 KiB per idle relayed session).
        let login = Box::new(login);
        self.tracker.spawn(async move { me.run(login).await });
    }

    /// Hand `login` over to its slave and carry the stream until it ends.
    pub async fn run(&self, login: Box<RelayLogin>) {
        let Ok(_permit) = self.slots.clone().try_acquire_owned() else {
            self.stats.refused_full.fetch_add(1, Ordering::Relaxed);
            warn!(
                user = login.user,
                "relay refused: relay.max_sessions reached"
            );
            let e = StreamError::new(
                Condition::ResourceConstraint,
                "this server is full; try again later",
            );
            let mut login = login;
            Box::pin(login.stream.fail(&e, &self.domain)).await;
            return;
        };
        let (user, node) = (login.user.clone(), login.node.clone());
        // Boxed: what the handoff needs (the stream, the first element) is freed before the
        // long part, so an idle relayed session keeps only the pump's state.
        let Some((client, slave)) = Box::pin(self.hand_over(*login)).await else {
            return;
        };
        // Held until the stream ends: a relayed client is a connection of this node.
        let _slot = client.slot;
        match relay::pump(
            client.io,
            client.pending,
            slave,
            self.stop.clone(),
            self.grace,
            self.write_timeout,
        )
        .await
        {
            Ok(st) => {
                self.stats.bytes_up.fetch_add(st.up, Ordering::Relaxed);
                self.stats.bytes_down.fetch_add(st.down, Ordering::Relaxed);
                debug!(
                    user,
                    node,
                    up = st.up,
                    down = st.down,
                    "relayed stream ended"
                );
            }
            Err(e) => debug!(user, node, "relayed stream ended: {e}"),
        }
    }

    /// Open the relay connection and send the handoff; returns the client's connection, the
    /// bytes it sent that were read but not parsed, and the slave's connection.
    async fn hand_over(&self, login: RelayLogin) -> Option<(RelayParts, Box<dyn Io>)> {
        let RelayLogin {
            mut stream,
            node,
            user,
            reason,
            first,
            direct_tls,
        } = login;
        let Some(client) = stream.peer else {
            stream
                .fail(
                    &StreamError::bare(Condition::InternalServerError),
                    &self.domain,
                )
                .await;
            return None;
        };
        let handoff = Handoff {
            client,
            secure: stream.secure,
            direct_tls,
            user,
            first,
        };
        let slave = match self.links.open_relay(&node, &handoff).await {
            Ok(io) => io,
            Err(e) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                warn!(user = handoff.user, node, "relay to {node} failed: {e}");
                let e = StreamError::new(
                    Condition::RemoteConnectionFailed,
                    format!(
                        "the server for this account ({node}) is not reachable right now; \
                         try again later"
                    ),
                );
                stream.fail(&e, &self.domain).await;
                return None;
            }
        };
        self.stats.started[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
        info!(user = handoff.user, node, %client, reason = reason.name(), "relaying login");
        let client = stream.into_relay_parts().await.ok()?;
        Some((client, slave))
    }

    /// Relayed sessions open now.
    pub fn open(&self) -> usize {
        self.max_sessions - self.slots.available_permits()
    }
}

/// The relay's figures in the master's metrics: sessions relayed now, started by reason,
/// failed, refused at the limit, bytes each way.
pub fn register_metrics(m: &jabberfarm_net::metrics::Metrics, relayer: &std::sync::Arc<Relayer>) {
    use jabberfarm_net::metrics::{Counters, label, mirror};
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::gauge::Gauge;
    let open = Gauge::<i64>::default();
    m.register(
        "jabberfarm_relayed_sessions",
        "Client sessions the master relays to their slave now",
        open.clone(),
    );
    let started = Counters::default();
    m.register(
        "jabberfarm_relays_started",
        "Relayed sessions started, by reason: never-redirect, came-back, remembered",
        started.clone(),
    );
    let failed = Counter::<u64>::default();
    m.register(
        "jabberfarm_relays_failed",
        "Relays that could not reach the slave",
        failed.clone(),
    );
    let refused = Counter::<u64>::default();
    m.register(
        "jabberfarm_relays_refused",
        "Relays refused at relay.max_sessions",
        refused.clone(),
    );
    let bytes = Counters::default();
    m.register(
        "jabberfarm_relay_bytes",
        "Bytes relayed, by direction: up (client to slave), down",
        bytes.clone(),
    );
    let me = std::sync::Arc::downgrade(relayer);
    m.on_scrape(move || {
        let Some(r) = me.upgrade() else { return };
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        open.set(r.open() as i64);
        for reason in [
            RelayReason::Never,
            RelayReason::CameBack,
            RelayReason::Remembered,
        ] {
            let c = started.get_or_create(&label("reason", reason.name()));
            mirror(&c, n(&r.stats.started[reason_index(reason)]));
        }
        mirror(&failed, n(&r.stats.failed));
        mirror(&refused, n(&r.stats.refused_full));
        mirror(
            &bytes.get_or_create(&label("direction", "up")),
            n(&r.stats.bytes_up),
        );
        mirror(
            &bytes.get_or_create(&label("direction", "down")),
            n(&r.stats.bytes_down),
        );
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_relays_who_came_back_and_remembers_after_success() {
        let m = RelayMemory::new(Duration::from_secs(600), Duration::from_secs(3600), 10);
        let t0 = Instant::now();
        assert_eq!(m.relay_reason("alice", t0), None);
        m.redirected("alice", t0);
        // A follower logs in at its slave: the note goes, the next login is redirected.
        m.logged_in_at_slave("alice");
        assert_eq!(m.relay_reason("alice", t0), None);
        // A non-follower comes back: relayed; after its relayed login, remembered.
        m.redirected("bob", t0);
        let t1 = t0 + Duration::from_secs(5);
        assert_eq!(m.relay_reason("bob", t1), Some(RelayReason::CameBack));
        m.relayed_login("bob", t1);
        let t2 = t1 + Duration::from_secs(1800);
        assert_eq!(m.relay_reason("bob", t2), Some(RelayReason::Remembered));
        // A direct login elsewhere does not undo it (the user has a client that needs it).
        m.logged_in_at_slave("bob");
        assert_eq!(m.relay_reason("bob", t2), Some(RelayReason::Remembered));
        // Forgotten after `remember` without a relayed login.
        assert_eq!(m.relay_reason("bob", t1 + Duration::from_secs(3600)), None);
        // Coming back after the window is a new login, redirected.
        m.redirected("carol", t0);
        assert_eq!(m.relay_reason("carol", t0 + Duration::from_secs(600)), None);
    }

    #[test]
    fn remembered_users_survive_a_restart_through_the_file() {
        let dir = std::env::temp_dir().join(format!("jf-relay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("master.relayed");
        let m = RelayMemory::new(Duration::from_secs(600), Duration::from_secs(3600), 10);
        let now = Instant::now();
        m.relayed_login("bob", now);
        m.relayed_login("carol", now);
        m.redirected("dave", now); // only noted, not remembered: not saved
        assert_eq!(m.save(&path).unwrap_or(0), 2);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(text.starts_with('#') && text.contains("bob\t"), "{text}");

        let again = RelayMemory::new(Duration::from_secs(600), Duration::from_secs(3600), 10);
        assert_eq!(again.load(&path).unwrap_or(0), 2);
        let t = Instant::now();
        assert_eq!(again.relay_reason("bob", t), Some(RelayReason::Remembered));
        assert_eq!(again.relay_reason("dave", t), None);
        // Expired entries and junk are skipped; a missing file is an empty memory.
        std::fs::write(&path, "old\t1\nno tab\nbad\tx\n").unwrap_or_default();
        let third = RelayMemory::new(Duration::from_secs(600), Duration::from_secs(3600), 10);
        assert_eq!(third.load(&path).unwrap_or(99), 0);
        assert_eq!(third.load(&dir.join("missing")).unwrap_or(99), 0);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn memory_is_bounded_and_sweeps_expired_entries() {
        let m = RelayMemory::new(Duration::from_secs(10), Duration::from_secs(10), 3);
        let t0 = Instant::now();
        for u in ["a", "b", "c", "d"] {
            m.redirected(u, t0);
        }
        assert_eq!(m.sizes().0, 3);
        assert_eq!(m.relay_reason("d", t0), None);
        // Once the old ones expired, a new user fits again.
        m.redirected("e", t0 + Duration::from_secs(11));
        assert_eq!(m.sizes().0, 1);
        assert_eq!(
            m.relay_reason("e", t0 + Duration::from_secs(12)),
            Some(RelayReason::CameBack)
        );
    }
}
