//! `/v1/plugins`: the daemon's WASM plugins.

use serde::{Deserialize, Serialize};

use super::Empty;

/// One loaded plugin with its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginInfo {
    /// Name from the manifest.
    pub name: String,
    /// `policy`, `alert_sink`, `audit_sink` or `enrollment_hook`.
    pub kind: String,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// Key id of the signer (null: unsigned, loaded under `allow_unsigned`).
    pub signer: Option<String>,
    /// Calls made (including failed ones).
    pub calls: u64,
    /// Failed calls.
    pub errors: u64,
    /// Median call latency over the last 1024 calls, microseconds.
    pub p50_us: Option<u64>,
    /// 99th percentile call latency over the last 1024 calls, microseconds.
    pub p99_us: Option<u64>,
    /// Quarantined after repeated failures (reload to clear).
    pub quarantined: bool,
    /// `secrets.get` calls refused (name not granted).
    pub secret_denials: u64,
    /// `http.send` calls refused by the destination check.
    pub http_denials: u64,
    /// Audit sinks: records written but not yet acknowledged by this sink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_records: Option<u64>,
    /// Audit sinks: seq of the last record this sink acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acked_seq: Option<u64>,
}

/// Answer of `GET /v1/plugins`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginList {
    /// The plugins, in manifest order.
    pub plugins: Vec<PluginInfo>,
    /// What to do when none is loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Answer of `POST /v1/plugins/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginReloadResponse {
    /// Plugins now loaded.
    pub plugins: usize,
}

endpoint! {
    /// loaded WASM plugins: kind, hash, signer, calls, errors, latency, quarantine
    PluginsList: Get "/v1/plugins", Empty => PluginList;
}
endpoint! {
    /// re-read the plugin manifest atomically (a bad plugin keeps the old set)
    PluginsReload: Post "/v1/plugins/reload", Empty => PluginReloadResponse;
}
