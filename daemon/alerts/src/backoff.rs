//! Retry timing: exponential backoff with jitter, and what a sink's failure text asks for.

use std::time::Duration;

/// How often and how patiently a failed delivery is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts after the first one (the "3 retries").
    pub retries: u32,
    /// Delay before the first retry; doubles per attempt.
    pub initial: Duration,
    /// Largest computed delay.
    pub max: Duration,
    /// Largest `Retry-After` honoured (a longer one is clamped to this).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            retries: 3,
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// The retry timing of an `[alerts]` section.
    pub fn from_section(a: &tether_config::AlertsSection) -> RetryPolicy {
        RetryPolicy {
            retries: a.retries,
            initial: Duration::from_millis(a.backoff_initial_ms),
            max: Duration::from_millis(a.backoff_max_ms),
            max_retry_after: Duration::from_secs(a.max_retry_after_secs),
        }
    }

    /// The delay before retry number `retry` (1 = the first retry), with `jitter` in `[0, 1)`:
    /// half the exponential delay plus a random part of the other half ("equal jitter"), so
    /// retries from many alerts spread out but never come sooner than half the backoff.
    /// A sink's `retry_after` replaces the computed delay (clamped to `max_retry_after`).
    pub fn delay(&self, retry: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let exp = 2u32.saturating_pow(retry.saturating_sub(1).min(20));
        let base = self.initial.saturating_mul(exp).min(self.max);
        let half = base / 2;
        half + half.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// A sink's failed delivery, classified from its error text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The text, for logs and dead letters.
    pub message: String,
    /// `retry-after=SECS` found in the text (the sink saw a 429/503 `Retry-After`).
    pub retry_after: Option<Duration>,
    /// The text starts with `permanent:`: the receiver refused this item for good.
    pub permanent: bool,
}

impl Failure {
    /// Classifies a sink's error text: `retry-after=SECS` anywhere sets [`Failure::retry_after`];
    /// a leading `permanent:` sets [`Failure::permanent`].
    pub fn parse(message: &str) -> Failure {
        let retry_after = message
            .split(|c: char| c.is_whitespace() || c == ',' || c == ';' || c == '(' || c == ')')
            .find_map(|w| w.strip_prefix("retry-after="))
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        Failure {
            message: message.to_owned(),
            retry_after,
            permanent: message.trim_start().starts_with("permanent:"),
        }
    }
}

/// A random number in `[0, 1)` for jitter (from the OS; 0.5 if that fails).
pub(crate) fn jitter() -> f64 {
    let mut b = [0u8; 4];
    match getrandom::fill(&mut b) {
        Ok(()) => f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_within_bounds_and_caps() {
        let p = RetryPolicy {
            retries: 3,
            initial: Duration::from_millis(100),
            max: Duration::from_millis(350),
            max_retry_after: Duration::from_secs(2),
        };
        assert_eq!(p.delay(1, 0.0, None), Duration::from_millis(50));
        assert_eq!(p.delay(1, 1.0, None), Duration::from_millis(100));
        assert_eq!(p.delay(2, 0.0, None), Duration::from_millis(100));
        assert_eq!(
            p.delay(3, 0.5, None),
            Duration::from_millis(175) + Duration::from_micros(87_500)
        );
        assert_eq!(p.delay(30, 1.0, None), Duration::from_millis(350));
        assert_eq!(
            p.delay(1, 0.3, Some(Duration::from_secs(1))),
            Duration::from_secs(1)
        );
        assert_eq!(
            p.delay(1, 0.3, Some(Duration::from_secs(60))),
            Duration::from_secs(2)
        );
        for _ in 0..100 {
            let j = jitter();
            assert!((0.0..1.0).contains(&j));
        }
    }

    #[test]
    fn failure_text_is_classified() {
        let f = Failure::parse("http 429 Too Many Requests retry-after=7");
        assert_eq!(f.retry_after, Some(Duration::from_secs(7)));
        assert!(!f.permanent);
        let f = Failure::parse("permanent: http 400 (retry-after=x)");
        assert_eq!(f.retry_after, None);
        assert!(f.permanent);
        assert_eq!(Failure::parse("connection refused").retry_after, None);
    }
}
