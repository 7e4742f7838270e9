//! Plain Rust types at the crate boundary (no bindgen types leak out of this crate).

use std::fmt;

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Run a command.
    Exec,
    /// Read a file.
    FileRead,
    /// Write a file.
    FileWrite,
    /// Open an interactive session.
    Session,
}

/// Labels of a target host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// Host name.
    pub name: String,
    /// Groups it belongs to.
    pub groups: Vec<String>,
    /// Tags `key=value`.
    pub tags: Vec<(String, String)>,
}

/// One request checked against one target host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRequest {
    /// What it does.
    pub kind: RequestKind,
    /// The command (exec, session with a command).
    pub command: Option<String>,
    /// The file or working directory.
    pub path: Option<String>,
    /// Caller's user name.
    pub user: String,
    /// Caller's role (`admin`, `operator`, ...).
    pub role: String,
    /// The target host.
    pub host: HostFacts,
    /// Ticket/change id attached by the operator.
    pub ticket: Option<String>,
}

/// A policy hook's vote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// Allow (only loosens a regex deny when the plugin has `may_override = true`).
    Allow,
    /// Deny, with a reason.
    Deny(String),
    /// Needs a human approval, with a reason.
    RequireApproval(String),
    /// No opinion.
    Abstain,
}

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

/// One policy hook's answer to [`crate::PluginHost::evaluate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyVote {
    /// The plugin's name.
    pub plugin: String,
    /// What the plugin returned, or why it failed.
    pub outcome: Result<Vote, PluginError>,
    /// The vote to apply: the outcome, or on failure the `on_error` mode's vote
    /// (`fail_closed` → `Deny`, otherwise `Abstain`).
    pub effective: Vote,
    /// Whether this plugin's `Allow` may loosen a regex deny (`may_override`).
    pub may_override: bool,
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
