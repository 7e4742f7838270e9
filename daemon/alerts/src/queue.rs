//! [`SinkQueue`]: one sink's bounded queue and its retry state machine (sans-IO).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::backoff::{Failure, RetryPolicy};

/// Why an item was dead-lettered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// The sink's queue was full when the item arrived (the sink is slower than the alerts).
    QueueFull,
    /// Every attempt failed (the first and all retries).
    RetriesExhausted,
    /// The sink said retrying cannot help (`permanent:`).
    Rejected,
    /// The daemon stopped with the item still queued.
    Shutdown,
}

impl DropReason {
    /// The metric label and audit value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::Rejected => "rejected",
            DropReason::Shutdown => "shutdown",
        }
    }

    /// Every reason, for pre-registering metric labels.
    pub const ALL: [DropReason; 4] = [
        DropReason::QueueFull,
        DropReason::RetriesExhausted,
        DropReason::Rejected,
        DropReason::Shutdown,
    ];
}

/// What the driver should do next for this sink.
#[derive(Debug, Clone, PartialEq)]
pub enum Next<T> {
    /// Deliver this item now, then report with [`SinkQueue::complete`].
    Deliver(T),
    /// Nothing to do before this instant (a retry is waiting).
    WaitUntil(Instant),
    /// Nothing queued, or a delivery is in flight: wait for news.
    Idle,
}

/// The result of one attempt, as reported back by [`SinkQueue::complete`].
#[derive(Debug, Clone, PartialEq)]
pub enum Completed<T> {
    /// Delivered after this many attempts.
    Delivered {
        /// The item.
        item: T,
        /// Attempts made (1 = first try).
        attempts: u32,
    },
    /// Failed; will be retried at `at`.
    Retrying {
        /// The item.
        item: T,
        /// Attempts made so far.
        attempts: u32,
        /// When the next attempt is due.
        at: Instant,
        /// The failure.
        error: String,
    },
    /// Failed for good: dead-letter it.
    Dropped {
        /// The item.
        item: T,
        /// Attempts made.
        attempts: u32,
        /// Why.
        reason: DropReason,
        /// The last failure.
        error: String,
    },
}

struct Current<T> {
    item: T,
    attempts: u32,
    due: Instant,
    in_flight: bool,
}

/// A bounded FIFO of items for one sink, one delivery in flight at a time, retried by
/// [`RetryPolicy`]. Order is kept: the next item waits until the current one is delivered or
/// dropped.
pub struct SinkQueue<T> {
    capacity: usize,
    policy: RetryPolicy,
    waiting: VecDeque<T>,
    current: Option<Current<T>>,
}

impl<T: Clone> SinkQueue<T> {
    /// A queue holding at most `capacity` items (the one being delivered included).
    pub fn new(capacity: usize, policy: RetryPolicy) -> Self {
        SinkQueue {
            capacity: capacity.max(1),
            policy,
            waiting: VecDeque::new(),
            current: None,
        }
    }

    /// Applies new limits (a live reload): `capacity` to the next pushes (what is queued stays),
    /// `policy` to the next retry delays.
    pub fn set_limits(&mut self, capacity: usize, policy: RetryPolicy) {
        self.capacity = capacity.max(1);
        self.policy = policy;
    }

    /// Items queued, the one being delivered included.
    pub fn len(&self) -> usize {
        self.waiting.len() + usize::from(self.current.is_some())
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Queues `item`; a full queue hands it back (dead-letter it as [`DropReason::QueueFull`]).
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.len() >= self.capacity {
            return Err(item);
        }
        self.waiting.push_back(item);
        Ok(())
    }

    /// What to do at `now`.
    pub fn poll(&mut self, now: Instant) -> Next<T> {
        if self.current.is_none() {
            match self.waiting.pop_front() {
                Some(item) => {
                    self.current = Some(Current {
                        item,
                        attempts: 0,
                        due: now,
                        in_flight: false,
                    })
                }
                None => return Next::Idle,
            }
        }
        let Some(cur) = self.current.as_mut() else {
            return Next::Idle;
        };
        if cur.in_flight {
            Next::Idle
        } else if now >= cur.due {
            cur.in_flight = true;
            cur.attempts += 1;
            Next::Deliver(cur.item.clone())
        } else {
            Next::WaitUntil(cur.due)
        }
    }

    /// Reports the in-flight attempt's result at `now`; `jitter` in `[0, 1)` spreads the retry.
    /// `None` when nothing was in flight.
    pub fn complete(
        &mut self,
        result: Result<(), &str>,
        now: Instant,
        jitter: f64,
    ) -> Option<Completed<T>> {
        let cur = self.current.as_mut().filter(|c| c.in_flight)?;
        cur.in_flight = false;
        let attempts = cur.attempts;
        let failure = match result {
            Ok(()) => {
                let cur = self.current.take()?;
                return Some(Completed::Delivered {
                    item: cur.item,
                    attempts,
                });
            }
            Err(text) => Failure::parse(text),
        };
        let reason = if failure.permanent {
            Some(DropReason::Rejected)
        } else if attempts > self.policy.retries {
            Some(DropReason::RetriesExhausted)
        } else {
            None
        };
        if let Some(reason) = reason {
            let cur = self.current.take()?;
            return Some(Completed::Dropped {
                item: cur.item,
                attempts,
                reason,
                error: failure.message,
            });
        }
        let delay: Duration = self.policy.delay(attempts, jitter, failure.retry_after);
        cur.due = now + delay;
        Some(Completed::Retrying {
            item: cur.item.clone(),
            attempts,
            at: cur.due,
            error: failure.message,
        })
    }

    /// Empties the queue (at shutdown), handing back every item not yet delivered.
    pub fn drain(&mut self) -> Vec<T> {
        let mut out: Vec<T> = self.current.take().map(|c| c.item).into_iter().collect();
        out.extend(self.waiting.drain(..));
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            retries: 3,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }

    #[test]
    fn three_retries_with_growing_backoff_then_dropped() {
        let t0 = Instant::now();
        let mut q = SinkQueue::new(4, policy());
        q.push("a").unwrap();
        let mut now = t0;
        let mut delays = Vec::new();
        for attempt in 1..=4 {
            assert_eq!(q.poll(now), Next::Deliver("a"));
            assert_eq!(q.poll(now), Next::Idle, "one delivery in flight at a time");
            match q.complete(Err("http 500"), now, 0.0) {
                Some(Completed::Retrying { at, attempts, .. }) => {
                    assert_eq!(attempts, attempt);
                    assert_eq!(q.poll(now), Next::WaitUntil(at));
                    delays.push(at - now);
                    now = at;
                }
                Some(Completed::Dropped {
                    reason,
                    attempts,
                    error,
                    ..
                }) => {
                    assert_eq!(attempt, 4);
                    assert_eq!(attempts, 4);
                    assert_eq!(reason, DropReason::RetriesExhausted);
                    assert_eq!(error, "http 500");
                }
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            delays,
            [50, 100, 200].map(Duration::from_millis).to_vec(),
            "exponential, equal jitter at 0"
        );
        assert!(q.is_empty());
    }

    #[test]
    fn retry_after_is_honoured_and_order_is_kept() {
        let t0 = Instant::now();
        let mut q = SinkQueue::new(4, policy());
        q.push(1).unwrap();
        q.push(2).unwrap();
        assert_eq!(q.poll(t0), Next::Deliver(1));
        let Some(Completed::Retrying { at, .. }) =
            q.complete(Err("http 429 retry-after=3"), t0, 0.9)
        else {
            panic!()
        };
        assert_eq!(at - t0, Duration::from_secs(3));
        assert_eq!(
            q.poll(t0 + Duration::from_secs(1)),
            Next::WaitUntil(at),
            "2 waits behind 1"
        );
        assert_eq!(q.poll(at), Next::Deliver(1));
        assert!(matches!(
            q.complete(Ok(()), at, 0.0),
            Some(Completed::Delivered {
                item: 1,
                attempts: 2
            })
        ));
        assert_eq!(q.poll(at), Next::Deliver(2));
    }

    #[test]
    fn full_queue_hands_items_back_and_permanent_failures_drop_at_once() {
        let t0 = Instant::now();
        let mut q = SinkQueue::new(2, policy());
        assert!(q.push(1).is_ok());
        assert!(q.push(2).is_ok());
        assert_eq!(q.push(3), Err(3));
        assert_eq!(q.poll(t0), Next::Deliver(1));
        assert!(matches!(
            q.complete(Err("permanent: http 400 bad payload"), t0, 0.0),
            Some(Completed::Dropped {
                item: 1,
                attempts: 1,
                reason: DropReason::Rejected,
                ..
            })
        ));
        assert!(q.push(3).is_ok());
        assert_eq!(q.drain(), vec![2, 3]);
        assert_eq!(q.complete(Ok(()), t0, 0.0), None, "nothing in flight");
    }
}
