//! The `alert-sink` world: deliver daemon alerts (Slack, webhooks, pagers).

use crate::bindings::types as wit;

pub use crate::export_alert_sink;

/// An alert sink plugin. Called once per alert.
pub trait AlertSink {
    /// Delivers `alert`. An `Err` is counted and handled per the manifest's `on_error`.
    fn deliver(alert: Alert) -> Result<(), String>;
}

/// How bad an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// For information.
    Info,
    /// Needs attention.
    Warning,
    /// Needs attention now.
    Critical,
}

impl Severity {
    /// `info`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

/// An alert raised by the daemon (e.g. `audit_write_failed`, `host_revoked`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The alert's kind, e.g. `host_revoked`.
    pub kind: String,
    /// How bad it is.
    pub severity: Severity,
    /// The host it is about, if any.
    pub host: Option<String>,
    /// A human-readable message.
    pub message: String,
}

impl From<wit::Alert> for Alert {
    fn from(a: wit::Alert) -> Self {
        let severity = match a.severity {
            wit::Severity::Info => Severity::Info,
            wit::Severity::Warning => Severity::Warning,
            wit::Severity::Critical => Severity::Critical,
        };
        Alert {
            kind: a.kind,
            severity,
            host: a.host,
            message: a.message,
        }
    }
}

/// The alert's structured fields (host-provided during `deliver` as one JSON object), as a JSON
/// object; empty when there are none.
pub fn fields() -> serde_json::Map<String, serde_json::Value> {
    crate::host::config::get("tether.alert.fields")
        .and_then(|f| serde_json::from_str(&f).ok())
        .unwrap_or_default()
}

#[doc(hidden)]
pub fn __adapt<T: AlertSink>(alert: wit::Alert) -> Result<(), String> {
    T::deliver(alert.into())
}

/// Exports an [`AlertSink`] implementation as the plugin's `deliver` function.
#[macro_export]
macro_rules! export_alert_sink {
    ($ty:ty) => {
        const _: () = {
            struct __TetherAlertSink;
            impl $crate::__private::bindings::alerts::Guest for __TetherAlertSink {
                fn deliver(
                    alert: $crate::__private::bindings::types::Alert,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::alert_adapt::<$ty>(alert)
                }
            }
            $crate::__private::bindings::alerts::__tether_export_alert_sink!(
                __TetherAlertSink with_types_in $crate::__private::bindings::alerts
            );
        };
    };
}
