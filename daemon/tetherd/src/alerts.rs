//! Until the alerts crate routes alerts to sinks (Slack, SIEM, …), the daemon logs them.

use tether_model::{Alert, AlertSink, Severity};

/// Logs every alert at a level matching its severity.
pub struct LogAlerts;

impl AlertSink for LogAlerts {
    fn raise(&self, alert: Alert) {
        let host = alert.host.as_deref().unwrap_or("-");
        match alert.severity {
            Severity::Info => tracing::info!(alert = %alert.kind, host, "ALERT: {}", alert.message),
            Severity::Warning => {
                tracing::warn!(alert = %alert.kind, host, "ALERT: {}", alert.message)
            }
            Severity::Critical => {
                tracing::error!(alert = %alert.kind, host, "ALERT: {}", alert.message)
            }
        }
    }
}
