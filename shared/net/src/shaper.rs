//! The per-session shaper (`limits.session_*`): token buckets on the stanzas and the bytes a
//! client sends. Spending past the burst makes the session stop reading until the debt is
//! paid back at the sustained rate, so a flooding client is slowed by TCP's own
//! backpressure (as Prosody's `mod_limits` and ejabberd's shapers do) and loses nothing.

use std::time::{Duration, Instant};

pub use jabberfarm_config::ShaperConfig;

/// A token bucket: refills at `rate` per second up to `burst`; may go into debt.
#[derive(Debug, Clone)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket. `rate == 0`: no limit.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Bucket {
        Bucket {
            rate: rate as f64,
            burst: burst.max(1) as f64,
            tokens: burst.max(1) as f64,
            at: now,
        }
    }

    /// Spend `n`; returns how long to wait before spending more (zero while within the burst).
    pub fn spend(&mut self, n: u64, now: Instant) -> Duration {
        if self.rate <= 0.0 {
            return Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst) - n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// The two buckets of one client session.
#[derive(Debug, Clone)]
pub struct Shaper {
    stanzas: Bucket,
    bytes: Bucket,
}

impl Shaper {
    pub fn new(cfg: &ShaperConfig, now: Instant) -> Shaper {
        Shaper {
            stanzas: Bucket::new(cfg.stanzas_per_second, cfg.stanza_burst, now),
            bytes: Bucket::new(cfg.bytes_per_second, cfg.byte_burst, now),
        }
    }

    /// One stanza of `bytes` came in: how long the session should stop reading.
    pub fn spend(&mut self, bytes: u64, now: Instant) -> Duration {
        let a = self.stanzas.spend(1, now);
        let b = self.bytes.spend(bytes, now);
        a.max(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_the_burst_nothing_waits_then_the_rate_holds() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 5, t0);
        for _ in 0..5 {
            assert_eq!(b.spend(1, t0), Duration::ZERO);
        }
        // One more: a tenth of a second of debt at 10 per second.
        assert_eq!(b.spend(1, t0), Duration::from_millis(100));
        // After the wait, the debt is paid: one more costs another tenth.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.spend(1, t1), Duration::from_millis(100));
        // A long pause refills to the burst, no more.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..5 {
            assert_eq!(b.spend(1, t2), Duration::ZERO);
        }
        assert!(b.spend(1, t2) > Duration::ZERO);
    }

    #[test]
    fn rate_zero_is_no_limit_and_the_larger_wait_wins() {
        let t0 = Instant::now();
        let mut off = Bucket::new(0, 1, t0);
        for _ in 0..1000 {
            assert_eq!(off.spend(1_000_000, t0), Duration::ZERO);
        }
        let mut s = Shaper::new(
            &ShaperConfig {
                stanzas_per_second: 100,
                stanza_burst: 100,
                bytes_per_second: 1000,
                byte_burst: 1000,
            },
            t0,
        );
        // One 3,000-byte stanza: two seconds of byte debt, no stanza debt.
        assert_eq!(s.spend(3000, t0), Duration::from_secs(2));
    }
}
