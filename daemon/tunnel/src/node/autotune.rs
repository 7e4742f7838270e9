//! Stream buffer autotuning: the policy, pure and clock-injected (the stack applies it).
//!
//! A TCP stream can have at most one window in flight per round trip, so a fixed buffer caps its
//! rate at `buffer / RTT` (256 KiB at 50 ms RTT: ~40 Mbit/s). As Linux does for its receive
//! buffers (`tcp_rcv_space_adjust`, "dynamic right-sizing"), each direction of each stream
//! measures the bytes it moved (received bytes the application read, or sent bytes the peer
//! acknowledged) over one round trip, and grows its buffer to twice the most it ever moved in one
//! round trip: the window then stays one bandwidth-delay product ahead of what the path delivers,
//! and a stream that is limited by the application or the path does not grow.
//!
//! Round trips are measured by the stack (the minimum of the samples it gets, see [`MinRtt`]):
//! using the minimum keeps queueing delay out of the measurement, so a buffer that fills a
//! bottleneck queue does not inflate its own target. The minimum is kept while the stream is
//! busy (a standing queue would otherwise become the new minimum once an old sample expired, and
//! the buffers would ratchet up) and forgotten when it goes idle, which is also when a changed
//! path gets measured afresh. A path that gets longer in the middle of a transfer is thus
//! measured with the old, shorter round trip until the next idle period: its buffers are sized
//! for the old RTT (the growth factor's headroom absorbs up to that factor).
//!
//! Bounds: every buffer lives between `floor` (its size at creation) and `max`; the growth above
//! the floors of all streams of a node shares one budget ([`grant`]); a direction that moved
//! nothing for [`IDLE_AFTER`] shrinks back to the floor.

use std::time::{Duration, Instant};

/// A direction that moved no bytes for this long shrinks back to its floor.
pub const IDLE_AFTER: Duration = Duration::from_secs(2);
/// A receive buffer is sized to twice the most bytes read in one round trip (as Linux does): the
/// window stays ahead of a sender that is still speeding up.
pub const RX_GROWTH: Growth = Growth { num: 2, den: 1 };
/// A send buffer (which bounds the bytes in flight) is sized to 1.5 times the most bytes
/// acknowledged in one round trip: enough to keep a full path busy while the window grows,
/// without queueing a whole extra bandwidth-delay product at the bottleneck (smoltcp recovers
/// from a queue overflow by resending everything after the loss, so overflowing one costs
/// dearly; measured in tests/tunnel/wan.rs).
pub const TX_GROWTH: Growth = Growth { num: 3, den: 2 };
/// Buffer sizes are multiples of this.
const GRANULE: usize = 4096;

/// A buffer's size as a multiple (`num / den`) of the most bytes moved in one round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Growth {
    /// Numerator.
    pub num: u64,
    /// Denominator (not zero).
    pub den: u64,
}

/// The minimum of a stream's round-trip samples since it was last idle.
#[derive(Debug, Clone, Copy, Default)]
pub struct MinRtt {
    best: Option<Duration>,
}

impl MinRtt {
    /// Records a sample (zero samples are ignored).
    pub fn sample(&mut self, rtt: Duration) {
        if !rtt.is_zero() && self.best.is_none_or(|b| rtt < b) {
            self.best = Some(rtt);
        }
    }

    /// Forgets the samples (the stream went idle; the path may change before it resumes).
    pub fn reset(&mut self) {
        self.best = None;
    }

    /// The current minimum, if any sample was taken.
    pub fn get(&self) -> Option<Duration> {
        self.best
    }
}

/// What a [`Tuner`] wants done with its buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Keep the current size.
    Keep,
    /// Grow to this size (the stack grants what the budget allows).
    Grow(usize),
    /// Idle: shrink back to the floor.
    Shrink(usize),
}

/// The autotuning state of one direction (receive or send) of one stream.
#[derive(Debug, Clone)]
pub struct Tuner {
    floor: usize,
    max: usize,
    growth: Growth,
    /// The buffer's current capacity (the stack reports what it applied).
    cap: usize,
    /// The capacity wanted (asked for until granted).
    target: usize,
    /// The most bytes moved in one round trip so far (Linux's `rcvq_space.space`).
    space: u64,
    /// Start of the current measuring interval, and the moved total then.
    mark: (Instant, u64),
    /// Last time the moved total increased, and the total then.
    last_move: (Instant, u64),
}

impl Tuner {
    /// A tuner for a buffer created at `floor` bytes that may grow to `max`, sized `growth`
    /// times what it moves per round trip, at `now`.
    pub fn new(floor: usize, max: usize, growth: Growth, now: Instant) -> Self {
        Tuner {
            floor,
            max: max.max(floor),
            growth,
            cap: floor,
            target: floor,
            space: 0,
            mark: (now, 0),
            last_move: (now, 0),
        }
    }

    /// The capacity the tuner believes the buffer has.
    #[cfg(test)]
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Idle past [`IDLE_AFTER`] at `now` with its buffer at the floor and nothing wanted: until
    /// the total moves, [`Tuner::observe`] would only restart the measuring interval.
    pub fn settled(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_move.0) >= IDLE_AFTER
            && self.cap <= self.floor
            && self.target <= self.floor
            && self.space == 0
    }

    /// Restarts the measuring interval at `at` (what an idle [`Tuner::observe`] at `at` did),
    /// for a stream whose idle passes were skipped while it was [`Tuner::settled`].
    pub fn restart_interval(&mut self, at: Instant) {
        self.mark.0 = at;
    }

    /// The stack applied `cap` (all or part of a [`Want`]).
    pub fn applied(&mut self, cap: usize) {
        self.cap = cap;
    }

    /// Observes the direction's monotonic moved-bytes total at `now`, with the stream's round
    /// trip if one is known. `drained`: nothing is queued in this buffer (a shrink would lose
    /// nothing and interrupt nothing). A growth that was not (fully) applied is asked for again
    /// on every call until it is.
    pub fn observe(
        &mut self,
        now: Instant,
        total: u64,
        rtt: Option<Duration>,
        drained: bool,
    ) -> Want {
        if total > self.last_move.1 {
            self.last_move = (now, total);
        }
        if now.saturating_duration_since(self.last_move.0) >= IDLE_AFTER {
            // Idle: start measuring afresh when traffic resumes.
            self.space = 0;
            self.mark = (now, total);
            self.target = self.floor;
            if drained && self.cap > self.floor {
                return Want::Shrink(self.floor);
            }
            return Want::Keep;
        }
        if let Some(rtt) = rtt
            && now.saturating_duration_since(self.mark.0) >= rtt
        {
            let moved = total.saturating_sub(self.mark.1);
            self.mark = (now, total);
            if moved > self.space {
                self.space = moved;
                let want =
                    usize::try_from(moved.saturating_mul(self.growth.num) / self.growth.den.max(1))
                        .unwrap_or(usize::MAX)
                        .div_ceil(GRANULE)
                        .saturating_mul(GRANULE)
                        .clamp(self.floor, self.max);
                self.target = self.target.max(want);
            }
        }
        if self.target > self.cap {
            Want::Grow(self.target)
        } else {
            Want::Keep
        }
    }
}

/// How much of a growth from `cap` to `want` the node's budget allows, as the new capacity:
/// `used` bytes of `budget` are already held above the floors. Returns `cap` when nothing can
/// be granted; partial grants are rounded down to the granule.
pub fn grant(cap: usize, want: usize, used: usize, budget: usize) -> usize {
    if want <= cap {
        return cap;
    }
    let room = budget.saturating_sub(used);
    let extra = (want - cap).min(room) / GRANULE * GRANULE;
    cap + extra
}

/// The window scale (RFC 7323 shift) a socket must offer so that a receive buffer of `max` bytes
/// can be advertised in full (less than one granule is lost to rounding).
pub fn window_shift(max: usize) -> u8 {
    let bits = usize::BITS - max.saturating_sub(1).leading_zeros();
    (bits.saturating_sub(16)).min(14) as u8
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const K: usize = 1024;
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn grows_to_twice_what_one_round_trip_moved_then_holds() {
        let t0 = Instant::now();
        let mut t = Tuner::new(64 * K, 8192 * K, RX_GROWTH, t0);
        let rtt = Some(50 * MS);
        // Less than one round trip: nothing decided yet.
        assert_eq!(t.observe(t0 + 10 * MS, 30_000, rtt, false), Want::Keep);
        // One round trip moved the whole 64 KiB window: grow to 128 KiB.
        assert_eq!(
            t.observe(t0 + 50 * MS, 64 * K as u64, rtt, false),
            Want::Grow(128 * K)
        );
        t.applied(128 * K);
        // The next round trip moved 128 KiB: 256 KiB.
        let total = 192 * K as u64;
        assert_eq!(
            t.observe(t0 + 100 * MS, total, rtt, false),
            Want::Grow(256 * K)
        );
        t.applied(256 * K);
        // The path is full at 200 KiB per round trip: no growth past 2 × the best round trip.
        let mut total = total;
        let mut now = t0 + 100 * MS;
        let mut wants = Vec::new();
        for _ in 0..10 {
            total += 200 * K as u64;
            now += 50 * MS;
            wants.push(t.observe(now, total, rtt, false));
            if let Some(Want::Grow(c)) = wants.last() {
                t.applied(*c);
            }
        }
        assert_eq!(wants[0], Want::Grow(400 * K));
        assert!(wants[1..].iter().all(|w| *w == Want::Keep), "{wants:?}");
        assert_eq!(t.capacity(), 400 * K);
    }

    #[test]
    fn the_send_side_grows_to_one_and_a_half_times_what_was_acknowledged() {
        let t0 = Instant::now();
        let mut t = Tuner::new(64 * K, 8192 * K, TX_GROWTH, t0);
        assert_eq!(
            t.observe(t0 + 50 * MS, 64 * K as u64, Some(50 * MS), false),
            Want::Grow(96 * K)
        );
    }

    #[test]
    fn an_application_limited_stream_does_not_grow() {
        let t0 = Instant::now();
        let mut t = Tuner::new(64 * K, 8192 * K, RX_GROWTH, t0);
        let mut total = 0u64;
        for i in 1..=100u32 {
            total += 10 * K as u64; // 10 KiB per round trip: far below the window
            assert_eq!(
                t.observe(t0 + 50 * MS * i, total, Some(50 * MS), false),
                Want::Keep
            );
        }
        assert_eq!(t.capacity(), 64 * K);
    }

    #[test]
    fn a_growth_not_granted_is_asked_for_again() {
        let t0 = Instant::now();
        let mut t = Tuner::new(64 * K, 8192 * K, RX_GROWTH, t0);
        let rtt = Some(20 * MS);
        assert_eq!(
            t.observe(t0 + 20 * MS, 64 * K as u64, rtt, false),
            Want::Grow(128 * K)
        );
        // Not applied (budget, or out-of-order data held): still wanted.
        assert_eq!(
            t.observe(t0 + 25 * MS, 70 * K as u64, rtt, false),
            Want::Grow(128 * K)
        );
        t.applied(96 * K); // a partial grant
        assert_eq!(
            t.observe(t0 + 30 * MS, 80 * K as u64, rtt, false),
            Want::Grow(128 * K)
        );
        t.applied(128 * K);
        assert_eq!(
            t.observe(t0 + 35 * MS, 90 * K as u64, rtt, false),
            Want::Keep
        );
    }

    #[test]
    fn growth_is_capped_at_max() {
        let t0 = Instant::now();
        let mut t = Tuner::new(64 * K, 1024 * K, RX_GROWTH, t0);
        assert_eq!(
            t.observe(t0 + 20 * MS, 100 * 1024 * K as u64, Some(20 * MS), false),
            Want::Grow(1024 * K)
        );
    }

    #[test]
    fn no_round_trip_known_means_no_growth() {
        let t0 = Instant::now();
        let mut t = Tuner::new(64 * K, 8192 * K, RX_GROWTH, t0);
        assert_eq!(t.observe(t0 + 500 * MS, 10 << 20, None, false), Want::Keep);
    }

    #[test]
    fn idle_shrinks_to_the_floor_only_when_drained_and_measures_afresh() {
        let t0 = Instant::now();
        let mut t = Tuner::new(64 * K, 8192 * K, RX_GROWTH, t0);
        let rtt = Some(10 * MS);
        assert_eq!(
            t.observe(t0 + 10 * MS, 1 << 20, rtt, false),
            Want::Grow(2048 * K)
        );
        t.applied(2048 * K);
        // Quiet, but data still queued: keep.
        assert_eq!(t.observe(t0 + 3000 * MS, 1 << 20, rtt, false), Want::Keep);
        // Quiet and drained: shrink.
        assert_eq!(
            t.observe(t0 + 3100 * MS, 1 << 20, rtt, true),
            Want::Shrink(64 * K)
        );
        t.applied(64 * K);
        // Traffic resumes: the old best round trip no longer holds growth back.
        assert_eq!(
            t.observe(t0 + 3105 * MS, (1 << 20) + 32 * K as u64, rtt, false),
            Want::Keep
        );
        assert_eq!(
            t.observe(t0 + 3110 * MS, (1 << 20) + 64 * K as u64, rtt, false),
            Want::Grow(128 * K)
        );
    }

    #[test]
    fn the_budget_limits_growth_and_rounds_partial_grants() {
        assert_eq!(grant(64 * K, 1024 * K, 0, 1 << 30), 1024 * K);
        assert_eq!(grant(64 * K, 1024 * K, 0, 100 * K + 5), 164 * K);
        assert_eq!(grant(64 * K, 1024 * K, 10 * K, 10 * K), 64 * K);
        assert_eq!(grant(64 * K, 1024 * K, 20 * K, 10 * K), 64 * K);
        assert_eq!(grant(512 * K, 256 * K, 0, 1 << 30), 512 * K);
    }

    #[test]
    fn min_rtt_keeps_the_smallest_sample_until_reset() {
        let mut m = MinRtt::default();
        assert_eq!(m.get(), None);
        m.sample(Duration::ZERO);
        assert_eq!(m.get(), None);
        m.sample(50 * MS);
        m.sample(80 * MS); // queueing: ignored
        m.sample(45 * MS);
        assert_eq!(m.get(), Some(45 * MS));
        m.reset(); // idle; the path changed
        m.sample(100 * MS);
        assert_eq!(m.get(), Some(100 * MS));
    }

    #[test]
    fn window_shift_covers_max() {
        assert_eq!(window_shift(64 * K), 0);
        assert_eq!(window_shift(256 * K), 2);
        assert_eq!(window_shift(8192 * K), 7);
        assert!(65535usize << window_shift(8192 * K) >= 8192 * K - 128);
        assert_eq!(window_shift(1 << 30), 14);
        assert_eq!(window_shift(usize::MAX), 14);
    }
}
