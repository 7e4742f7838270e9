//! What is asked (`Request`) and what the policy answers (`Decision`).
use std::borrow::Cow;
use std::fmt;

use serde::{Deserialize, Serialize};
use tether_model::Role;
use tether_model::selector::HostFacts;

use crate::Mode;

/// What kind of action is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestKind {
    /// Run `command` (through `sh -c` on the target); `path`, if set, is the working directory.
    Exec,
    /// Read the file at `path`.
    FileRead,
    /// Write the file at `path`.
    FileWrite,
    /// Open an interactive session (pty/shell). With `command` it is checked like `Exec`.
    Session,
}

fn default_role() -> Role {
    Role::Operator
}

/// One request, checked against one target host. Fan-out requests are evaluated once per host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// What is asked.
    pub kind: RequestKind,
    /// The shell command for `exec` (and `session` with a command).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The file for `file_read`/`file_write`; the working directory for `exec`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// The caller's user name (from the control socket's peer credentials).
    #[serde(default)]
    pub user: String,
    /// The caller's role (default `operator` in fixture files).
    #[serde(default = "default_role")]
    pub role: Role,
    /// The target host.
    #[serde(default)]
    pub host: HostFacts,
    /// A change/ticket id the operator attached to the request, if any (policy plugins such as
    /// `change-window` read it; the regex rules don't).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

impl Request {
    fn new(kind: RequestKind) -> Self {
        Request {
            kind,
            command: None,
            path: None,
            user: String::new(),
            role: Role::Operator,
            host: HostFacts::default(),
            ticket: None,
        }
    }

    /// An `exec` request for `command` (operator role, no user, unnamed host).
    pub fn exec(command: impl Into<String>) -> Self {
        Request {
            command: Some(command.into()),
            ..Request::new(RequestKind::Exec)
        }
    }

    /// A `file_read` request for `path`.
    pub fn file_read(path: impl Into<String>) -> Self {
        Request {
            path: Some(path.into()),
            ..Request::new(RequestKind::FileRead)
        }
    }

    /// A `file_write` request for `path`.
    pub fn file_write(path: impl Into<String>) -> Self {
        Request {
            path: Some(path.into()),
            ..Request::new(RequestKind::FileWrite)
        }
    }

    /// An interactive `session` request without a command.
    pub fn session() -> Self {
        Request::new(RequestKind::Session)
    }

    /// Sets the caller (builder style).
    pub fn by(mut self, user: impl Into<String>, role: Role) -> Self {
        self.user = user.into();
        self.role = role;
        self
    }

    /// Sets the target host (builder style).
    pub fn on(mut self, host: HostFacts) -> Self {
        self.host = host;
        self
    }

    /// Attaches a change/ticket id (builder style).
    pub fn with_ticket(mut self, ticket: impl Into<String>) -> Self {
        self.ticket = Some(ticket.into());
        self
    }
}

/// The policy's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    /// Go ahead.
    Allow,
    /// Refused (audited as `exec.denied`).
    Deny,
    /// Allowed, but enforce mode would not have allowed it (warn mode): log and audit.
    Warn,
    /// Needs a second operator's approval before it runs.
    RequireApproval,
}

impl Verdict {
    /// Every verdict, for metrics labels.
    pub const ALL: [Verdict; 4] = [
        Verdict::Allow,
        Verdict::Deny,
        Verdict::Warn,
        Verdict::RequireApproval,
    ];

    /// The name used in config, JSON and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Warn => "warn",
            Verdict::RequireApproval => "require-approval",
        }
    }

    /// Whether the action may run now (`allow` or `warn`).
    pub fn permits(self) -> bool {
        matches!(self, Verdict::Allow | Verdict::Warn)
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one step of the evaluation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A scope's conditions held; its rules were used.
    ScopeApplies,
    /// Checked against the deny rules; none matched.
    Passed,
    /// A deny rule matched.
    Denied,
    /// An approval rule matched.
    NeedsApproval,
    /// An allow rule matched.
    Allowed,
    /// An allow list applies and none of its rules matched.
    NotAllowed,
    /// The input can't be checked safely (shell syntax, characters, relative path...).
    Unsafe,
    /// A path is outside every allowed root.
    OutsideRoots,
}

/// One line of the explanation shown by `tether policy check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceEntry {
    /// What was checked: a simple command, a path, a scope.
    pub subject: String,
    /// The rule (or `builtin:...` check) involved, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// Human detail (the rule's message, the reason input is unsafe...).
    #[serde(default, skip_serializing_if = "str::is_empty")]
    pub note: Cow<'static, str>,
}

/// The result of [`Policy::evaluate`](crate::Policy::evaluate).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The verdict after applying the mode.
    pub verdict: Verdict,
    /// The mode the policy was in.
    pub mode: Mode,
    /// Ids of the rules (or `builtin:...` checks) behind the verdict: the deny/approval rules
    /// that matched, or for an allow under an allow list, the allow rules used.
    pub rule_ids: Vec<String>,
    /// One line for a human.
    pub reason: Cow<'static, str>,
    /// Step-by-step explanation.
    pub trace: Vec<TraceEntry>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "verdict: {} (mode {})", self.verdict, self.mode.as_str())?;
        writeln!(f, "reason:  {}", self.reason)?;
        for t in &self.trace {
            write!(f, "  - {:?}: {}", t.outcome, t.subject)?;
            if let Some(r) = &t.rule {
                write!(f, " [{r}]")?;
            }
            if !t.note.is_empty() {
                write!(f, " — {}", t.note)?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
