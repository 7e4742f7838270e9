//! `/v1/policy/...`: show the policy, explain a verdict, reload.

use serde::{Deserialize, Serialize};
use tether_model::Role;
use tether_model::policy::{Decision, FixtureReport, Mode, PluginVote, Request, RequestKind};
use tether_model::selector::HostFacts;

use super::Empty;

/// Answer of `GET /v1/policy`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyShow {
    /// The mode in force.
    pub mode: Mode,
    /// Rules compiled.
    pub rules: usize,
    /// The policy as configured (`[policy]` of tetherd.toml or the policy file).
    #[schema(value_type = Object)]
    pub spec: serde_json::Value,
}

/// Body of `POST /v1/policy/check`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyCheckRequest {
    /// `exec` (default), `file_read`, `file_write` or `session`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<RequestKind>,
    /// The command (exec, session).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The file (file_read, file_write) or working directory (exec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The target host's facts (name, groups, tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostFacts>,
    /// Check on behalf of another user (admin only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_user: Option<String>,
    /// Check with another role (admin only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_role: Option<Role>,
    /// A change-ticket reference passed on to policy plugins (e.g. `CHG-1234`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

/// Answer of `POST /v1/policy/check`: the request as evaluated, the decision with its trace,
/// and the plugins' votes (already combined into the decision).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyCheckResponse {
    /// The request as evaluated (caller filled in).
    pub request: Request,
    /// The verdict, rule ids, reason and trace.
    pub decision: Decision,
    /// Each policy plugin's vote, in manifest order.
    pub plugin_votes: Vec<PluginVote>,
}

/// Answer of `POST /v1/policy/reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PolicyReloadResponse {
    /// The mode now in force (null without a policy engine).
    pub mode: Option<Mode>,
    /// Rules now compiled.
    pub rules: usize,
    /// Whether anything differs from the previous config.
    pub changed: bool,
    /// Settings that changed but only take effect after a restart.
    pub needs_restart: Vec<String>,
}

/// Body of `POST /v1/policy/test`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyTestRequest {
    /// The fixture file's text (TOML `[[case]]` tables: `request`, `expect`, `expect_rules`).
    pub fixtures: String,
}

endpoint! {
    /// the policy in force: mode, rule count, rules
    PolicyGet: Get "/v1/policy", Empty => PolicyShow;
}
endpoint! {
    /// explain the verdict for one request, rule by rule (as another user: admin only)
    PolicyCheck: Post "/v1/policy/check", PolicyCheckRequest => PolicyCheckResponse;
}
endpoint! {
    /// run policy fixtures against the policy in force and the loaded policy plugins, exactly as policy check decides
    PolicyTest: Post "/v1/policy/test", PolicyTestRequest => FixtureReport;
}
endpoint! {
    /// re-read the config and swap the policy atomically; an invalid one keeps the old
    PolicyReload: Post "/v1/policy/reload", Empty => PolicyReloadResponse;
}
