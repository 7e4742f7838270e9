//! Policy data: what is asked (`Request`), in which mode, and what the policy answers
//! (`Decision`). The engine lives in `tether-policy`; these plain types are shared with the
//! control API and the plugin host so one shape travels from the route to the WIT boundary.
use std::borrow::Cow;
use std::fmt;

use crate::Role;
use crate::selector::HostFacts;
use serde::{Deserialize, Serialize};

/// What kind of action is requested.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// A request of `kind` with nothing else set (operator role, no user, unnamed host).
    pub fn new(kind: RequestKind) -> Self {
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    #[schema(value_type = String)]
    pub note: Cow<'static, str>,
}

/// The result of evaluating a request (`tether_policy::Policy::evaluate`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Decision {
    /// The verdict after applying the mode.
    pub verdict: Verdict,
    /// The mode the policy was in.
    pub mode: Mode,
    /// Ids of the rules (or `builtin:...` checks) behind the verdict: the deny/approval rules
    /// that matched, or for an allow under an allow list, the allow rules used.
    pub rule_ids: Vec<String>,
    /// One line for a human.
    #[schema(value_type = String)]
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

/// How the policy acts on what it finds.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Rules are evaluated (so `policy check` still explains them) but everything is allowed,
    /// except input over the size limit and malformed requests.
    Off,
    /// Dry run: everything runs, but anything enforce mode would deny or send for approval gets
    /// the verdict `warn` with the reason, so it is logged and audited.
    Warn,
    /// Deny and approval verdicts are binding. The default: a policy that is present is meant.
    #[default]
    Enforce,
}

impl Mode {
    /// The mode's name as written in config.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Warn => "warn",
            Mode::Enforce => "enforce",
        }
    }
}

/// What a policy plugin answered about one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PluginVote {
    /// The plugin's name (its rule id in a decision is `plugin:NAME`).
    pub plugin: String,
    /// The vote to apply: what the plugin answered, or on failure its `on_error` fallback
    /// (`fail_closed` → [`Vote::Deny`], otherwise [`Vote::Abstain`]).
    pub vote: Vote,
    /// Whether this plugin's [`Vote::Allow`] may loosen a regex deny (`may_override`).
    pub may_override: bool,
    /// Why the plugin failed, when it did (`"KIND: MESSAGE"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
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

impl Decision {
    /// Whether plugins are asked about this decision: in every mode but `off`, where nothing is
    /// enforced.
    pub fn takes_votes(&self) -> bool {
        self.mode != Mode::Off
    }

    /// Applies policy plugins' votes after the regex rules: a deny or approval vote can only
    /// tighten the verdict; an allow loosens a regex deny only from a plugin with
    /// `may_override`. In `warn` mode a plugin's deny becomes `warn`, like a rule's; in `off`
    /// mode votes change nothing. Each vote that counts adds `plugin:NAME` to the rule ids and a
    /// line to the trace.
    pub fn apply_votes(&mut self, votes: &[PluginVote]) {
        if !self.takes_votes() {
            return;
        }
        for v in votes {
            self.apply_vote(v);
        }
    }

    fn apply_vote(&mut self, v: &PluginVote) {
        let rule = format!("plugin:{}", v.plugin);
        let (verdict, reason, outcome) = match &v.vote {
            Vote::Abstain => return,
            Vote::Deny(r) => (Verdict::Deny, r, Outcome::Denied),
            Vote::RequireApproval(r) => (Verdict::RequireApproval, r, Outcome::NeedsApproval),
            Vote::Allow => {
                if v.may_override && self.verdict == Verdict::Deny {
                    self.verdict = Verdict::Allow;
                    self.reason = format!("allowed by plugin {} (may_override)", v.plugin).into();
                    self.rule_ids.push(rule.clone());
                    self.trace.push(TraceEntry {
                        subject: v.plugin.clone(),
                        rule: Some(rule),
                        outcome: Outcome::Allowed,
                        note: "overrides the regex deny".into(),
                    });
                }
                return;
            }
        };
        let verdict = if self.mode == Mode::Warn {
            Verdict::Warn
        } else {
            verdict
        };
        let stronger = match (self.verdict, verdict) {
            (Verdict::Deny, _) => false,
            (_, Verdict::Deny) => true,
            (Verdict::RequireApproval, _) => false,
            (_, Verdict::RequireApproval) => true,
            (Verdict::Allow, Verdict::Warn) => true,
            _ => false,
        };
        let note = match &v.error {
            Some(e) => format!("{reason} (plugin failed: {e})"),
            None => reason.clone(),
        };
        self.trace.push(TraceEntry {
            subject: v.plugin.clone(),
            rule: Some(rule.clone()),
            outcome,
            note: note.into(),
        });
        if stronger {
            self.verdict = verdict;
            self.reason = format!("plugin {}: {reason}", v.plugin).into();
        }
        if !self.rule_ids.contains(&rule) {
            self.rule_ids.push(rule);
        }
    }
}

/// One case whose decision differed from what the file expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Mismatch {
    /// 1-based position of the case in the file.
    pub index: usize,
    /// The case's `name`, or `case N`.
    pub name: String,
    /// The expected verdict.
    pub expected: Verdict,
    /// The verdict the policy gave.
    pub got: Verdict,
    /// Expected rule ids that were not in the decision.
    pub missing_rules: Vec<String>,
    /// The decision's rule ids.
    pub got_rules: Vec<String>,
    /// The decision's reason.
    pub reason: String,
    /// The policy plugins' votes on the case (empty when none was asked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugin_votes: Vec<PluginVote>,
}

/// The outcome of running a fixture file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FixtureReport {
    /// How many cases ran.
    pub total: usize,
    /// The cases that did not match, in file order. Empty means success.
    pub mismatches: Vec<Mismatch>,
}

impl FixtureReport {
    /// Whether every case matched (the CLI exits 0 then, 1 otherwise).
    pub fn passed(&self) -> bool {
        self.mismatches.is_empty()
    }
}

impl fmt::Display for FixtureReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.mismatches {
            write!(
                f,
                "FAIL case {} ({}): expected {}, got {}",
                m.index, m.name, m.expected, m.got
            )?;
            if !m.missing_rules.is_empty() {
                write!(
                    f,
                    "; expected rule(s) {} not among [{}]",
                    m.missing_rules.join(", "),
                    m.got_rules.join(", ")
                )?;
            }
            writeln!(f, "\n  reason: {}", m.reason)?;
            for v in &m.plugin_votes {
                if let Err(e) = v.outcome() {
                    writeln!(f, "  plugin {} failed: {e}", v.plugin)?;
                }
            }
        }
        write!(
            f,
            "{} of {} policy test case(s) passed",
            self.total - self.mismatches.len(),
            self.total
        )
    }
}
