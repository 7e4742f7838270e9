//! The record model and its byte-stable encoding.
//!
//! A record line is the *canonical JSON* of the record without `hash`/`hmac` (object keys sorted
//! by byte order at every level, no insignificant whitespace, integers only, strings escaped the
//! way `serde_json` escapes them), with `,"hash":"HEX","hmac":"HEX"` spliced in before the final
//! `}`, then `\n`. So the hashed bytes are exactly `line[..len - SUFFIX_LEN] + "}"`: the verifier
//! hashes the bytes on disk and never re-serializes, and `hash`/`hmac` always sit at a fixed
//! distance from the end of the line.
//!
//! `hash = SHA-256(prev_raw_32_bytes || canonical)`, `hmac = HMAC-SHA256(key, hash_raw_32_bytes)`;
//! the first record of a log has `prev` = 64 zeros.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tether_model::Role;
use time::{Date, OffsetDateTime, UtcOffset};

use crate::error::{AuditError, Result};

/// Length of `,"hash":"<64 hex>","hmac":"<64 hex>"}` — the fixed tail of every record line
/// (without the newline).
pub(crate) const SUFFIX_LEN: usize = 9 + 64 + 10 + 64 + 2;

/// Largest canonical size of one record (without hash/hmac). Bigger events are refused.
pub const MAX_RECORD_BYTES: usize = 64 * 1024;

/// How the caller reached the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// The `tether` CLI over the control socket.
    Cli,
    /// An AI agent through `tether mcp serve`.
    Mcp,
    /// A direct control API client (e.g. `curl --unix-socket`).
    Api,
    /// The daemon itself (timers, reloads, enrollment listener...).
    Daemon,
}

impl Via {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Via::Cli => "cli",
            Via::Mcp => "mcp",
            Via::Api => "api",
            Via::Daemon => "daemon",
        }
    }
}

/// Who caused the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// Unix uid of the caller (from SO_PEERCRED); the daemon's own uid for `Via::Daemon`.
    pub uid: u32,
    /// User name of the caller, as resolved when the event was raised.
    pub user: String,
    /// The role the caller acted with; `None` for callers refused for having no role.
    pub role: Option<Role>,
    /// How the caller reached the daemon.
    pub via: Via,
}

/// One event to append; the writer adds `seq`, `ts`, `prev`, `hash` and `hmac`.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Event type, e.g. `exec.requested`: lowercase ASCII letters, digits, `_`, `.` and `-`, at most 64 bytes.
    pub kind: String,
    /// Who caused it.
    pub actor: Actor,
    /// The host it concerns, if any.
    pub host: Option<String>,
    /// Event details: a JSON object with no floating-point numbers (use integers, e.g. milliseconds).
    pub data: Value,
}

impl Event {
    /// An event with no host and empty data.
    pub fn new(kind: impl Into<String>, actor: Actor) -> Self {
        Event {
            kind: kind.into(),
            actor,
            host: None,
            data: Value::Object(serde_json::Map::new()),
        }
    }

    /// Sets the host.
    pub fn host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Sets the data (must be a JSON object without floats; checked on append).
    pub fn data(mut self, data: Value) -> Self {
        self.data = data;
        self
    }
}

/// A record as read back from the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Sequence number, 1 for the first record of the log, +1 per record across day files.
    pub seq: u64,
    /// RFC 3339 UTC timestamp with microseconds, e.g. `2026-11-22T10:00:00.123456Z`.
    pub ts: String,
    /// Event type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who caused it.
    pub actor: Actor,
    /// The host it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Event details.
    pub data: Value,
    /// The key epoch whose HMAC key made `hmac` (absent: epoch 0). It changes only right after
    /// a `key.rotated` record, which names the new epoch.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_epoch: u32,
    /// Hex SHA-256 of the previous record (64 zeros for the first).
    pub prev: String,
    /// Hex SHA-256 of `prev || canonical JSON without hash/hmac`.
    pub hash: String,
    /// Hex HMAC-SHA256 of the raw hash.
    pub hmac: String,
}

impl Record {
    /// Parses one line (with or without its trailing newline). Does not verify anything.
    pub fn parse_line(line: &[u8]) -> Result<Record> {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        serde_json::from_slice(line).map_err(|e| AuditError::InvalidEvent {
            reason: format!("not an audit record: {e}"),
        })
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The `data` key that marks a record whose data was too large and was replaced by a digest.
pub const OVERSIZED_KEY: &str = "oversized";

/// How much of oversized data is kept, as escaped text, in its digest record.
const OVERSIZED_EXCERPT_BYTES: usize = 512;

/// The stand-in for data that would make a record larger than [`MAX_RECORD_BYTES`]:
/// `{"oversized": true, "data_bytes": N, "data_sha256": HEX, "excerpt": "first 512 bytes…"}`.
fn digest_of(data: &Value) -> Result<Value> {
    use sha2::Digest as _;
    let mut canonical = Vec::new();
    write_canonical(&mut canonical, data, "data")?;
    let text = String::from_utf8_lossy(&canonical);
    let mut end = OVERSIZED_EXCERPT_BYTES.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Ok(serde_json::json!({
        OVERSIZED_KEY: true,
        "data_bytes": canonical.len(),
        "data_sha256": hex::encode(sha2::Sha256::digest(&canonical)),
        "excerpt": &text[..end],
    }))
}

/// An event already validated and encoded by the caller, so the single writer only has to
/// splice in `prev`, `seq` and `ts` and hash.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// `{"actor":..,"data":..(,"host":..)`: `key_epoch` and `prev` are spliced in after it
    pub pre: Vec<u8>,
    /// `,"type":"..."}`
    pub post: Vec<u8>,
    /// When the append began (for `tether_audit_durable_seconds`).
    pub queued: std::time::Instant,
}

impl Prepared {
    /// Validates and encodes an event.
    pub fn new(ev: &Event) -> Result<Prepared> {
        let bad = |reason: String| AuditError::InvalidEvent { reason };
        if ev.kind.is_empty()
            || ev.kind.len() > 64
            || !ev.kind.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            })
        {
            return Err(bad(format!(
                "type {:?} must be 1-64 bytes of a-z, 0-9, '.', '_', '-'",
                ev.kind
            )));
        }
        if !ev.data.is_object() {
            return Err(bad("data must be a JSON object".into()));
        }
        if ev.actor.user.len() > 256 {
            return Err(bad("actor.user is longer than 256 bytes".into()));
        }
        if let Some(h) = &ev.host
            && h.len() > 255
        {
            return Err(bad("host is longer than 255 bytes".into()));
        }
        let mut pre = Vec::with_capacity(256);
        pre.extend_from_slice(b"{\"actor\":{\"role\":");
        match ev.actor.role {
            Some(role) => {
                pre.push(b'"');
                pre.extend_from_slice(role.as_str().as_bytes());
                pre.push(b'"');
            }
            None => pre.extend_from_slice(b"null"),
        }
        pre.extend_from_slice(b",\"uid\":");
        pre.extend_from_slice(ev.actor.uid.to_string().as_bytes());
        pre.extend_from_slice(b",\"user\":");
        write_str(&mut pre, &ev.actor.user);
        pre.extend_from_slice(b",\"via\":\"");
        pre.extend_from_slice(ev.actor.via.as_str().as_bytes());
        pre.extend_from_slice(b"\"},\"data\":");
        write_canonical(&mut pre, &ev.data, "data")?;
        if let Some(h) = &ev.host {
            pre.extend_from_slice(b",\"host\":");
            write_str(&mut pre, h);
        }
        let mut post = Vec::with_capacity(ev.kind.len() + 12);
        post.extend_from_slice(b",\"type\":\"");
        post.extend_from_slice(ev.kind.as_bytes());
        post.extend_from_slice(b"\"}");
        // prev (64) + seq (<= 20) + ts (27) + keys
        if pre.len() + post.len() + 130 > MAX_RECORD_BYTES {
            // Never lose a record for its size: keep who, what and when, and replace `data`
            // by its size, SHA-256 and a short excerpt (the digest form always fits).
            if ev.data.get(OVERSIZED_KEY).is_some() {
                return Err(bad(format!(
                    "record would be larger than {MAX_RECORD_BYTES} bytes even with its data digested"
                )));
            }
            return Prepared::new(&ev.clone().data(digest_of(&ev.data)?));
        }
        Ok(Prepared {
            pre,
            post,
            queued: std::time::Instant::now(),
        })
    }

    /// Appends the canonical body (without hash/hmac) to `out`.
    /// `key_epoch` is written only when it is not 0, so logs from before key epochs keep
    /// their exact bytes (and a record without it belongs to epoch 0).
    pub fn write_body(&self, out: &mut Vec<u8>, prev: &[u8; 32], seq: u64, ts: &str, epoch: u32) {
        out.extend_from_slice(&self.pre);
        if epoch > 0 {
            out.extend_from_slice(b",\"key_epoch\":");
            let _ = write!(DisplayBuf(out), "{epoch}");
        }
        out.extend_from_slice(b",\"prev\":\"");
        push_hex(out, prev);
        out.extend_from_slice(b"\",\"seq\":");
        let _ = write!(DisplayBuf(out), "{seq}");
        out.extend_from_slice(b",\"ts\":\"");
        out.extend_from_slice(ts.as_bytes());
        out.push(b'"');
        out.extend_from_slice(&self.post);
    }
}

/// Turns a canonical body (ending in `}`) that was just written at `out[start..]` into a full line.
pub(crate) fn finish_line(out: &mut Vec<u8>, hash: &[u8; 32], hmac: &[u8; 32]) {
    out.pop(); // the closing brace of the body
    out.extend_from_slice(b",\"hash\":\"");
    push_hex(out, hash);
    out.extend_from_slice(b"\",\"hmac\":\"");
    push_hex(out, hmac);
    out.extend_from_slice(b"\"}\n");
}

struct DisplayBuf<'a>(&'a mut Vec<u8>);
impl std::fmt::Write for DisplayBuf<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// Appends lowercase hex.
pub(crate) fn push_hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[(b >> 4) as usize]);
        out.push(HEX[(b & 15) as usize]);
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    // serde_json's escaping is deterministic: `"`, `\` and control characters only.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// Writes `v` as canonical JSON: sorted keys, no whitespace, integers only.
/// `path` names the location for the error message ([`AuditError::InvalidEvent`] on a float).
pub(crate) fn write_canonical(out: &mut Vec<u8>, v: &Value, path: &str) -> Result<()> {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                let _ = write!(DisplayBuf(out), "{i}");
            } else if let Some(u) = n.as_u64() {
                let _ = write!(DisplayBuf(out), "{u}");
            } else {
                return Err(AuditError::InvalidEvent {
                    reason: format!(
                        "{path} is a floating-point number ({n}); audit records take integers only (e.g. milliseconds, bytes)"
                    ),
                });
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, x, &format!("{path}[{i}]"))?;
            }
            out.push(b']');
        }
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, k);
                out.push(b':');
                if let Some(x) = m.get(k) {
                    write_canonical(out, x, &format!("{path}.{k}"))?;
                }
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// Canonical JSON of any value (sorted keys, no whitespace); floats are refused.
pub fn canonical_json(v: &Value) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    write_canonical(&mut out, v, "value")?;
    Ok(out)
}

/// Formats a UTC timestamp as `YYYY-MM-DDTHH:MM:SS.ffffffZ` (RFC 3339, fixed width).
pub fn format_ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

/// The UTC date of a record timestamp (`YYYY-MM-DD...`).
pub(crate) fn ts_date(ts: &str) -> Option<Date> {
    parse_date(ts.get(..10)?)
}

/// Parses `YYYY-MM-DD`.
pub fn parse_date(s: &str) -> Option<Date> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, &fmt).ok()
}

/// Formats `YYYY-MM-DD`.
pub(crate) fn format_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_sorts_keys_and_refuses_floats() {
        let v = json!({"b": 1, "a": {"d": [true, null, "x\"y"], "c": -5}});
        assert_eq!(
            canonical_json(&v).unwrap(),
            br#"{"a":{"c":-5,"d":[true,null,"x\"y"]},"b":1}"#
        );
        let err = canonical_json(&json!({"a": {"b": 1.5}})).unwrap_err();
        assert!(err.to_string().contains("value.a.b"), "{err}");
    }

    #[test]
    fn ts_is_fixed_width_utc() {
        let t = time::macros::datetime!(2026-01-02 03:04:05.000007 +02:00);
        assert_eq!(format_ts(t), "2026-01-02T01:04:05.000007Z");
    }
}

/// Fuzz harness: audit lines come from files anyone with write access to the log directory may
/// have changed. `TETHER_FUZZ_CASES` sets the number of cases (`scripts/fuzz` for long runs).
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("TETHER_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn fuzz_audit_line(line in prop::collection::vec(any::<u8>(), 0..2048)) {
            let _ = Record::parse_line(&line);
        }

        #[test]
        fn fuzz_audit_line_shaped(seq in any::<i64>(), ty in ".{0,40}", data in ".{0,200}", tail in ".{0,40}") {
            let line = format!(
                "{{\"seq\":{seq},\"ts\":\"2026-11-27T00:00:00Z\",\"type\":{ty:?},\"actor\":{{}},\"data\":{data},\"prev\":\"00\",\"hash\":\"{tail}\",\"hmac\":\"\"}}\n"
            );
            if let Ok(r) = Record::parse_line(line.as_bytes()) {
                let _ = canonical_json(&serde_json::to_value(&r).unwrap_or_default());
            }
        }
    }
}
