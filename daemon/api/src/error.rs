//! The error body every route answers with on failure.

use serde::{Deserialize, Serialize};

/// The body of every control API error: `{"error":{"code":..,"message":..,"hint":..}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error itself.
    pub error: ApiError,
}

/// One control API error. `code` is stable and machine-readable; `message` says what failed;
/// `hint` says what to do about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    /// Stable snake_case code, e.g. `forbidden`, `not_found`, `body_too_large`.
    pub code: String,
    /// What went wrong, for a human.
    pub message: String,
    /// What to do next, for a human. Empty when there is nothing useful to say.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hint: String,
    /// With code `approval_required`: the approval request this refusal created or found
    /// (`apr-…`); wait for it with `GET /v1/approvals/{id}`, then send the request again with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
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
            approval: None,
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
