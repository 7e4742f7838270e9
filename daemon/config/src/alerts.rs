//! `[alerts]`: where the daemon's alerts go, the cool-down and the delivery limits; and the
//! audit-sink streams' batching.
//!
//! ```toml
//! [alerts]
//! cooldown_secs = 300          # per (category, host); the next one carries the suppressed count
//! queue_capacity = 256         # per sink; a full queue dead-letters (alert.dropped, counted)
//! retries = 3                  # after the first attempt, exponential backoff with jitter
//! backoff_initial_ms = 500
//! backoff_max_ms = 30000
//! offline_after_secs = 180    # host_offline after this long without a tunnel handshake (0: off)
//! [[alerts.route]]
//! categories = ["host_*", "exec_failure"]   # kinds, prefixes ending in *, or empty for all
//! min_severity = "warning"                  # info | warning | critical
//! sinks = ["slack"]                         # alert_sink plugin names
//! ```
//! With no `[[alerts.route]]`, every alert goes to every `alert_sink` plugin.

use serde::{Deserialize, Serialize};
use tether_model::Severity;

/// `[alerts]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsSection {
    /// Cool-down per (category, host), seconds; 0 sends every repeat.
    pub cooldown_secs: u64,
    /// Queue capacity per sink (1–100000).
    pub queue_capacity: usize,
    /// Retries after the first attempt (0–10).
    pub retries: u32,
    /// First retry delay, milliseconds; doubles per retry, with jitter.
    pub backoff_initial_ms: u64,
    /// Largest retry delay, milliseconds.
    pub backoff_max_ms: u64,
    /// Largest `Retry-After` honoured, seconds.
    pub max_retry_after_secs: u64,
    /// Audit sinks: most records per batch (1–10000).
    pub audit_batch_max: usize,
    /// Audit sinks: how often to look for new records when caught up, milliseconds.
    pub audit_poll_ms: u64,
    /// Hub: a host whose tunnel peer has had no handshake for this long is reported
    /// `host_offline` (and `host_online` at its next one); 0 turns these alerts off.
    pub offline_after_secs: u64,
    /// Routes; empty: every alert to every alert_sink plugin.
    #[serde(default, rename = "route", skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<AlertRoute>,
}

impl Default for AlertsSection {
    fn default() -> Self {
        AlertsSection {
            cooldown_secs: 300,
            queue_capacity: 256,
            retries: 3,
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            max_retry_after_secs: 300,
            audit_batch_max: 100,
            audit_poll_ms: 200,
            offline_after_secs: 180,
            routes: Vec::new(),
        }
    }
}

/// `[[alerts.route]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AlertRoute {
    /// Kinds (`host_offline`), prefixes ending in `*` (`host_*`); empty: all.
    #[serde(default)]
    pub categories: Vec<String>,
    /// Lowest severity routed (default `info`).
    #[serde(default = "info")]
    pub min_severity: Severity,
    /// Alert-sink plugin names.
    pub sinks: Vec<String>,
}

fn info() -> Severity {
    Severity::Info
}

impl AlertsSection {
    /// Checks ranges and routes; each problem as (key, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !(1..=100_000).contains(&self.queue_capacity) {
            out.push((
                "alerts.queue_capacity".into(),
                format!("{} is not in 1..=100000", self.queue_capacity),
            ));
        }
        if self.retries > 10 {
            out.push((
                "alerts.retries".into(),
                format!("{} is more than 10", self.retries),
            ));
        }
        if self.backoff_initial_ms == 0 || self.backoff_initial_ms > self.backoff_max_ms {
            out.push((
                "alerts.backoff_initial_ms".into(),
                "must be at least 1 and at most backoff_max_ms".into(),
            ));
        }
        if !(1..=10_000).contains(&self.audit_batch_max) {
            out.push((
                "alerts.audit_batch_max".into(),
                format!("{} is not in 1..=10000", self.audit_batch_max),
            ));
        }
        if self.audit_poll_ms == 0 {
            out.push(("alerts.audit_poll_ms".into(), "must be at least 1".into()));
        }
        for (i, r) in self.routes.iter().enumerate() {
            if r.sinks.is_empty() || r.sinks.iter().any(|s| s.trim().is_empty()) {
                out.push((
                    format!("alerts.route[{i}].sinks"),
                    "name at least one alert_sink plugin".into(),
                ));
            }
            for c in &r.categories {
                if c.is_empty() || c.trim_end_matches('*').contains('*') {
                    out.push((
                        format!("alerts.route[{i}].categories"),
                        format!(
                            "{c:?}: use a kind (host_offline), a prefix ending in * (host_*) or *"
                        ),
                    ));
                }
            }
        }
        out
    }
}
