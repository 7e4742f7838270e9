//! Helpers every sink plugin needs, so the first-party sinks (slack, webhook, splunk-hec,
//! syslog) share one implementation of the daemon's delivery contract:
//!
//! * how a failure is reported ([`permanent`], [`retry_after`], [`http_outcome`]): the daemon
//!   retries an `Err` with exponential backoff and jitter, waits `retry-after=SECS` when the
//!   text asks for it, and dead-letters at once an error starting with `permanent:` (an alert
//!   as `alert.dropped`, an audit batch as `audit_sink.rejected`, counted, never acknowledged
//!   as delivered);
//! * batching under a count and a byte limit ([`pack`]);
//! * request signatures ([`signature`]: `sha256=HMAC-SHA256(secret, "timestamp.body")`).
//!
//! Everything here except [`http_outcome`]'s use of a response is pure, so it is unit-tested
//! on the build machine.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The prefix that tells the daemon retrying cannot help.
pub const PERMANENT: &str = "permanent:";

/// An error the daemon must not retry (the receiver refused this for good).
pub fn permanent(why: impl core::fmt::Display) -> String {
    format!("{PERMANENT} {why}")
}

/// An error the daemon retries after `secs` seconds (a receiver's `Retry-After`).
pub fn retry_after(secs: u64, why: impl core::fmt::Display) -> String {
    format!("{why} retry-after={secs}")
}

/// `Retry-After` in seconds, when the value is a number of seconds (HTTP-dates are ignored:
/// the daemon's backoff applies instead).
pub fn parse_retry_after(value: Option<&str>) -> Option<u64> {
    value.and_then(|v| v.trim().parse::<u64>().ok())
}

/// Maps an HTTP status (and its `Retry-After`) onto the delivery contract: 2xx delivered;
/// 429 and 503 retried after `Retry-After` when given; other 4xx refused for good (the request
/// itself is wrong: bad token, bad payload, unknown endpoint); anything else retried with
/// backoff. `who` names the receiver in the error (never a URL: it may be a credential).
pub fn status_outcome(
    status: u16,
    retry_after_header: Option<&str>,
    who: &str,
) -> Result<(), String> {
    match status {
        200..=299 => Ok(()),
        429 | 503 => Err(match parse_retry_after(retry_after_header) {
            Some(s) => retry_after(s, format_args!("{who} answered http {status}")),
            None => format!("{who} answered http {status}"),
        }),
        400..=499 => Err(permanent(format_args!("{who} answered http {status}"))),
        s => Err(format!("{who} answered http {s}")),
    }
}

/// [`status_outcome`] of an HTTP response.
pub fn http_outcome(resp: &crate::host::http::Response, who: &str) -> Result<(), String> {
    status_outcome(resp.status, resp.header("retry-after"), who)
}

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`: what `X-Tether-Signature` carries,
/// so a receiver can verify a request and reject replays (old timestamps).
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let Ok(mut mac) = <Hmac<Sha256> as KeyInit>::new_from_slice(secret) else {
        // HMAC takes keys of any length; this branch cannot be taken.
        return String::new();
    };
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for b in tag {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 15), 16).unwrap_or('0'));
    }
    out
}

/// Packs `items` (already serialised, in order) into bodies of at most `max_items` items and
/// `max_bytes` bytes each (joined by `sep`). An item larger than `max_bytes` alone is
/// returned as `Err(index)`: the receiver would refuse it, so it is the caller's to reject.
pub fn pack(
    items: &[Vec<u8>],
    sep: &[u8],
    max_items: usize,
    max_bytes: usize,
) -> Result<Vec<Vec<u8>>, usize> {
    let max_items = max_items.max(1);
    let mut out: Vec<Vec<u8>> = Vec::new();
    let mut cur: Vec<u8> = Vec::new();
    let mut n = 0;
    for (i, item) in items.iter().enumerate() {
        if item.len() > max_bytes {
            return Err(i);
        }
        let extra = if n == 0 {
            item.len()
        } else {
            sep.len() + item.len()
        };
        if n > 0 && (n == max_items || cur.len() + extra > max_bytes) {
            out.push(core::mem::take(&mut cur));
            n = 0;
        }
        if n > 0 {
            cur.extend_from_slice(sep);
        }
        cur.extend_from_slice(item);
        n += 1;
    }
    if n > 0 {
        out.push(cur);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_onto_the_delivery_contract() {
        assert_eq!(status_outcome(204, None, "hec"), Ok(()));
        assert_eq!(
            status_outcome(429, Some(" 7 "), "hec"),
            Err("hec answered http 429 retry-after=7".into())
        );
        assert_eq!(
            status_outcome(503, Some("Wed, 21 Oct 2015 07:28:00 GMT"), "hec"),
            Err("hec answered http 503".into())
        );
        assert_eq!(
            status_outcome(403, None, "hec"),
            Err("permanent: hec answered http 403".into())
        );
        assert_eq!(
            status_outcome(500, None, "hec"),
            Err("hec answered http 500".into())
        );
    }

    #[test]
    fn signature_is_hex_hmac_sha256_of_timestamp_dot_body() {
        // Python: hmac.new(b"Jefe", b"what do ya want.for nothing?", hashlib.sha256).hexdigest()
        assert_eq!(
            signature(b"Jefe", "what do ya want", b"for nothing?"),
            "sha256=e33f91577b90d4b3bbd73cb61803074f1965d27701b5527942dd9ea9443af37c"
        );
    }

    #[test]
    fn pack_respects_count_and_bytes_and_reports_oversized_items() {
        let items: Vec<Vec<u8>> = (0..5).map(|i| vec![b'a' + i as u8; 3]).collect();
        assert_eq!(pack(&items, b"\n", 2, 100).unwrap().len(), 3);
        let bodies = pack(&items, b"\n", 100, 7).unwrap();
        assert_eq!(
            bodies,
            vec![b"aaa\nbbb".to_vec(), b"ccc\nddd".to_vec(), b"eee".to_vec()]
        );
        assert_eq!(pack(&items, b"\n", 10, 2), Err(0));
        assert!(pack(&[], b"\n", 10, 10).unwrap().is_empty());
    }
}
