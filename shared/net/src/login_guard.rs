//! The brute-force limiter (`[auth_limits]`): failed logins are counted per client address and
//! per account; past the allowance each further attempt has to wait, the wait doubling with
//! every failure up to `max_wait`. An attempt that comes too early is refused without
//! checking the password, so guessing gains nothing and costs the node nothing.
//!
//! - Addresses: IPv4 as they are, IPv6 by their /64 (one customer's prefix), the relayed
//!   client's own address (not the master's). Networks in `exempt` are never limited.
//! - Accounts: counted from every address together, so spreading guesses over many addresses
//!   does not help either. A successful login clears the account's record (not the address's:
//!   an attacker with one working account must not be able to reset its address).
//! - Bounded: at most `max_tracked` addresses and as many accounts; when a table is full,
//!   records with nothing to remember are swept, and if it is still full, new ones are not
//!   tracked (the other table still limits).
//!
//! Anchors: ejabberd's `mod_fail2ban` (bans an address after N failures for an hour), Prosody's
//! `mod_limits` (rates, not failures). We refuse attempts for a growing time instead of
//! banning connections, so a user who mistyped a few times waits seconds, not an hour.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;
use tracing::warn;

use jabberfarm_config::AuthLimits;

/// The key an address is counted under.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum AddrKey {
    V4(u32),
    /// The upper 64 bits.
    V6(u64),
}

impl AddrKey {
    fn of(ip: IpAddr) -> AddrKey {
        match ip {
            IpAddr::V4(v4) => AddrKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddrKey::V4(u32::from(v4)),
                None => AddrKey::V6((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Record {
    failures: u32,
    last: Instant,
}

#[derive(Default)]
struct Tables {
    addresses: HashMap<AddrKey, Record>,
    accounts: HashMap<String, Record>,
}

/// Why an attempt is refused before its password is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TooSoon {
    /// How long until the next attempt is allowed.
    pub wait: Duration,
    /// "this address" or "this account": what the text tells the client.
    pub what: &'static str,
}

pub struct LoginGuard {
    cfg: AuthLimits,
    tables: Mutex<Tables>,
}

impl LoginGuard {
    pub fn new(cfg: AuthLimits) -> LoginGuard {
        LoginGuard {
            cfg,
            tables: Mutex::new(Tables::default()),
        }
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn exempt(&self, ip: Option<IpAddr>) -> bool {
        let Some(ip) = ip else { return false };
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.cfg.exempt.iter().any(|n| n.contains(&ip))
    }

    /// The wait a record with `failures` imposes after its last failure: none within the
    /// allowance, then `wait`, doubled per further failure, at most `max_wait`.
    fn wait_for(&self, failures: u32, allowance: u32) -> Duration {
        if failures < allowance {
            return Duration::ZERO;
        }
        let doublings = (failures - allowance).min(30);
        self.cfg
            .wait
            .saturating_mul(1u32 << doublings)
            .min(self.cfg.max_wait)
    }

    /// `Some` when an attempt by `user` from `ip` must wait (it is not counted as a failure).
    pub fn check(&self, ip: Option<IpAddr>, user: &str, now: Instant) -> Option<TooSoon> {
        if !self.cfg.enabled || self.exempt(ip) {
            return None;
        }
        let t = self.tables();
        let left = |r: Option<&Record>, allowance: u32| {
            r.and_then(|r| {
                let until = r.last + self.wait_for(r.failures, allowance);
                (until > now).then(|| until - now)
            })
        };
        if let Some(wait) = left(
            ip.and_then(|ip| t.addresses.get(&AddrKey::of(ip))),
            self.cfg.per_address,
        ) {
            return Some(TooSoon {
                wait,
                what: "this address",
            });
        }
        left(t.accounts.get(user), self.cfg.per_account).map(|wait| TooSoon {
            wait,
            what: "this account",
        })
    }

    /// A wrong password (or unknown user) for `user` from `ip`.
    pub fn failed(&self, ip: Option<IpAddr>, user: &str, now: Instant) {
        if !self.cfg.enabled || self.exempt(ip) {
            return;
        }
        let (forget, max) = (self.cfg.forget, self.cfg.max_tracked);
        let mut t = self.tables();
        if let Some(ip) = ip {
            let n = bump(&mut t.addresses, AddrKey::of(ip), now, forget, max);
            if n == self.cfg.per_address {
                warn!(
                    %ip,
                    failures = n,
                    "failed logins from this address: further attempts must wait \
                     (auth_limits.per_address)"
                );
            }
        }
        let n = bump(&mut t.accounts, user.to_owned(), now, forget, max);
        if n == self.cfg.per_account {
            warn!(
                user,
                failures = n,
                "failed logins for this account: further attempts must wait \
                 (auth_limits.per_account)"
            );
        }
    }

    /// `user` logged in: its account record goes.
    pub fn succeeded(&self, user: &str) {
        if self.cfg.enabled {
            self.tables().accounts.remove(user);
        }
    }

    /// (addresses, accounts) tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        let t = self.tables();
        (t.addresses.len(), t.accounts.len())
    }
}

/// Count a failure for `key`; returns its failures now (0 if it could not be tracked).
fn bump<K: std::hash::Hash + Eq>(
    map: &mut HashMap<K, Record>,
    key: K,
    now: Instant,
    forget: Duration,
    max: usize,
) -> u32 {
    if let Some(r) = map.get_mut(&key) {
        if now.duration_since(r.last) >= forget {
            r.failures = 0;
        }
        r.failures = r.failures.saturating_add(1);
        r.last = now;
        return r.failures;
    }
    if map.len() >= max {
        map.retain(|_, r| now.duration_since(r.last) < forget);
        if map.len() >= max {
            return 0;
        }
    }
    map.insert(
        key,
        Record {
            failures: 1,
            last: now,
        },
    );
    1
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn guard(per_address: u32, per_account: u32) -> LoginGuard {
        LoginGuard::new(AuthLimits {
            per_address,
            per_account,
            wait: Duration::from_secs(2),
            max_wait: Duration::from_secs(60),
            forget: Duration::from_secs(600),
            exempt: vec!["192.0.2.0/24".parse().unwrap()],
            max_tracked: 3,
            ..AuthLimits::default()
        })
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn an_address_waits_after_its_allowance_and_the_wait_doubles() {
        let g = guard(3, 100);
        let t0 = Instant::now();
        let a = ip("203.0.113.7");
        for (i, user) in ["u1", "u2", "u3"].iter().enumerate() {
            assert_eq!(g.check(a, user, t0), None, "attempt {i}");
            g.failed(a, user, t0);
        }
        // Three failures: the fourth attempt waits 2 s, from any account.
        let w = g.check(a, "u4", t0).unwrap();
        assert_eq!((w.wait, w.what), (Duration::from_secs(2), "this address"));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(g.check(a, "u4", t1), None);
        g.failed(a, "u4", t1);
        assert_eq!(g.check(a, "u5", t1).unwrap().wait, Duration::from_secs(4));
        // Another address is not touched; success does not clear an address.
        assert_eq!(g.check(ip("203.0.113.8"), "u4", t1), None);
        g.succeeded("u4");
        assert!(g.check(a, "u4", t1).is_some());
        // Forgotten after `forget` without failures.
        let later = t1 + Duration::from_secs(600);
        assert_eq!(g.check(a, "u1", later), None);
        g.failed(a, "u1", later);
        assert_eq!(g.check(a, "u1", later), None, "counted from zero again");
    }

    #[test]
    fn an_account_waits_whatever_the_address_and_success_clears_it() {
        let g = guard(100, 2);
        let t0 = Instant::now();
        g.failed(ip("198.51.100.1"), "alice", t0);
        g.failed(ip("198.51.100.2"), "alice", t0);
        let w = g.check(ip("198.51.100.3"), "alice", t0).unwrap();
        assert_eq!(w.what, "this account");
        assert_eq!(g.check(ip("198.51.100.3"), "bob", t0), None);
        g.succeeded("alice");
        assert_eq!(g.check(ip("198.51.100.3"), "alice", t0), None);
    }

    #[test]
    fn ipv6_counts_per_64_exempt_networks_and_the_cap() {
        let g = guard(1, 100);
        let t0 = Instant::now();
        g.failed(ip("2001:db8:1:2::1"), "a", t0);
        assert!(g.check(ip("2001:db8:1:2::ffff"), "b", t0).is_some());
        assert!(g.check(ip("2001:db8:1:3::1"), "b", t0).is_none());
        // Exempt, also as an IPv4-mapped address.
        for _ in 0..5 {
            g.failed(ip("192.0.2.9"), "c", t0);
        }
        assert!(g.check(ip("192.0.2.9"), "d", t0).is_none());
        assert!(g.check(ip("::ffff:192.0.2.9"), "d", t0).is_none());
        // At most 3 addresses tracked: a fourth is not (until old ones are forgotten).
        g.failed(ip("203.0.113.1"), "e", t0);
        g.failed(ip("203.0.113.2"), "e", t0);
        g.failed(ip("203.0.113.3"), "e", t0);
        assert_eq!(g.tracked().0, 3);
        assert!(g.check(ip("203.0.113.3"), "x", t0).is_none());
        let later = t0 + Duration::from_secs(601);
        g.failed(ip("203.0.113.3"), "e", later);
        assert_eq!(g.tracked().0, 1);
    }

    #[test]
    fn disabled_limits_nothing() {
        let g = LoginGuard::new(AuthLimits {
            enabled: false,
            per_address: 1,
            per_account: 1,
            ..AuthLimits::default()
        });
        let t0 = Instant::now();
        for _ in 0..10 {
            g.failed(ip("203.0.113.1"), "a", t0);
        }
        assert_eq!(g.check(ip("203.0.113.1"), "a", t0), None);
    }
}
