//! Alerts and audit streams in the daemon: the alerts crate's seams adapted to the plugin host
//! (delivery) and the audit log (dead letters: `alert.dropped`, `audit_sink.rejected`).
//!
//! The alert service exists before the audit log and the plugins (both raise alerts while they
//! start), so its adapters are bound to them once they are up ([`Wiring::bind`]); nothing is
//! delivered before [`tether_alerts::AlertService::start`].

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::json;
use tether_alerts::{
    AlertDeliver, AlertsSettings, Batch, BatchDeliver, DeadLetter, DropReason, Presence,
    RetryPolicy,
};
use tether_audit::{AuditLog, Event};
use tether_config::AlertsSection;
use tether_model::{Alert, AlertSink};
use tokio_util::sync::CancellationToken;

use crate::plugins::Plugins;

/// The late-bound ends of the alert service: the plugins and the audit log.
#[derive(Default)]
pub struct Wiring {
    plugins: OnceLock<Arc<Plugins>>,
    audit: OnceLock<(AuditLog, tokio::runtime::Handle)>,
}

impl Wiring {
    /// Binds the plugins (if any are configured) and the audit log, once both are up.
    pub fn bind(&self, plugins: Option<Arc<Plugins>>, audit: AuditLog) {
        if let Some(p) = plugins {
            let _ = self.plugins.set(p);
        }
        let _ = self.audit.set((audit, tokio::runtime::Handle::current()));
    }

    /// Appends `event` to the audit log without blocking the caller.
    fn record(&self, event: Event) {
        let Some((audit, rt)) = self.audit.get() else {
            tracing::error!(kind = %event.kind, "audit log not open yet; dead letter only logged");
            return;
        };
        let audit = audit.clone();
        rt.spawn(async move {
            if let Err(e) = audit.append(&event).await {
                tracing::error!(kind = %event.kind, "could not audit a dead letter: {e}");
            }
        });
    }
}

impl AlertDeliver for Wiring {
    fn deliver(&self, sink: &str, alert: &Alert) -> Result<(), String> {
        let Some(p) = self.plugins.get() else {
            return Err(format!(
                "no plugins are loaded, so there is no alert sink {sink:?}"
            ));
        };
        p.deliver_alert_to(sink, alert)
    }
}

impl DeadLetter for Wiring {
    fn dropped(&self, sink: &str, alert: &Alert, reason: DropReason, attempts: u32, error: &str) {
        let mut event =
            Event::new("alert.dropped", tether_control::audit::daemon_actor()).data(json!({
                "sink": sink,
                "reason": reason.as_str(),
                "attempts": attempts,
                "error": error,
                "alert": {
                    "kind": alert.kind,
                    "severity": alert.severity.as_str(),
                    "message": alert.message,
                    "fields": alert.fields,
                },
            }));
        if let Some(h) = &alert.host {
            event = event.host(h.clone());
        }
        self.record(event);
    }
}

impl BatchDeliver for Wiring {
    fn deliver(&self, sink: &str, batch: &Batch) -> Result<(), String> {
        let Some(p) = self.plugins.get() else {
            return Err(format!(
                "no plugins are loaded, so there is no audit sink {sink:?}"
            ));
        };
        p.deliver_batch_to(sink, batch)
    }

    fn rejected(&self, sink: &str, batch: &Batch, error: &str) {
        self.record(
            Event::new("audit_sink.rejected", tether_control::audit::daemon_actor()).data(json!({
                "sink": sink,
                "first_seq": batch.first_seq,
                "last_seq": batch.last_seq,
                "records": batch.records.len(),
                "error": error,
            })),
        );
    }
}

/// `[alerts]` as the alert service takes it.
pub fn settings(a: &AlertsSection) -> AlertsSettings {
    AlertsSettings::from_section(a)
}

/// The retry timing of `[alerts]`.
pub fn retry(a: &AlertsSection) -> RetryPolicy {
    RetryPolicy::from_section(a)
}

/// The alert sink the tunnel raises into: passes everything on, except a `vpn_peer_unhealthy`
/// for a host whose outage `host_offline` already reported (see [`Presence`]).
pub struct PresenceFilter {
    inner: Arc<dyn AlertSink>,
    presence: Arc<Mutex<Presence>>,
}

impl PresenceFilter {
    /// Filters `inner` through `presence`.
    pub fn new(inner: Arc<dyn AlertSink>, presence: Arc<Mutex<Presence>>) -> PresenceFilter {
        PresenceFilter { inner, presence }
    }
}

impl AlertSink for PresenceFilter {
    fn raise(&self, alert: Alert) {
        if alert.kind == "vpn_peer_unhealthy"
            && let Some(host) = &alert.host
            && self
                .presence
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .peer_unhealthy(host, Instant::now())
        {
            tracing::info!(
                host,
                "vpn_peer_unhealthy held back: host_offline already reported this outage"
            );
            return;
        }
        self.inner.raise(alert);
    }
}

/// Watches the hub's tunnel peers every `every` and raises `host_offline` / `host_online`
/// through `alerts` until `shutdown`.
pub fn spawn_presence(
    tunnel: tether_tunnel::TunnelHandle,
    presence: Arc<Mutex<Presence>>,
    alerts: Arc<dyn AlertSink>,
    every: Duration,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let peers = tunnel.status();
            let raised: Vec<Alert> = {
                let mut p = presence.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let names: Vec<&str> = peers.iter().map(|s| s.name.as_str()).collect();
                p.retain(&names);
                peers
                    .iter()
                    .filter_map(|s| p.observe(&s.name, s.last_handshake_secs, s.rx_bytes, now))
                    .collect()
            };
            for a in raised {
                alerts.raise(a);
            }
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    })
}
