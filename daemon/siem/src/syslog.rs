//! RFC 5424 syslog lines with structured data, and RFC 6587 octet-counting frames.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME tetherd - MSGID [tether@32473 …] MSG` with facility 13 (log
//! audit). The SD-ID `tether@32473` uses the IANA enterprise number reserved for
//! documentation (RFC 5612); param values escape `"`, `\` and `]` (RFC 5424 §6.3.3).

use crate::classify::{Outcome, classify};
use crate::ocsf::message;
use crate::record::{Context, Record};

/// The structured-data id of tether's parameters.
pub const SD_ID: &str = "tether@32473";

/// Facility 13: log audit.
const FACILITY: u8 = 13;

/// What proves a batch is complete: its seq range and the chain hash of its last record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchProof<'a> {
    /// Seq of the batch's first record.
    pub first_seq: u64,
    /// Seq of the batch's last record.
    pub last_seq: u64,
    /// Chain hash (hex) of the last record.
    pub last_hash: &'a str,
}

/// Escapes an SD-PARAM value: `"` → `\"`, `\` → `\\`, `]` → `\]`.
pub fn escape_param(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
    o
}

/// A header field as RFC 5424 allows it: printable US-ASCII (33–126), at most `max` chars;
/// `-` (NILVALUE) when empty.
pub fn header_field(s: &str, max: usize) -> String {
    let o: String = s
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if o.is_empty() { "-".to_owned() } else { o }
}

/// `[SD_ID k="v" ...]` from (name, value) pairs (names are tether's own, valid PARAM-NAMEs).
pub fn structured_data(params: &[(&str, String)]) -> String {
    let mut o = format!("[{SD_ID}");
    for (k, v) in params {
        o.push(' ');
        o.push_str(k);
        o.push_str("=\"");
        o.push_str(&escape_param(v));
        o.push('"');
    }
    o.push(']');
    o
}

/// One RFC 5424 message (no trailing newline).
pub fn message_line(
    severity: u8,
    ts: &str,
    hostname: &str,
    msgid: &str,
    sd: &str,
    msg: &str,
) -> String {
    // MSG is free text; a line break would end the record for line-based receivers.
    let msg = msg.replace(['\n', '\r'], " ");
    format!(
        "<{}>1 {} {} tetherd - {} {} {}",
        u16::from(FACILITY) * 8 + u16::from(severity.min(7)),
        header_field(ts, 64),
        header_field(hostname, 255),
        header_field(msgid, 32),
        sd,
        msg
    )
}

/// The RFC 5424 line for `r`; `batch` adds `first_seq`, `last_seq` and `last_hash`.
pub fn line(r: &Record<'_>, ctx: &Context<'_>, batch: Option<&BatchProof<'_>>) -> String {
    let c = classify(r);
    let severity = if c.outcome == Outcome::Failure { 4 } else { 6 };
    let mut p: Vec<(&str, String)> = vec![
        ("seq", r.seq.to_string()),
        ("type", r.kind.to_owned()),
        ("user", r.actor.user.to_owned()),
        ("uid", r.actor.uid.to_string()),
    ];
    if let Some(role) = r.actor.role {
        p.push(("role", role.to_owned()));
    }
    p.push(("via", r.actor.via.to_owned()));
    if let Some(h) = r.host {
        p.push(("host", h.to_owned()));
    }
    p.push(("outcome", c.outcome.ecs().to_owned()));
    if let Some(h) = r.hash {
        p.push(("hash", h.to_owned()));
    }
    if let Some(b) = batch {
        p.push(("first_seq", b.first_seq.to_string()));
        p.push(("last_seq", b.last_seq.to_string()));
        p.push(("last_hash", b.last_hash.to_owned()));
    }
    let msg = format!("{} {}", message(r), r.data);
    message_line(
        severity,
        r.ts,
        ctx.hostname,
        r.kind,
        &structured_data(&p),
        &msg,
    )
}

/// RFC 6587 octet counting: `LEN SP MSG`.
pub fn frame(msg: &str) -> Vec<u8> {
    let mut o = format!("{} ", msg.len()).into_bytes();
    o.extend_from_slice(msg.as_bytes());
    o
}
