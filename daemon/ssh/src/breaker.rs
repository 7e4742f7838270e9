//! A per-target circuit breaker, sans-IO: it is told the time.
//!
//! Closed: every attempt goes through; a success resets the count. After
//! [`BreakerConfig::threshold`] consecutive failures it **opens**: attempts are refused at once
//! for [`BreakerConfig::cool_down`]. Then it is **half-open**: one probe goes through; its
//! success closes the breaker, its failure opens it again for another cool-down.

use std::time::{Duration, Instant};

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (default 5).
    pub threshold: u32,
    /// How long it stays open before a probe is allowed (default 30 s).
    pub cool_down: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            threshold: 5,
            cool_down: Duration::from_secs(30),
        }
    }
}

/// The breaker's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Attempts go through.
    Closed,
    /// Attempts are refused until `until`.
    Open {
        /// When a probe will be allowed.
        until: Instant,
    },
    /// One probe is (or may be) in flight.
    HalfOpen {
        /// Whether the probe has been handed out.
        probing: bool,
    },
}

/// Refusal of an attempt while the breaker is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Time until a probe is allowed.
    pub retry_in: Duration,
    /// Consecutive failures so far.
    pub failures: u32,
}

/// One target's breaker.
#[derive(Debug, Clone)]
pub struct Breaker {
    config: BreakerConfig,
    failures: u32,
    state: State,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Breaker {
            config,
            failures: 0,
            state: State::Closed,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// May an attempt start at `now`? In half-open state only the first caller gets through.
    pub fn attempt(&mut self, now: Instant) -> Result<(), Refused> {
        match self.state {
            State::Closed => Ok(()),
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen { probing: true };
                Ok(())
            }
            State::Open { until } => Err(Refused {
                retry_in: until - now,
                failures: self.failures,
            }),
            State::HalfOpen { probing: false } => {
                self.state = State::HalfOpen { probing: true };
                Ok(())
            }
            State::HalfOpen { probing: true } => Err(Refused {
                retry_in: Duration::ZERO,
                failures: self.failures,
            }),
        }
    }

    /// The attempt succeeded: the breaker closes.
    pub fn success(&mut self) {
        self.failures = 0;
        self.state = State::Closed;
    }

    /// The attempt failed at `now`. Returns `true` when this failure opened the breaker
    /// (raise `circuit_breaker_open` then, once per opening).
    pub fn failure(&mut self, now: Instant) -> bool {
        self.failures = self.failures.saturating_add(1);
        let open = |b: &mut Breaker| {
            b.state = State::Open {
                until: now + b.config.cool_down,
            }
        };
        match self.state {
            State::HalfOpen { .. } => {
                open(self);
                false
            }
            State::Closed if self.failures >= self.config.threshold => {
                open(self);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_five_failures_probes_after_thirty_seconds() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig::default());
        for i in 0..4 {
            assert!(b.attempt(t0).is_ok());
            assert!(!b.failure(t0), "opened after {} failures", i + 1);
        }
        // A success in between resets the count.
        b.success();
        for _ in 0..4 {
            b.attempt(t0).ok();
            b.failure(t0);
        }
        assert_eq!(b.state(), State::Closed);
        assert!(b.attempt(t0).is_ok());
        assert!(b.failure(t0), "the fifth consecutive failure opens it");
        let refused = b.attempt(t0 + Duration::from_secs(10)).expect_err("open");
        assert_eq!(refused.retry_in, Duration::from_secs(20));
        assert_eq!(refused.failures, 5);
        // Half-open after the cool-down: exactly one probe.
        let later = t0 + Duration::from_secs(30);
        assert!(b.attempt(later).is_ok());
        assert!(b.attempt(later).is_err(), "only one probe at a time");
        // The probe fails: open again, no second alert.
        assert!(!b.failure(later));
        assert!(b.attempt(later + Duration::from_secs(29)).is_err());
        assert!(b.attempt(later + Duration::from_secs(30)).is_ok());
        b.success();
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.failures(), 0);
        assert!(b.attempt(later).is_ok());
    }
}
