//! ArcSight Common Event Format lines:
//! `CEF:0|Tether|tetherd|VERSION|SIGNATURE|NAME|SEVERITY|EXTENSION`.
//! Header fields escape `\` and `|`; extension values escape `\`, `=` and line breaks
//! (`\n`, `\r`), as the CEF specification (rev. 25) requires.

use crate::classify::{Outcome, classify};
use crate::ocsf::message;
use crate::record::{Context, Record};
use crate::time::rfc3339_to_unix_ms;

/// Escapes a CEF header field (`\` → `\\`, `|` → `\|`; line breaks become spaces, a header
/// is one line).
pub fn escape_header(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '|' => o.push_str("\\|"),
            '\n' | '\r' => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// Escapes a CEF extension value (`\` → `\\`, `=` → `\=`, newline → `\n`, CR → `\r`).
pub fn escape_value(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '=' => o.push_str("\\="),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            c => o.push(c),
        }
    }
    o
}

/// Appends `key=value` (value escaped) to an extension.
fn kv(ext: &mut String, key: &str, value: &str) {
    if !ext.is_empty() {
        ext.push(' ');
    }
    ext.push_str(key);
    ext.push('=');
    ext.push_str(&escape_value(value));
}

/// A CEF line from its parts: `signature` (event class id), `name`, `severity` 0–10 and
/// extension pairs (keys are CEF dictionary keys, not escaped).
pub fn format(
    version: &str,
    signature: &str,
    name: &str,
    severity: u8,
    ext: &[(&str, String)],
) -> String {
    let mut e = String::new();
    for (k, v) in ext {
        kv(&mut e, k, v);
    }
    format!(
        "CEF:0|Tether|tetherd|{}|{}|{}|{}|{}",
        escape_header(version),
        escape_header(signature),
        escape_header(name),
        severity.min(10),
        e
    )
}

/// The CEF line for `r`. Extension: `rt` (ms), `externalId` (seq), `suser`, `suid`, `spriv`
/// (role), `dhost`, `app` (via), `outcome`, `act`, `cs1` (chain hash), `msg` (the data JSON).
pub fn line(r: &Record<'_>, ctx: &Context<'_>) -> String {
    let c = classify(r);
    let severity = match c.outcome {
        Outcome::Failure => 7,
        Outcome::Unknown => 5,
        Outcome::Success => 3,
    };
    let mut ext: Vec<(&str, String)> = Vec::with_capacity(14);
    if let Ok(ms) = rfc3339_to_unix_ms(r.ts) {
        ext.push(("rt", ms.to_string()));
    }
    ext.push(("externalId", r.seq.to_string()));
    ext.push(("cat", c.class_name.to_owned()));
    ext.push(("suser", r.actor.user.to_owned()));
    ext.push(("suid", r.actor.uid.to_string()));
    if let Some(role) = r.actor.role {
        ext.push(("spriv", role.to_owned()));
    }
    ext.push(("app", r.actor.via.to_owned()));
    ext.push(("shost", ctx.hostname.to_owned()));
    if let Some(h) = r.host {
        ext.push(("dhost", h.to_owned()));
    }
    ext.push(("act", c.activity_name.to_owned()));
    ext.push(("outcome", c.outcome.ecs().to_owned()));
    if let Some(h) = r.hash {
        ext.push(("cs1Label", "chainHash".to_owned()));
        ext.push(("cs1", h.to_owned()));
    }
    ext.push(("msg", r.data.to_string()));
    format(ctx.version, r.kind, &message(r), severity, &ext)
}
