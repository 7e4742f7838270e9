//! Where the audit chain gets the time from: [`Clock`], with the system clock and a manual one
//! for tests. Its own module so the writer and the head thread both depend on it, not on each
//! other.

use std::time::Duration;

use time::OffsetDateTime;

/// Where the writer gets the time from. Injectable so tests can cross UTC midnight.
pub trait Clock: Send + Sync + 'static {
    /// The current time (any offset; it is converted to UTC).
    fn now(&self) -> OffsetDateTime;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to; for tests (e.g. crossing UTC midnight).
#[derive(Debug)]
pub struct ManualClock(std::sync::Mutex<OffsetDateTime>);

impl ManualClock {
    /// A clock stopped at `t`.
    pub fn new(t: OffsetDateTime) -> Self {
        ManualClock(std::sync::Mutex::new(t))
    }

    /// Sets the time.
    pub fn set(&self, t: OffsetDateTime) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = t;
    }

    /// Moves the time forward.
    pub fn advance(&self, d: Duration) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *g += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}
