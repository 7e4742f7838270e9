use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How urgent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; nothing is broken.
    Info,
    /// Something degraded or was refused; look soon.
    Warning,
    /// Security or durability at risk; look now.
    Critical,
}

/// An alert raised by a subsystem (e.g. `audit_write_failed`, `policy_rebuild_failed`,
/// `vpn_peer_unhealthy`, `host_revoked`). The alerts crate (a later issue) routes them to sinks
/// with cooldown and retry; until then the daemon logs them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable snake_case kind, e.g. `audit_write_failed`.
    pub kind: String,
    /// How urgent it is.
    pub severity: Severity,
    /// The host it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// One line for a human. Never contains secret material.
    pub message: String,
    /// Structured details for sinks (e.g. `exit_code`, `plugin`, `suppressed_repeats`). Never
    /// secret material.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
}

impl Alert {
    /// Builds an alert that concerns no particular host.
    pub fn new(kind: impl Into<String>, severity: Severity, message: impl Into<String>) -> Self {
        Alert {
            kind: kind.into(),
            severity,
            host: None,
            message: message.into(),
            fields: BTreeMap::new(),
        }
    }

    /// Sets the host the alert concerns.
    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    /// Adds one structured field.
    pub fn field(mut self, key: impl Into<String>, value: impl ToString) -> Self {
        self.fields.insert(key.into(), value.to_string());
        self
    }
}

impl Severity {
    /// The wire name: `info`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// Where subsystems raise alerts. Must not block: implementations queue or drop (and count).
pub trait AlertSink: Send + Sync {
    /// Raises one alert.
    fn raise(&self, alert: Alert);
}

/// An [`AlertSink`] that logs nothing and drops everything; for tests and tools.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoAlerts;

impl AlertSink for NoAlerts {
    fn raise(&self, _alert: Alert) {}
}
