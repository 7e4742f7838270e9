//! Bounded records of refused enrollments, sans-IO.
//!
//! A refused enrollment is unauthenticated input: whoever reaches the listener decides how many
//! there are and what their error texts quote. [`Rejections`] turns them into audit records whose
//! size and rate do not depend on that input:
//!
//! - a record holds a fixed `code` ([`crate::EnrollError::code`]), the source address and at most
//!   [`EXCERPT_CHARS`] characters of the message, escaped (no control characters, no quotes);
//! - per source address and [`WINDOW`], the first refusal is recorded at once and the rest are
//!   only counted (per code), then written as ONE summary record when the window ends;
//! - at most [`MAX_SOURCES`] sources are tracked per window; refusals from further sources are
//!   counted in one summary for "other sources".
//!
//! So one source causes at most two records per window (~1.4 KiB per minute with the chain
//! fields, about 25 bytes per second), and all sources together at most
//! `2 × MAX_SOURCES + 1` records per window, whatever they send.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// How long refusals from one source are aggregated into one summary.
pub const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked per window; more are summarised together.
pub const MAX_SOURCES: usize = 1024;
/// Characters of the error message kept in a record (after escaping, at most 4× as many bytes
/// are written, and never more than [`MAX_EXCERPT_BYTES`]).
pub const EXCERPT_CHARS: usize = 80;
/// Bytes of the escaped excerpt at most.
pub const MAX_EXCERPT_BYTES: usize = 160;

/// One audit record to write as `enroll.rejected`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// The first refusal from a source in a window.
    First {
        /// Where it came from (`None`: unknown, or "other sources").
        peer: Option<IpAddr>,
        /// The error's fixed code.
        code: &'static str,
        /// A short escaped excerpt of the message.
        excerpt: String,
    },
    /// The refusals after the first one from a source in a window.
    Repeated {
        /// Where they came from (`None`: the sources over [`MAX_SOURCES`]).
        peer: Option<IpAddr>,
        /// How many, by code.
        codes: BTreeMap<&'static str, u64>,
        /// The window's length, seconds.
        window_secs: u64,
    },
}

impl Rejected {
    /// The record's `data` fields as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Rejected::First {
                peer,
                code,
                excerpt,
            } => serde_json::json!({
                "code": code,
                "peer": peer.map(|p| p.to_string()),
                "message": excerpt,
            }),
            Rejected::Repeated {
                peer,
                codes,
                window_secs,
            } => serde_json::json!({
                "peer": peer.map(|p| p.to_string()),
                "repeated": codes.values().sum::<u64>(),
                "codes": codes,
                "window_secs": window_secs,
            }),
        }
    }
}

/// At most [`EXCERPT_CHARS`] characters of `message`, escaped (`\n`, `\u{..}`, `\"`), cut to
/// [`MAX_EXCERPT_BYTES`] bytes, with `…` when something was left out.
pub fn excerpt(message: &str) -> String {
    let mut out = String::new();
    let mut cut = false;
    for (i, c) in message.chars().enumerate() {
        if i == EXCERPT_CHARS {
            cut = true;
            break;
        }
        let esc: String = if c.is_control() || c == '"' || c == '\\' || c == '\u{2028}' {
            c.escape_default().collect()
        } else {
            c.to_string()
        };
        if out.len() + esc.len() > MAX_EXCERPT_BYTES {
            cut = true;
            break;
        }
        out.push_str(&esc);
    }
    if cut {
        out.push('…');
    }
    out
}

#[derive(Default)]
struct Bucket {
    codes: BTreeMap<&'static str, u64>,
}

/// Aggregates refusals per source (see the module docs). Feed it with [`Rejections::record`];
/// call [`Rejections::flush`] regularly (every few seconds) to get the summaries of windows
/// that ended.
pub struct Rejections {
    window: Duration,
    max_sources: usize,
    started: Option<Instant>,
    sources: HashMap<Option<IpAddr>, Bucket>,
    others: Bucket,
}

impl Default for Rejections {
    fn default() -> Self {
        Rejections::new(WINDOW, MAX_SOURCES)
    }
}

impl Rejections {
    /// With a custom window and source cap (tests).
    pub fn new(window: Duration, max_sources: usize) -> Rejections {
        Rejections {
            window,
            max_sources,
            started: None,
            sources: HashMap::new(),
            others: Bucket::default(),
        }
    }

    /// One refusal at `now`: the record to write at once (the first from this source in the
    /// window) and any summaries of a window that ended before `now`.
    pub fn record(
        &mut self,
        peer: Option<IpAddr>,
        code: &'static str,
        message: &str,
        now: Instant,
    ) -> Vec<Rejected> {
        let mut out = self.flush(now);
        if self.started.is_none() {
            self.started = Some(now);
        }
        if let Some(b) = self.sources.get_mut(&peer) {
            *b.codes.entry(code).or_default() += 1;
        } else if self.sources.len() < self.max_sources {
            self.sources.insert(peer, Bucket::default());
            out.push(Rejected::First {
                peer,
                code,
                excerpt: excerpt(message),
            });
        } else {
            *self.others.codes.entry(code).or_default() += 1;
        }
        out
    }

    /// The summaries of the window if it ended by `now` (and a fresh window).
    pub fn flush(&mut self, now: Instant) -> Vec<Rejected> {
        match self.started {
            Some(s) if now.saturating_duration_since(s) >= self.window => {}
            _ => return Vec::new(),
        }
        self.started = None;
        let window_secs = self.window.as_secs();
        let mut out: Vec<Rejected> = self
            .sources
            .drain()
            .filter(|(_, b)| !b.codes.is_empty())
            .map(|(peer, b)| Rejected::Repeated {
                peer,
                codes: b.codes,
                window_secs,
            })
            .collect();
        let others = std::mem::take(&mut self.others);
        if !others.codes.is_empty() {
            out.push(Rejected::Repeated {
                peer: None,
                codes: others.codes,
                window_secs,
            });
        }
        out
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn excerpts_are_short_and_escaped() {
        let huge = format!("unknown field `{}\n\"x\u{1b}[2J`", "A".repeat(60 * 1024));
        let e = excerpt(&huge);
        assert!(e.len() <= MAX_EXCERPT_BYTES + 3, "{}", e.len());
        assert!(e.ends_with('…'));
        let e = excerpt("a\nb\"c\\d\u{1b}e\u{85}f");
        assert!(!e.chars().any(char::is_control), "{e:?}");
        assert_eq!(e, "a\\nb\\\"c\\\\d\\u{1b}e\\u{85}f");
        // all control characters: the byte cap holds
        let e = excerpt(&"\u{1}".repeat(1000));
        assert!(e.len() <= MAX_EXCERPT_BYTES + 3);
    }

    /// 10,000 refusals with 60 KiB messages from one source over 10 minutes: two records per
    /// window at most, each small.
    #[test]
    fn one_source_gets_at_most_two_small_records_per_window() {
        let mut r = Rejections::default();
        let t0 = Instant::now();
        let msg = format!("unknown field `{}`", "x".repeat(60 * 1024));
        let peer: Option<IpAddr> = Some("192.0.2.7".parse().unwrap());
        let mut records = Vec::new();
        for i in 0..10_000u64 {
            let now = t0 + Duration::from_millis(i * 60);
            records.extend(r.record(peer, "malformed", &msg, now));
        }
        records.extend(r.flush(t0 + Duration::from_secs(3600)));
        let windows = 10_000 * 60 / 1000 / 60 + 1; // 10 windows (+ the partial last one)
        assert!(records.len() <= 2 * windows as usize, "{}", records.len());
        let bytes: usize = records.iter().map(|r| r.to_json().to_string().len()).sum();
        assert!(bytes <= records.len() * 400, "{bytes}");
        let total: u64 = records
            .iter()
            .map(|r| match r {
                Rejected::First { .. } => 1,
                Rejected::Repeated { codes, .. } => codes.values().sum(),
            })
            .sum();
        assert_eq!(total, 10_000, "every refusal is counted");
    }

    #[test]
    fn sources_over_the_cap_share_one_summary() {
        let mut r = Rejections::new(Duration::from_secs(60), 4);
        let t0 = Instant::now();
        let mut first = 0;
        for i in 0..100u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            first += r.record(Some(ip), "tampered", "x", t0).len();
        }
        assert_eq!(first, 4);
        let summaries = r.flush(t0 + Duration::from_secs(60));
        assert_eq!(summaries.len(), 1, "{summaries:?}");
        assert!(
            matches!(&summaries[0], Rejected::Repeated { peer: None, codes, .. } if codes["tampered"] == 96)
        );
    }
}
