//! Sans-IO renderers of Tether audit records for SIEMs, shared by `tether audit export` and the
//! sink plugins (through `tether-plugin-sdk`):
//!
//! * [`ocsf`]: OCSF 1.3 events (Authentication 3002, Process Activity 1007, File System Activity
//!   1001, SSH Activity 4007, API Activity 6003) — the mapping table is [`classify`];
//! * [`ecs`]: Elastic Common Schema documents with `event.kind|category|type|outcome` from the
//!   ECS allowed values;
//! * [`cef`]: ArcSight CEF lines with header and extension escaping;
//! * [`syslog`]: RFC 5424 lines with the `tether@32473` structured data, and RFC 6587 octet
//!   counting framing;
//! * [`hec`]: Splunk HTTP Event Collector envelopes.
//!
//! Every renderer takes one [`Record`] (borrowed from a parsed audit line or a plugin's audit
//! event) and returns one line or one JSON value: no IO, no allocation beyond the output, so an
//! export streams in constant memory.
#![forbid(unsafe_code)]

pub mod cef;
mod classify;
pub mod ecs;
mod error;
pub mod hec;
pub mod ocsf;
mod record;
pub mod syslog;
mod time;

pub use classify::{Class, Outcome, classify};
pub use error::SiemError;
pub use record::{Actor, Context, Record};
pub use time::rfc3339_to_unix_ms;

/// The export formats, by their CLI names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// The record as stored, one JSON object per line.
    Jsonl,
    /// One OCSF 1.3 event per line (JSON).
    Ocsf,
    /// One ECS document per line (JSON).
    Ecs,
    /// One CEF line per record.
    Cef,
    /// One RFC 5424 line per record.
    Syslog,
}

impl Format {
    /// The format called `name` (`jsonl`, `ocsf`, `ecs`, `cef`, `syslog`).
    pub fn parse(name: &str) -> Result<Format, SiemError> {
        Ok(match name {
            "jsonl" => Format::Jsonl,
            "ocsf" => Format::Ocsf,
            "ecs" => Format::Ecs,
            "cef" => Format::Cef,
            "syslog" => Format::Syslog,
            other => return Err(SiemError::UnknownFormat(other.to_owned())),
        })
    }

    /// Renders `record` as one line (without the newline). `Jsonl` is the caller's job (the
    /// record's own bytes); here it re-serialises `raw`.
    pub fn render(self, record: &Record<'_>, ctx: &Context<'_>, raw: &serde_json::Value) -> String {
        match self {
            Format::Jsonl => raw.to_string(),
            Format::Ocsf => ocsf::event(record, ctx).to_string(),
            Format::Ecs => ecs::document(record, ctx).to_string(),
            Format::Cef => cef::line(record, ctx),
            Format::Syslog => syslog::line(record, ctx, None),
        }
    }
}
