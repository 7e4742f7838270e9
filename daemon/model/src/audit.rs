//! What verifying the audit chain found: plain data shared by the verifier (`tether-audit`) and
//! the control API, so the report travels in one shape.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The kind of break `verify` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum BreakKind {
    /// A record's content no longer matches its hash (or the line is not a record any more).
    Edited,
    /// One or more records are missing from the middle or the start of the chain.
    Deleted,
    /// A record that does not belong at this place (a copy of an earlier one, or from another chain).
    Inserted,
    /// The expected record exists, but later in the log.
    Reordered,
    /// The log ends before the record its signed head vouches for (or a day file was cut mid-record).
    Truncated,
    /// Log and head were replaced by an older or different version: the external checkpoint
    /// (or the head) names a record the log no longer has with that hash.
    RolledBack,
    /// The record's hash matches its content, but its HMAC does not: forged without the key.
    BadHmac,
    /// The head (or the given checkpoint) is missing, unparsable, or its signature does not verify.
    BadSignature,
}

impl BreakKind {
    /// The snake_case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Deleted => "deleted",
            BreakKind::Inserted => "inserted",
            BreakKind::Reordered => "reordered",
            BreakKind::Truncated => "truncated",
            BreakKind::RolledBack => "rolled_back",
            BreakKind::BadHmac => "bad_hmac",
            BreakKind::BadSignature => "bad_signature",
        }
    }
}

impl std::fmt::Display for BreakKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The overall answer of `verify`.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum VerifyVerdict {
    /// The chain is intact and reaches the head counter kept outside `state_dir`.
    Ok,
    /// No break was found, but nothing outside `state_dir` vouches for the log's length (no
    /// head counter is available or none was stored yet): a rollback of log and head together
    /// cannot be ruled out. Keep an exported checkpoint off the box, or use a backend that
    /// holds the counter.
    #[default]
    Unanchored,
    /// A break was found (see [`VerifyReport::broken`]).
    Broken,
}

impl VerifyVerdict {
    /// The snake_case name used in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            VerifyVerdict::Ok => "ok",
            VerifyVerdict::Unanchored => "unanchored",
            VerifyVerdict::Broken => "broken",
        }
    }
}

/// The first break in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Break {
    /// What kind of break.
    pub kind: BreakKind,
    /// The first seq that is not where and what it should be.
    pub seq: u64,
    /// The day file (or head/checkpoint) where it was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub file: Option<PathBuf>,
    /// 1-based line in that file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// One line for a human.
    pub detail: String,
}

impl std::fmt::Display for Break {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} at seq {}", self.kind, self.seq)?;
        if let Some(p) = &self.file {
            write!(f, " ({}", p.display())?;
            if let Some(l) = self.line {
                write!(f, ":{l}")?;
            }
            f.write_str(")")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// The result of [`verify`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyReport {
    /// Records that verified (up to the break, if any).
    pub records: u64,
    /// Day files read.
    pub files: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Seq of the first record read (None when there is none).
    pub first_seq: Option<u64>,
    /// Seq of the last record that verified (0 when none).
    pub last_seq: u64,
    /// Seq the signed head vouches for, if a head was found.
    pub head_seq: Option<u64>,
    /// Seq of the `against` checkpoint, if one was given.
    pub checkpoint_seq: Option<u64>,
    /// Bytes of an incomplete last line (a write in progress or a crash before recovery); not
    /// counted as a break unless the head vouches for them.
    pub torn_tail_bytes: u64,
    /// Wall time spent.
    pub elapsed_secs: f64,
    /// The first break, or None when the chain is intact.
    pub broken: Option<Break>,
    /// Seq of the head counter kept outside `state_dir`, if one was found.
    #[serde(default)]
    pub anchor_seq: Option<u64>,
    /// Ok, unanchored or broken.
    #[serde(default)]
    pub verdict: VerifyVerdict,
    /// Why the verdict is `unanchored` (none otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unanchored: Option<String>,
}

impl VerifyReport {
    /// True when no break was found (the verdict may still be [`VerifyVerdict::Unanchored`]).
    pub fn is_ok(&self) -> bool {
        self.broken.is_none()
    }

    /// True when the chain is intact and anchored outside `state_dir`.
    pub fn is_anchored_ok(&self) -> bool {
        self.verdict == VerifyVerdict::Ok
    }

    /// Read throughput in MB/s (10^6 bytes).
    pub fn mb_per_s(&self) -> f64 {
        if self.elapsed_secs > 0.0 {
            self.bytes as f64 / 1e6 / self.elapsed_secs
        } else {
            0.0
        }
    }
}
