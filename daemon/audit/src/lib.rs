//! Tamper-evident audit chain: append-only JSONL, SHA-256 chain + HMAC, group commit, signed
//! checkpoints, verifier.
//!
//! * [`AuditLog`] — the single writer (group commit: one `write` + `fdatasync` per batch);
//!   [`AuditLog::append`] returns only once the record is durable. A failed write is rolled
//!   back to the last good record and every caller in the batch gets
//!   [`AuditError::WriteFailed`]: the action must then be refused.
//! * [`verify`] — names the first broken seq and the kind of break ([`BreakKind`]).
//! * [`read_records`], [`tail_records`], [`Follower`], [`export_jsonl`] — reading.
//! * [`KeySource`] / [`KeyFile`] — where the HMAC and Ed25519 keys come from (never the audit dir).
//! * [`HeadAnchor`] — where the head counter outside `state_dir` is kept (catches a rollback of
//!   log and head together; without one, verify says [`VerifyVerdict::Unanchored`]).
//!
//! Layout: `AUDIT_DIR/YYYY-MM-DD.jsonl` (one per UTC day, the chain continues across files) and
//! `AUDIT_DIR/head` (signed checkpoint). See [`record`] for the byte format. The day file being
//! appended to ends in a preallocated run of zero bytes (see [`Options::prealloc`]), trimmed when
//! the file is finished; records never contain NUL, so readers stop at the first one.
#![forbid(unsafe_code)]

mod anchor;
mod chain;
mod checkpoint;
mod clock;
mod error;
mod files;
mod head;
mod keys;
mod metrics;
mod reader;
pub mod record;
mod seq_reader;
mod verify;
mod writer;

pub use anchor::{Anchor, HeadAnchor};
pub use checkpoint::{Checkpoint, read_head};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{AuditError, Result};
pub use files::{HEAD_FILE, day_path, list_day_files};
pub use keys::{EpochKeys, KeyFile, KeySource, StaticKeys};
pub use reader::{
    ExportStats, Filter, Follower, Records, count_records, export_jsonl, read_records,
    tail_records, tail_records_with,
};
pub use record::{Actor, Event, MAX_RECORD_BYTES, Record, Via, canonical_json, parse_date};
pub use seq_reader::SeqReader;
pub use verify::{Break, BreakKind, VerifyReport, VerifyVerdict, verify, verify_anchored};
pub use writer::{AuditLog, Options, Receipt, Recovery, Rotated, TornTail};
