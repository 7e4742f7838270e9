//! Test plugin (alert-sink world): logs each alert through the host log as
//! `alert kind=<kind> severity=<severity> host=<host|-> message=<message>`.
//! Fails delivery (Err) for alerts whose kind is `fail-me`, to test sink error handling.
use tether_plugin_sdk::alerts::{Alert, AlertSink, export_alert_sink};
use tether_plugin_sdk::host::log;

/// Records alerts in the daemon log.
pub struct AlertRecorder;

impl AlertSink for AlertRecorder {
    fn deliver(alert: Alert) -> Result<(), String> {
        if alert.kind == "fail-me" {
            return Err("alert-recorder refuses kind fail-me".into());
        }
        log::info(&format!(
            "alert kind={} severity={} host={} message={}",
            alert.kind,
            alert.severity.as_str(),
            alert.host.as_deref().unwrap_or("-"),
            alert.message
        ));
        Ok(())
    }
}

export_alert_sink!(AlertRecorder);
