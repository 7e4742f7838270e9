use serde::{Deserialize, Serialize};

use crate::{DaemonRole, Role};

/// The body of every control API error: `{"error":{"code":..,"message":..,"hint":..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ApiError,
}

/// One control API error. `code` is stable and machine-readable; `message` says what failed;
/// `hint` says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable snake_case code, e.g. `forbidden`, `not_found`, `body_too_large`.
    pub code: String,
    /// What went wrong, for a human.
    pub message: String,
    /// What to do next, for a human. Empty when there is nothing useful to say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hint: String,
}

impl ApiError {
    /// Builds an error from its three parts.
    pub fn new(
        code: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ApiError {
            code: code.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)?;
        if !self.hint.is_empty() {
            write!(f, "\nhint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// `GET /v1/status`: what this daemon is and how it is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Hub or target.
    pub role: DaemonRole,
    /// The daemon's version.
    pub version: String,
    /// Seconds since the daemon started.
    pub uptime_secs: u64,
    /// The daemon's process id.
    pub pid: u32,
    /// Hosts in the inventory (0 on a target).
    pub hosts: u64,
    /// The role the caller was granted for this request.
    pub caller_role: Role,
}
