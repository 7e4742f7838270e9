//! Plain Rust types at the crate boundary (no bindgen types leak out of this crate).
//!
//! Policy hooks speak the policy crate's types ([`tether_policy::Request`] in,
//! [`tether_policy::PluginVote`] out); what is here are the sink and enrollment records, whose
//! daemon-side forms live in crates this one must not depend on (audit, enroll), and the host's
//! own failure reporting.

use std::borrow::Cow;
use std::fmt;

/// Why a plugin call produced no usable result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The call ran past its `timeout_ms` deadline (epoch interruption).
    Timeout,
    /// The plugin tried to grow its memory past `memory_mb`.
    Memory,
    /// The plugin trapped (panic, unreachable, stack overflow, ...).
    Trap,
    /// The result (reason, tags, error text) was larger than `max_output_bytes`.
    OutputTooLarge,
    /// The plugin is quarantined after repeated failures; it was not called.
    Quarantined,
    /// A fresh instance could not be created.
    Instantiate,
    /// A sink plugin ran but reported that delivery failed.
    Rejected,
}

impl ErrorKind {
    /// The stable label used in metrics (`tether_plugin_errors_total{kind}`) and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Memory => "memory",
            ErrorKind::Trap => "trap",
            ErrorKind::OutputTooLarge => "output_too_large",
            ErrorKind::Quarantined => "quarantined",
            ErrorKind::Instantiate => "instantiate",
            ErrorKind::Rejected => "rejected",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed plugin call: its kind and a one-line explanation (never secret material).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// Classification.
    pub kind: ErrorKind,
    /// Human-readable detail.
    pub message: String,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl From<PluginError> for tether_policy::HookFailure {
    /// A failed policy hook call as the policy records it (kind label + message).
    fn from(e: PluginError) -> Self {
        tether_policy::HookFailure {
            kind: Cow::Borrowed(e.kind.as_str()),
            message: e.message,
        }
    }
}

/// What a plugin does on a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Treat the failure as a deny (policy default) / deny enrollment.
    FailClosed,
    /// Treat the failure as abstain / approve without tags.
    FailOpen,
    /// Count it and move on (sink default).
    DropCounted,
}

/// A sink plugin's answer to a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The plugin's name.
    pub plugin: String,
    /// `Ok` when delivered.
    pub outcome: Result<(), PluginError>,
}

/// One audit record handed to audit-sink plugins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Sequence number.
    pub seq: u64,
    /// RFC 3339 timestamp.
    pub ts: String,
    /// Record type, e.g. `exec.result`.
    pub kind: String,
    /// Caller uid.
    pub actor_uid: u32,
    /// Caller user name.
    pub actor_user: String,
    /// Caller role.
    pub actor_role: Option<String>,
    /// Channel (`cli`, `mcp`, ...).
    pub via: String,
    /// Host concerned.
    pub host: Option<String>,
    /// Canonical JSON of the record's `data`.
    pub data_json: String,
}

/// A target asking to enroll (after its token was verified).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollRequest {
    /// Requested host name.
    pub name: String,
    /// The machine's hostname.
    pub hostname: String,
    /// Overlay IP assigned.
    pub overlay_ip: String,
    /// Tags from the invite.
    pub tags: Vec<(String, String)>,
    /// Groups from the invite.
    pub groups: Vec<String>,
    /// Where the enrollment came from.
    pub peer: Option<String>,
}

/// An enrollment hook's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrollDecision {
    /// Approve, adding these tags.
    Approve(Vec<(String, String)>),
    /// Deny with a reason.
    Deny(String),
}

/// One enrollment hook's answer to [`crate::PluginHost::on_enroll`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrollVote {
    /// The plugin's name.
    pub plugin: String,
    /// What it returned, or why it failed.
    pub outcome: Result<EnrollDecision, PluginError>,
    /// The decision to apply (`fail_closed` failure → `Deny`, otherwise `Approve(no tags)`).
    pub effective: EnrollDecision,
}
