//! `/v1/alerts`: recent alerts with their delivery state, and test alerts through a sink.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Query of `GET /v1/alerts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertsQuery {
    /// How many of the newest alerts (default 50, at most 1000).
    #[serde(
        default,
        deserialize_with = "crate::de::opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub limit: Option<usize>,
}

/// One sink's progress with one alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertDelivery {
    /// `queued`, `retrying`, `delivered` or `dropped`.
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// The last failure, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Why it was dropped: `queue_full`, `retries_exhausted`, `rejected` or `shutdown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// One recent alert.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertInfo {
    /// Increasing id (per daemon run).
    pub id: u64,
    /// When it was raised, RFC 3339 UTC.
    pub ts: String,
    /// Category, e.g. `host_offline`.
    pub kind: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// The host it concerns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// One line for a human.
    pub message: String,
    /// Structured details (`suppressed_repeats` when the cool-down held repeats back).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fields: BTreeMap<String, String>,
    /// `suppressed` (a repeat within the cool-down), `delivered` (every sink), `dropped` (any
    /// sink dropped it), `retrying`, `queued`, or `unrouted` (no route matched).
    pub state: String,
    /// Per sink.
    pub sinks: BTreeMap<String, AlertDelivery>,
}

/// Answer of `GET /v1/alerts`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AlertList {
    /// Newest first.
    pub alerts: Vec<AlertInfo>,
    /// The configured sinks.
    pub sinks: Vec<String>,
}

/// Body of `POST /v1/alerts/test`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertTestRequest {
    /// The sink (alert_sink plugin) to send the test alert to.
    pub sink: String,
    /// How long to wait for delivery or drop, seconds (default 30, at most 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<u64>,
}

endpoint! {
    /// recent alerts with their delivery state per sink (delivered, retrying, suppressed, dropped)
    AlertsList: Get "/v1/alerts", AlertsQuery => AlertList;
}
endpoint! {
    /// send a test alert to one sink through its real queue, retries and dead-lettering; waits for the outcome
    AlertsTest: Post "/v1/alerts/test", AlertTestRequest => AlertInfo;
}
