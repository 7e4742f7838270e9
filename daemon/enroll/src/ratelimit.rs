//! Per-source-address token bucket, sans-IO (time is passed in).
//!
//! IPv6 sources are keyed by their /64 (one machine usually owns a whole /64). The table is
//! bounded: when it is full, buckets that have refilled completely are dropped; if it is still
//! full, new sources share one overflow bucket (so a flood from many addresses is limited as one
//! source instead of growing memory or disabling the limit).
//!
//! The enrollment listener keeps two of these: one charged at accept for every connection
//! (flood protection against unauthenticated garbage), and a higher one charged once a Hello's
//! token MAC has checked out (a fleet behind one NAT address enrolling at rollout speed); an
//! authenticated attempt gets its accept-time token back ([`RateLimiter::refund`]). A refusal
//! says when a token is due ([`RateLimiter::check`]), which the hub sends as a retry-after.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Default rate: 5 attempts per second per source.
pub const DEFAULT_RATE_PER_SEC: f64 = 5.0;
/// Default burst: 10 attempts.
pub const DEFAULT_BURST: u32 = 10;
/// Default table size.
pub const DEFAULT_MAX_SOURCES: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The limiter.
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    burst: f64,
    max_sources: usize,
    buckets: HashMap<IpAddr, Bucket>,
    overflow: Option<Bucket>,
}

fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

impl RateLimiter {
    /// `rate` tokens per second, `burst` capacity, at most `max_sources` tracked sources.
    pub fn new(rate: f64, burst: u32, max_sources: usize) -> Self {
        RateLimiter {
            rate: if rate.is_finite() && rate > 0.0 {
                rate
            } else {
                DEFAULT_RATE_PER_SEC
            },
            burst: f64::from(burst.max(1)),
            max_sources: max_sources.max(1),
            buckets: HashMap::new(),
            overflow: None,
        }
    }

    fn take(rate: f64, burst: f64, b: &mut Bucket, now: Instant) -> bool {
        let dt = now.saturating_duration_since(b.at).as_secs_f64();
        b.tokens = (b.tokens + dt * rate).min(burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a bucket at `tokens` holds a whole token again.
    fn wait(&self, tokens: f64) -> Duration {
        Duration::from_secs_f64(((1.0 - tokens).max(0.0) / self.rate).min(3600.0))
    }

    /// Like [`RateLimiter::allow`], and on refusal how long until the next attempt from `ip`
    /// would be allowed (the retry-after to tell the client).
    pub fn check(&mut self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        if self.allow(ip, now) {
            return Ok(());
        }
        let tokens = self
            .buckets
            .get(&key(ip))
            .or(self.overflow.as_ref())
            .map_or(0.0, |b| b.tokens);
        Err(self.wait(tokens))
    }

    /// Gives back one token taken from `ip` (the attempt turned out to be one another limiter
    /// accounts for). Never above the burst; a source no longer tracked gets nothing.
    pub fn refund(&mut self, ip: IpAddr) {
        let burst = self.burst;
        if let Some(b) = self.buckets.get_mut(&key(ip)) {
            b.tokens = (b.tokens + 1.0).min(burst);
        }
    }

    /// Whether one more attempt from `ip` is allowed at `now` (and takes a token if so).
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        let k = key(ip);
        let (rate, burst) = (self.rate, self.burst);
        if let Some(b) = self.buckets.get_mut(&k) {
            return Self::take(rate, burst, b, now);
        }
        if self.buckets.len() >= self.max_sources {
            let full_after = burst / rate;
            self.buckets
                .retain(|_, b| now.saturating_duration_since(b.at).as_secs_f64() < full_after);
        }
        if self.buckets.len() >= self.max_sources {
            let b = self.overflow.get_or_insert(Bucket {
                tokens: burst,
                at: now,
            });
            return Self::take(rate, burst, b, now);
        }
        let mut b = Bucket {
            tokens: burst,
            at: now,
        };
        let ok = Self::take(rate, burst, &mut b, now);
        self.buckets.insert(k, b);
        ok
    }

    /// Number of tracked sources.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate() {
        let mut l = RateLimiter::new(5.0, 10, 100);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..10 {
            assert!(l.allow(ip, t0));
        }
        assert!(!l.allow(ip, t0), "11th in the same instant is refused");
        // Another source is unaffected.
        assert!(l.allow("192.0.2.2".parse().unwrap(), t0));
        // 200 ms later one token (5/s) is back, not two.
        let t1 = t0 + Duration::from_millis(200);
        assert!(l.allow(ip, t1));
        assert!(!l.allow(ip, t1));
        // After 2 s the bucket is full again (10), not more.
        let t2 = t1 + Duration::from_secs(5);
        for _ in 0..10 {
            assert!(l.allow(ip, t2));
        }
        assert!(!l.allow(ip, t2));
    }

    #[test]
    fn a_refusal_says_when_to_retry_and_refunds_come_back() {
        let mut l = RateLimiter::new(5.0, 2, 100);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let t0 = Instant::now();
        assert!(l.check(ip, t0).is_ok());
        assert!(l.check(ip, t0).is_ok());
        let wait = l.check(ip, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(200), "one token at 5/s");
        // 100 ms later half a token has come back: 100 ms to go.
        let wait = l.check(ip, t0 + Duration::from_millis(100)).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // Refunds give tokens back, never beyond the burst.
        l.refund(ip);
        l.refund(ip);
        l.refund(ip);
        let t = t0 + Duration::from_millis(100);
        assert!(l.check(ip, t).is_ok());
        assert!(l.check(ip, t).is_ok());
        assert!(l.check(ip, t).is_err());
        // An unknown source gets nothing from a refund (and is not tracked by it).
        l.refund("192.0.2.8".parse().unwrap());
        assert_eq!(l.tracked(), 1);
    }

    #[test]
    fn ipv6_keyed_by_64_and_table_bounded() {
        let mut l = RateLimiter::new(5.0, 1, 2);
        let t = Instant::now();
        assert!(l.allow("2001:db8::1".parse().unwrap(), t));
        assert!(!l.allow("2001:db8::2".parse().unwrap(), t), "same /64");
        assert!(l.allow("2001:db8:1::1".parse().unwrap(), t));
        // Table full (2): new sources share the overflow bucket (burst 1).
        assert!(l.allow("198.51.100.1".parse().unwrap(), t));
        assert!(!l.allow("198.51.100.2".parse().unwrap(), t));
        assert_eq!(l.tracked(), 2);
    }
}
