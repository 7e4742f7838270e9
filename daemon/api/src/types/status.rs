//! Health, status, metrics and configuration.

use serde::{Deserialize, Serialize};
use tether_model::{DaemonRole, Role};

use super::Empty;

/// `GET /healthz` and `GET /readyz`: `{"status":"ok"}` / `{"status":"ready"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok` (alive) or `ready` (every subsystem is up).
    pub status: String,
}

/// `GET /v1/status`: what this daemon is and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusReport {
    /// Hub or target.
    pub role: DaemonRole,
    /// The daemon's version.
    pub version: String,
    /// The git commit the daemon was built from (`unknown` when built without git). Absent from
    /// daemons older than this field; the CLI compares it with its own.
    #[serde(default = "unknown_commit")]
    pub commit: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The daemon's process id.
    pub pid: u32,
    /// Hosts in the inventory (0 on a target).
    pub hosts: u64,
    /// The role the caller was granted for this request (a just-in-time grant included).
    pub caller_role: Role,
    /// Just-in-time roles in force (`tether access`), soonest to lapse first.
    #[serde(default)]
    pub access_grants: Vec<super::RoleGrant>,
}

fn unknown_commit() -> String {
    "unknown".to_owned()
}

/// `GET /v1/config`: the effective configuration as JSON, every secret-like value replaced by
/// `[redacted]`. Its shape is the `tetherd.toml` schema (see the README's configuration table).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = Object)]
pub struct EffectiveConfig(pub serde_json::Value);

/// What a successful reload changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReloadReport {
    /// Whether anything differs from the previous config.
    pub changed: bool,
    /// Settings that changed but only take effect after a restart.
    pub needs_restart: Vec<String>,
}

endpoint! {
    /// liveness: 200 while the process serves requests
    Healthz: Get "/healthz", Empty => Health;
}
endpoint! {
    /// readiness: 200 once every subsystem is up, 503 before and while draining
    Readyz: Get "/readyz", Empty => Health;
}
endpoint! {
    /// Prometheus text exposition of the daemon's metrics
    Metrics: Get "/metrics", Empty => String, response = Text;
}
endpoint! {
    /// role, version, uptime, pid and host count
    Status: Get "/v1/status", Empty => StatusReport;
}
endpoint! {
    /// the effective configuration, secrets redacted
    ConfigShow: Get "/v1/config", Empty => EffectiveConfig;
}
endpoint! {
    /// re-read the configuration (same as SIGHUP); an invalid one keeps the old
    Reload: Post "/v1/reload", Empty => ReloadReport;
}
