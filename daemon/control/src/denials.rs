//! Keeping what callers control out of the audit log and the daemon log at full size.
//!
//! Denied requests come from callers the daemon does not trust (no role, or too little), so
//! the fields they choose (the request path and method) are cut to a short, escaped excerpt
//! ([`excerpt`]) and denials are rate-limited per uid ([`DenialLimiter`]): after a burst of
//! [`DENIAL_BURST`] records, one uid gets at most [`DENIAL_PER_SEC`] `auth.denied` record (and
//! log line) per second; the denials in between are counted and the next record says how many
//! (`data.suppressed`), so the log stays bounded and nothing is lost from the count.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The most bytes of a caller-controlled field kept in a record or log line (before the
/// `…[+N bytes]` marker).
pub const EXCERPT_BYTES: usize = 256;

/// `auth.denied` records one uid may cause at once.
pub const DENIAL_BURST: u32 = 10;

/// `auth.denied` records per second one uid may cause after the burst.
pub const DENIAL_PER_SEC: u32 = 1;

/// How many uids are tracked at once; beyond it, idle entries are forgotten first.
const MAX_TRACKED: usize = 4096;

/// `s` cut to at most [`EXCERPT_BYTES`] bytes of escaped text: control characters, quotes,
/// backslashes and non-ASCII are escaped (`\u{1b}`, `\"`), so the excerpt is one printable
/// line; a cut is marked `…[+N bytes]` with the number of bytes of `s` left out.
pub fn excerpt(s: &str) -> String {
    let mut out = String::new();
    let mut used = 0;
    for (i, c) in s.char_indices() {
        let escaped: String = if c.is_ascii_graphic() && c != '\\' && c != '"' || c == ' ' {
            c.to_string()
        } else {
            c.escape_default().collect()
        };
        if out.len() + escaped.len() > EXCERPT_BYTES {
            let _ = write!(out, "…[+{} bytes]", s.len() - i);
            return out;
        }
        out.push_str(&escaped);
        used = i + c.len_utf8();
    }
    debug_assert_eq!(used, s.len());
    out
}

/// What to do with one denial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write the record (and the log line); `suppressed` denials of this uid were not
    /// recorded since its previous record.
    Record {
        /// Denials left out since the previous record of this uid.
        suppressed: u64,
    },
    /// Count it only.
    Suppress,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

/// Per-uid token buckets for `auth.denied` records.
#[derive(Debug, Default)]
pub struct DenialLimiter {
    buckets: Mutex<HashMap<u32, Bucket>>,
}

impl DenialLimiter {
    /// Decides whether this denial of `uid` at `now` is recorded.
    pub fn check(&self, uid: u32, now: Instant) -> Verdict {
        let mut map = match self.buckets.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() >= MAX_TRACKED && !map.contains_key(&uid) {
            // Forget uids whose bucket has refilled and that owe no count.
            let full = Duration::from_secs(u64::from(DENIAL_BURST / DENIAL_PER_SEC.max(1)) + 1);
            map.retain(|_, b| b.suppressed > 0 || now.duration_since(b.last) < full);
            if map.len() >= MAX_TRACKED {
                return Verdict::Suppress;
            }
        }
        let b = map.entry(uid).or_insert(Bucket {
            tokens: f64::from(DENIAL_BURST),
            last: now,
            suppressed: 0,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * f64::from(DENIAL_PER_SEC)).min(f64::from(DENIAL_BURST));
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            let suppressed = std::mem::take(&mut b.suppressed);
            Verdict::Record { suppressed }
        } else {
            b.suppressed += 1;
            Verdict::Suppress
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_bounded_escaped_and_say_what_was_cut() {
        let long = "a".repeat(60_000);
        let e = excerpt(&long);
        assert!(e.len() <= EXCERPT_BYTES + 24, "{}", e.len());
        assert!(
            e.ends_with(&format!("…[+{} bytes]", 60_000 - EXCERPT_BYTES)),
            "{e}"
        );
        assert_eq!(excerpt("/v1/status"), "/v1/status");
        let nasty = "/x\n{\"type\":\"forged\"}\u{1b}[2J\u{202e}";
        let e = excerpt(nasty);
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert!(!e.contains('"') || e.contains("\\\""), "{e}");
        assert!(
            e.contains("\\n") && e.contains("\\u{1b}") && e.contains("\\u{202e}"),
            "{e}"
        );
        // A cut never splits an escape.
        let e = excerpt(&"\u{1}".repeat(1000));
        assert!(e.len() <= EXCERPT_BYTES + 24);
        assert!(e.split('…').next().is_some_and(|h| h.ends_with('}')), "{e}");
    }

    #[test]
    fn denials_aggregate_per_uid_after_a_burst() {
        let l = DenialLimiter::default();
        let t0 = Instant::now();
        for _ in 0..DENIAL_BURST {
            assert_eq!(l.check(7, t0), Verdict::Record { suppressed: 0 });
        }
        for _ in 0..500 {
            assert_eq!(l.check(7, t0), Verdict::Suppress);
        }
        // Another uid is not affected.
        assert_eq!(l.check(8, t0), Verdict::Record { suppressed: 0 });
        // A second later one record carries the count of what was left out.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.check(7, t1), Verdict::Record { suppressed: 500 });
        assert_eq!(l.check(7, t1), Verdict::Suppress);
    }
}
