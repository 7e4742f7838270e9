//! The `[policy]` configuration schema (see `examples/policy.toml` for a commented example).
use serde::{Deserialize, Serialize};
use tether_model::Role;

use crate::PolicyError;
pub use crate::wrappers::WrapperSpec;
pub use tether_model::policy::Mode;

/// One rule: an id, a regex and what to tell the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Stable id, named in decisions, audit records and fixtures (`[A-Za-z0-9._-]`, ≤ 64 bytes,
    /// unique across the whole policy).
    pub id: String,
    /// Regular expression (Rust `regex` syntax). Deny rules match anywhere in the text unless
    /// anchored; **allow rules must match a whole simple command** (they are anchored for you).
    pub pattern: String,
    /// Shown to the operator when the rule decides the verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `true` the rule does not deny: a match makes the verdict `require-approval`
    /// (in a deny list) or allows the command only with approval (in an allow list).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approval: bool,
}

/// Extra rules for some callers or hosts (`[[policy.scope]]`). A scope applies when **all** of
/// its conditions hold (any listed role, any listed user, the host selector). Scopes only ever
/// add restrictions: their deny rules add to the global ones, and their allow lists and
/// allowed roots must be satisfied **in addition to** the global ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopeSpec {
    /// Stable id, shown in decision traces.
    pub id: String,
    /// Applies to callers with one of these roles (empty: any role).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// Applies to these users (empty: any user).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
    /// Applies to target hosts matching this selector, e.g. `"tag:env=prod"` (absent: any host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
    /// Commands denied (or sent for approval) in this scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_commands: Vec<RuleSpec>,
    /// When non-empty, every simple command must match one of these in this scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_commands: Vec<RuleSpec>,
    /// Paths denied in this scope (matched against the normalized absolute path).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_paths: Vec<RuleSpec>,
    /// When non-empty, file requests must stay below one of these directories in this scope.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_roots: Vec<String>,
}

/// The `[policy]` table: in `tetherd.toml` or a standalone `policy.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicySpec {
    /// `off`, `warn` or `enforce` (default `enforce`).
    #[serde(default)]
    pub mode: Mode,
    /// Commands denied (or sent for approval) for everyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_commands: Vec<RuleSpec>,
    /// When non-empty, every simple command must match one of these (an allow list).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_commands: Vec<RuleSpec>,
    /// Paths denied for file requests, redirections and absolute-path arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny_paths: Vec<RuleSpec>,
    /// When non-empty, file requests must stay below one of these directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_roots: Vec<String>,
    /// Extra rules for roles, users or hosts.
    #[serde(default, rename = "scope", skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<ScopeSpec>,
    /// Wrapper programs beyond the built-in list (`sudo`, `env`, `timeout`, ...): the splitter
    /// checks the command they wrap like any other (`[[policy.wrappers]]`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub wrappers: Vec<WrapperSpec>,
}

/// A standalone policy file: the same `[policy]` table as in `tetherd.toml`, so a snippet can
/// be moved between the two unchanged.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policy: PolicySpec,
}

impl PolicySpec {
    /// Parses a standalone `policy.toml` (a document with a `[policy]` table).
    pub fn from_toml_str(text: &str) -> Result<Self, PolicyError> {
        toml::from_str::<PolicyFile>(text)
            .map(|f| f.policy)
            .map_err(|e| PolicyError::Parse {
                what: "policy file",
                message: e.to_string(),
            })
    }
}
