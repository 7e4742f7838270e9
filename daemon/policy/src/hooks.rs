//! Policy plugins as the policy sees them: what one plugin answers about a request
//! ([`PluginVote`]) and the seam that asks them all ([`PolicyHooks`]).
//!
//! The regex rules decide first; the votes are then combined with that decision by
//! [`Decision::apply_votes`](crate::Decision::apply_votes). The WASM side (loading, limits,
//! calling) lives in `tether-plugin-host`, which answers with these types; this crate never
//! links wasmtime.
use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Request;

/// What a policy plugin answered about one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "vote", content = "reason", rename_all = "kebab-case")]
pub enum Vote {
    /// Allow. Loosens a regex deny only when the plugin may override (`may_override`).
    Allow,
    /// Deny, with a reason (also what a failed `fail_closed` plugin votes).
    Deny(String),
    /// Needs a second operator's approval, with a reason.
    RequireApproval(String),
    /// No opinion (also what a failed `fail_open`/`drop_counted` plugin votes).
    Abstain,
}

/// Why a policy plugin gave no answer of its own; its [`PluginVote::vote`] is then its
/// `on_error` fallback. In JSON it is one string, `"KIND: MESSAGE"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", from = "String")]
pub struct HookFailure {
    /// A stable label for the failure, one of the plugin host's error kinds (`timeout`,
    /// `memory`, `trap`, `output_too_large`, `quarantined`, `instantiate`).
    pub kind: Cow<'static, str>,
    /// One line for a human (never secret material).
    pub message: String,
}

impl fmt::Display for HookFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl From<HookFailure> for String {
    fn from(f: HookFailure) -> String {
        f.to_string()
    }
}

impl From<String> for HookFailure {
    /// Parses the JSON form `"KIND: MESSAGE"`; text without a `": "` has kind `unknown`.
    fn from(s: String) -> HookFailure {
        match s.split_once(": ") {
            Some((kind, message)) => HookFailure {
                kind: Cow::Owned(kind.to_owned()),
                message: message.to_owned(),
            },
            None => HookFailure {
                kind: Cow::Borrowed("unknown"),
                message: s,
            },
        }
    }
}

/// One policy plugin's vote on one request, with who cast it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginVote {
    /// The plugin's name (its rule id in a decision is `plugin:NAME`).
    pub plugin: String,
    /// The vote to apply: what the plugin answered, or on failure its `on_error` fallback
    /// (`fail_closed` → [`Vote::Deny`], otherwise [`Vote::Abstain`]).
    pub vote: Vote,
    /// Whether this plugin's [`Vote::Allow`] may loosen a regex deny (`may_override`).
    pub may_override: bool,
    /// Why the plugin failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<HookFailure>,
}

impl PluginVote {
    /// What the plugin itself answered, or why it gave no answer.
    pub fn outcome(&self) -> Result<&Vote, &HookFailure> {
        match &self.error {
            None => Ok(&self.vote),
            Some(e) => Err(e),
        }
    }
}

/// Asks the loaded policy plugins about a request. Implemented in `tetherd` over
/// `tether-plugin-host`; a call blocks for at most the plugins' time limits (from async code run
/// it on a blocking thread).
pub trait PolicyHooks: Send + Sync {
    /// Every policy plugin's vote on `req`, in manifest order. A plugin that fails still votes
    /// (its `on_error` fallback, with [`PluginVote::error`] set), so the caller never has to
    /// guess what a missing vote means.
    fn vote(&self, req: &Request) -> Vec<PluginVote>;
}
