//! Compiling a [`PolicySpec`] and evaluating requests against it.
use std::borrow::Cow;
use std::collections::HashMap;

use regex::{RegexBuilder, RegexSet, RegexSetBuilder};
use tether_model::Role;
use tether_model::selector::Selector;

use crate::PolicyError;
use crate::input::{normalize_path, screen_chars, under_root};
use crate::paths::{PathDfa, Piece};
use crate::shell::{self, Analysis, Options, Origin, ParsedCommand};
use crate::spec::{Mode, PolicySpec, RuleSpec};
use crate::wrappers::Wrappers;
use tether_model::policy::{Decision, Outcome, Request, RequestKind, TraceEntry, Verdict};

/// Longest command or path evaluated; longer input is denied in every mode.
pub const MAX_INPUT_BYTES: usize = 8192;
/// Most rules in one policy (all lists and scopes together).
pub const MAX_RULES: usize = 10_000;
/// Longest rule pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 4096;
/// Compiled-size limit of one rule's regex, in bytes.
pub const RULE_SIZE_LIMIT: usize = 1 << 20;
/// Compiled-size limit of one rule set (all deny-command rules, ...), in bytes.
pub const SET_SIZE_LIMIT: usize = 256 << 20;
/// Lazy-DFA cache of one rule set, in bytes (bigger is faster for large sets).
const SET_DFA_LIMIT: usize = 16 << 20;

/// Ids of built-in checks, as they appear in [`Decision::rule_ids`].
pub mod builtin {
    /// A command or path over [`MAX_INPUT_BYTES`](super::MAX_INPUT_BYTES) (denied in every mode).
    pub const INPUT_TOO_LONG: &str = "builtin:input-too-long";
    /// An exec without a command or a file request without a path (denied in every mode).
    pub const INVALID_REQUEST: &str = "builtin:invalid-request";
    /// Input that can't be checked safely: shell syntax, characters, relative paths.
    pub const UNSAFE_INPUT: &str = "builtin:unsafe-input";
    /// A simple command that no rule of an applicable allow list matches.
    pub const NOT_ALLOWED: &str = "builtin:not-allowed";
    /// A path outside the allowed roots.
    pub const OUTSIDE_ROOTS: &str = "builtin:outside-roots";
    /// An interactive session while an allow list applies (its commands can't be checked).
    pub const INTERACTIVE_SESSION: &str = "builtin:interactive-session";
    /// Code the splitter can't see (`python3 -c`, `… | sh`, `sh FILE`, `sh -c "$(…)"`) while
    /// deny rules exist and no allow rule names the command.
    pub const HIDDEN_CODE: &str = "builtin:hidden-code";
}

#[derive(Debug)]
struct Rule {
    id: String,
    message: Option<String>,
    approval: bool,
    /// `None`: global; `Some(i)`: scope `i`.
    scope: Option<usize>,
}

#[derive(Debug)]
struct RuleSet {
    set: RegexSet,
    rules: Vec<Rule>,
}

#[derive(Debug)]
struct Scope {
    id: String,
    roles: Vec<Role>,
    users: Vec<String>,
    hosts: Option<Selector>,
    roots: Vec<String>,
    has_allow: bool,
}

/// A compiled policy: immutable, cheap to share (`Arc<Policy>`), evaluated without IO.
#[derive(Debug)]
pub struct Policy {
    mode: Mode,
    deny_commands: RuleSet,
    allow_commands: RuleSet,
    deny_paths: RuleSet,
    roots: Vec<String>,
    global_allow: bool,
    scopes: Vec<Scope>,
    wrappers: Wrappers,
    path_dfa: PathDfa,
    spec: PolicySpec,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    DenyCommands,
    AllowCommands,
    DenyPaths,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::DenyCommands => "deny_commands",
            Kind::AllowCommands => "allow_commands",
            Kind::DenyPaths => "deny_paths",
        }
    }
}

struct Builder {
    ids: HashMap<String, String>,
    sets: [(Vec<String>, Vec<Rule>); 3],
    count: usize,
}

impl Builder {
    fn add(
        &mut self,
        rules: &[RuleSpec],
        kind: Kind,
        scope: Option<(usize, &str)>,
    ) -> Result<(), PolicyError> {
        let list = match scope {
            None => kind.as_str().to_owned(),
            Some((_, s)) => format!("scope `{s}` {}", kind.as_str()),
        };
        for r in rules {
            self.count += 1;
            if self.count > MAX_RULES {
                return Err(PolicyError::TooManyRules {
                    count: self.count,
                    max: MAX_RULES,
                });
            }
            check_id(&r.id).map_err(|problem| PolicyError::InvalidRuleId {
                id: r.id.clone(),
                list: list.clone(),
                problem,
            })?;
            if let Some(first) = self.ids.insert(r.id.clone(), list.clone()) {
                return Err(PolicyError::DuplicateRuleId {
                    id: r.id.clone(),
                    first,
                    second: list,
                });
            }
            if r.pattern.len() > MAX_PATTERN_BYTES {
                return Err(PolicyError::PatternTooLong {
                    rule: r.id.clone(),
                    list,
                    len: r.pattern.len(),
                    max: MAX_PATTERN_BYTES,
                });
            }
            let source = if kind == Kind::AllowCommands {
                // Validate alone first so `a)|(b` can't escape the anchoring group.
                compile_one(&r.pattern, &r.id, &list)?;
                format!("^(?:{})$", r.pattern)
            } else {
                r.pattern.clone()
            };
            compile_one(&source, &r.id, &list)?;
            let (sources, infos) = &mut self.sets[kind as usize];
            sources.push(source);
            infos.push(Rule {
                id: r.id.clone(),
                message: r.message.clone(),
                approval: r.approval,
                scope: scope.map(|(i, _)| i),
            });
        }
        Ok(())
    }
}

fn check_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        return Err("empty");
    }
    if id.len() > 64 {
        return Err("longer than 64 bytes");
    }
    if !id
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
    {
        return Err("contains a character other than letters, digits, '.', '_' or '-'");
    }
    Ok(())
}

fn compile_one(source: &str, rule: &str, list: &str) -> Result<(), PolicyError> {
    RegexBuilder::new(source)
        .size_limit(RULE_SIZE_LIMIT)
        .build()
        .map(drop)
        .map_err(|e| match e {
            regex::Error::CompiledTooBig(limit) => PolicyError::PatternTooComplex {
                rule: rule.to_owned(),
                list: list.to_owned(),
                limit,
            },
            other => PolicyError::InvalidPattern {
                rule: rule.to_owned(),
                list: list.to_owned(),
                pattern: source.to_owned(),
                reason: other.to_string(),
            },
        })
}

fn build_set(kind: Kind, sources: Vec<String>, rules: Vec<Rule>) -> Result<RuleSet, PolicyError> {
    let set = RegexSetBuilder::new(sources)
        .size_limit(SET_SIZE_LIMIT)
        .dfa_size_limit(SET_DFA_LIMIT)
        .build()
        .map_err(|e| PolicyError::SetTooLarge {
            kind: kind.as_str(),
            reason: e.to_string(),
        })?;
    Ok(RuleSet { set, rules })
}

fn compile_roots(roots: &[String], list: &str) -> Result<Vec<String>, PolicyError> {
    roots
        .iter()
        .map(|r| {
            let bad = |problem| PolicyError::InvalidRoot {
                root: r.clone(),
                list: list.to_owned(),
                problem,
            };
            screen_chars(r).map_err(|_| bad("it contains control or look-alike characters"))?;
            normalize_path(r).ok_or_else(|| bad("it is not an absolute path"))
        })
        .collect()
}

impl Policy {
    /// Compiles `spec`: validates ids, selectors and roots and builds one `RegexSet` per rule
    /// kind, with size limits so a pathological pattern is an error naming its rule.
    pub fn compile(spec: &PolicySpec) -> Result<Policy, PolicyError> {
        let mut b = Builder {
            ids: HashMap::new(),
            sets: Default::default(),
            count: 0,
        };
        b.add(&spec.deny_commands, Kind::DenyCommands, None)?;
        b.add(&spec.allow_commands, Kind::AllowCommands, None)?;
        b.add(&spec.deny_paths, Kind::DenyPaths, None)?;
        let roots = compile_roots(&spec.allowed_roots, "allowed_roots")?;
        let mut scopes = Vec::with_capacity(spec.scopes.len());
        let mut scope_ids = HashMap::new();
        for (i, s) in spec.scopes.iter().enumerate() {
            if let Err(problem) = check_id(&s.id) {
                return Err(PolicyError::InvalidScopeId {
                    id: s.id.clone(),
                    problem,
                });
            }
            if scope_ids.insert(s.id.as_str(), i).is_some() {
                return Err(PolicyError::InvalidScopeId {
                    id: s.id.clone(),
                    problem: "used twice",
                });
            }
            if s.roles.is_empty() && s.users.is_empty() && s.hosts.is_none() {
                return Err(PolicyError::ScopeWithoutCondition {
                    scope: s.id.clone(),
                });
            }
            let hosts = s
                .hosts
                .as_deref()
                .map(|sel| {
                    Selector::parse(sel).map_err(|source| PolicyError::InvalidSelector {
                        scope: s.id.clone(),
                        selector: sel.to_owned(),
                        source,
                    })
                })
                .transpose()?;
            let at = Some((i, s.id.as_str()));
            b.add(&s.deny_commands, Kind::DenyCommands, at)?;
            b.add(&s.allow_commands, Kind::AllowCommands, at)?;
            b.add(&s.deny_paths, Kind::DenyPaths, at)?;
            scopes.push(Scope {
                id: s.id.clone(),
                roles: s.roles.clone(),
                users: s.users.clone(),
                hosts,
                roots: compile_roots(&s.allowed_roots, &format!("scope `{}` allowed_roots", s.id))?,
                has_allow: !s.allow_commands.is_empty(),
            });
        }
        let [deny_c, allow_c, deny_p] = b.sets;
        let wrappers = Wrappers::new(&spec.wrappers)?;
        let path_dfa = PathDfa::new(&deny_p.0);
        Ok(Policy {
            mode: spec.mode,
            deny_commands: build_set(Kind::DenyCommands, deny_c.0, deny_c.1)?,
            allow_commands: build_set(Kind::AllowCommands, allow_c.0, allow_c.1)?,
            deny_paths: build_set(Kind::DenyPaths, deny_p.0, deny_p.1)?,
            roots,
            global_allow: !spec.allow_commands.is_empty(),
            scopes,
            wrappers,
            path_dfa,
            spec: spec.clone(),
        })
    }

    /// Parses a standalone `policy.toml` and compiles it.
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        Policy::compile(&PolicySpec::from_toml_str(text)?)
    }

    /// The mode the policy runs in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The spec this policy was compiled from (for `policy show`).
    pub fn spec(&self) -> &PolicySpec {
        &self.spec
    }

    /// How many rules (all kinds, all scopes) the policy has.
    pub fn rule_count(&self) -> usize {
        self.deny_commands.rules.len()
            + self.allow_commands.rules.len()
            + self.deny_paths.rules.len()
    }

    /// Evaluates one request. Pure and deterministic: no IO, no clock, no randomness.
    ///
    /// Order: size limit and request shape (denied in every mode); scopes that apply; for a
    /// command: character screening, shell splitting, deny rules on the whole text and on every
    /// simple command and view, allow lists on every simple command, deny_paths on redirection
    /// targets and absolute-path arguments; for a path: screening, lexical normalization,
    /// deny_paths, allowed roots. Then deny beats require-approval beats allow, and the mode
    /// decides what that means.
    pub fn evaluate(&self, req: &Request) -> Decision {
        let mut ev = Eval::new(self, req);
        for (what, value) in [("command", &req.command), ("path", &req.path)] {
            if let Some(v) = value
                && v.len() > MAX_INPUT_BYTES
            {
                return ev.hard(
                    builtin::INPUT_TOO_LONG,
                    format!(
                        "the {what} is {} bytes; the limit is {MAX_INPUT_BYTES} bytes",
                        v.len()
                    ),
                );
            }
        }
        match (req.kind, req.command.as_deref(), req.path.as_deref()) {
            (RequestKind::Exec, None, _) => {
                return ev.hard(
                    builtin::INVALID_REQUEST,
                    "an exec request needs a command".into(),
                );
            }
            (RequestKind::Exec, Some(c), cwd) => {
                ev.command(c, cwd);
                if let Some(dir) = cwd {
                    ev.path(dir, "working directory");
                }
            }
            (RequestKind::FileRead | RequestKind::FileWrite, _, None) => {
                return ev.hard(
                    builtin::INVALID_REQUEST,
                    "a file request needs a path".into(),
                );
            }
            (RequestKind::FileRead | RequestKind::FileWrite, _, Some(p)) => ev.path(p, "file"),
            (RequestKind::Session, Some(c), _) => ev.command(c, None),
            (RequestKind::Session, None, _) => ev.session(),
        }
        ev.finish()
    }
}

/// The simple commands of `cmd` as the policy engine sees them (argv after quote removal,
/// redirections, paths), with the built-in wrapper table. Policy plugins
/// (`tether:plugin@0.2.0`) get [`Policy::parse_commands`] instead (through
/// [`crate::PolicyHooks::vote_parsed`]), so they see the policy file's wrappers too. `cwd` is the request's working directory, if any. An error is the
/// reason the command can't be split (the engine denies such a command in enforce mode).
pub fn parse_commands(cmd: &str, cwd: Option<&str>) -> Result<Vec<ParsedCommand>, String> {
    static BUILTIN: std::sync::OnceLock<Option<Wrappers>> = std::sync::OnceLock::new();
    let wrappers = BUILTIN
        .get_or_init(|| Wrappers::new(&[]).ok())
        .as_ref()
        .ok_or("the built-in wrapper table is invalid")?;
    parse_with(cmd, cwd, wrappers)
}

fn parse_with(
    cmd: &str,
    cwd: Option<&str>,
    wrappers: &Wrappers,
) -> Result<Vec<ParsedCommand>, String> {
    if cmd.len() > MAX_INPUT_BYTES {
        return Err(format!(
            "the command is {} bytes; the limit is {MAX_INPUT_BYTES} bytes",
            cmd.len()
        ));
    }
    screen_chars(cmd)?;
    let a = shell::analyze(
        cmd,
        &Options {
            collect_paths: false,
            structured: true,
            wrappers,
            cwd,
        },
    )?;
    Ok(a.parsed)
}

impl Policy {
    /// Like [`parse_commands`], with this policy's wrapper table (built-ins plus
    /// `[[policy.wrappers]]`).
    pub fn parse_commands(
        &self,
        cmd: &str,
        cwd: Option<&str>,
    ) -> Result<Vec<ParsedCommand>, String> {
        parse_with(cmd, cwd, &self.wrappers)
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Severity {
    Approval,
    Deny,
}

struct Finding {
    id: String,
    severity: Severity,
    reason: String,
}

struct Eval<'p> {
    p: &'p Policy,
    active: Vec<bool>,
    findings: Vec<Finding>,
    allowed_by: Vec<String>,
    trace: Vec<TraceEntry>,
}

fn entry(
    subject: &str,
    rule: Option<&str>,
    outcome: Outcome,
    note: impl Into<Cow<'static, str>>,
) -> TraceEntry {
    TraceEntry {
        subject: subject.to_owned(),
        rule: rule.map(str::to_owned),
        outcome,
        note: note.into(),
    }
}

impl<'p> Eval<'p> {
    fn new(p: &'p Policy, req: &Request) -> Self {
        let mut trace = Vec::new();
        let active = p
            .scopes
            .iter()
            .map(|s| {
                let on = (s.roles.is_empty() || s.roles.contains(&req.role))
                    && (s.users.is_empty() || s.users.contains(&req.user))
                    && s.hosts.as_ref().is_none_or(|h| h.matches(&req.host));
                if on {
                    trace.push(entry(
                        &format!("scope `{}`", s.id),
                        None,
                        Outcome::ScopeApplies,
                        format!(
                            "user {:?}, role {}, host {:?}",
                            req.user, req.role, req.host.name
                        ),
                    ));
                }
                on
            })
            .collect();
        Eval {
            p,
            active,
            findings: Vec::new(),
            allowed_by: Vec::new(),
            trace,
        }
    }

    fn applies(&self, scope: Option<usize>) -> bool {
        scope.is_none_or(|s| self.active.get(s).copied().unwrap_or(false))
    }

    fn list_name(&self, scope: Option<usize>) -> String {
        match scope.and_then(|s| self.p.scopes.get(s)) {
            None => "the global".to_owned(),
            Some(s) => format!("scope `{}`'s", s.id),
        }
    }

    fn find(
        &mut self,
        id: &str,
        severity: Severity,
        subject: &str,
        outcome: Outcome,
        reason: String,
    ) {
        self.trace
            .push(entry(subject, Some(id), outcome, reason.clone()));
        self.findings.push(Finding {
            id: id.to_owned(),
            severity,
            reason,
        });
    }

    fn unsafe_input(&mut self, subject: &str, why: String) {
        let reason = format!("`{subject}` can't be checked safely: {why}");
        self.find(
            builtin::UNSAFE_INPUT,
            Severity::Deny,
            subject,
            Outcome::Unsafe,
            reason,
        );
    }

    fn hard(mut self, id: &str, reason: String) -> Decision {
        self.trace
            .push(entry("request", Some(id), Outcome::Unsafe, reason.clone()));
        Decision {
            verdict: Verdict::Deny,
            mode: self.p.mode,
            rule_ids: vec![id.to_owned()],
            reason: reason.into(),
            trace: self.trace,
        }
    }

    /// Deny-command rules against one text (`origin`: the bypass class it was derived by).
    fn deny_command(&mut self, text: &str, origin: Option<&Origin>) {
        let set = &self.p.deny_commands;
        let mut hit = false;
        if !set.rules.is_empty() && set.set.is_match(text) {
            for i in set.set.matches(text).iter() {
                let rule = &set.rules[i];
                if !self.applies(rule.scope) {
                    continue;
                }
                hit = true;
                let (sev, outcome, what) = if rule.approval {
                    (Severity::Approval, Outcome::NeedsApproval, "approval")
                } else {
                    (Severity::Deny, Outcome::Denied, "deny")
                };
                let head = match origin {
                    Some(o) if o.may => {
                        format!("{} may match {what} rule `{}`: `{text}`", o.label, rule.id)
                    }
                    Some(o) => format!("{}: `{text}` matches {what} rule `{}`", o.label, rule.id),
                    None => format!("`{text}` matches {what} rule `{}`", rule.id),
                };
                let reason = with_message(head, &rule.message);
                self.find(&rule.id, sev, text, outcome, reason);
            }
        }
        if !hit {
            self.trace
                .push(entry(text, None, Outcome::Passed, "no deny rule matched"));
        }
    }

    fn deny_path(&mut self, raw: &str, normalized: &str) -> Vec<usize> {
        let set = &self.p.deny_paths;
        if set.rules.is_empty() {
            return Vec::new();
        }
        let mut seen: Vec<usize> = Vec::new();
        for text in [normalized, raw] {
            for i in set.set.matches(text).iter() {
                let rule = &set.rules[i];
                if seen.contains(&i) || !self.applies(rule.scope) {
                    continue;
                }
                seen.push(i);
                let (sev, outcome, what) = if rule.approval {
                    (Severity::Approval, Outcome::NeedsApproval, "approval")
                } else {
                    (Severity::Deny, Outcome::Denied, "deny")
                };
                let reason = with_message(
                    format!("path `{normalized}` matches {what} rule `{}`", rule.id),
                    &rule.message,
                );
                self.find(&rule.id, sev, normalized, outcome, reason);
            }
        }
        seen
    }

    fn any_deny_path_applies(&self) -> bool {
        self.p
            .deny_paths
            .rules
            .iter()
            .any(|r| self.applies(r.scope))
    }

    /// Allow lists that apply: the global one (if any) and those of active scopes.
    fn allow_lists(&self) -> Vec<Option<usize>> {
        let mut lists = Vec::new();
        if self.p.global_allow {
            lists.push(None);
        }
        for (i, s) in self.p.scopes.iter().enumerate() {
            if s.has_allow && self.active[i] {
                lists.push(Some(i));
            }
        }
        lists
    }

    fn any_deny_applies(&self) -> bool {
        self.any_deny_path_applies()
            || self
                .p
                .deny_commands
                .rules
                .iter()
                .any(|r| self.applies(r.scope))
    }

    /// Whether an applicable allow rule matches `text` (it names the command explicitly).
    fn named_by_allow_rule(&self, text: &str) -> bool {
        let set = &self.p.allow_commands;
        !set.rules.is_empty()
            && set
                .set
                .matches(text)
                .iter()
                .any(|i| self.applies(set.rules[i].scope))
    }

    fn command(&mut self, cmd: &str, cwd: Option<&str>) {
        if let Err(why) = screen_chars(cmd) {
            return self.unsafe_input(cmd, why);
        }
        let collect_paths = self.any_deny_path_applies();
        let analysis = match shell::analyze(
            cmd,
            &Options {
                collect_paths,
                structured: false,
                wrappers: &self.p.wrappers,
                cwd,
            },
        ) {
            Ok(a) => a,
            Err(why) => return self.unsafe_input(cmd, why),
        };
        self.deny_command(cmd, None);
        let texts = analysis.commands.len() + analysis.deny_views.len();
        let text_at = |k: usize| match k.checked_sub(analysis.commands.len()) {
            None => (analysis.commands[k].as_ref(), analysis.command_origin[k]),
            Some(v) => (analysis.deny_views[v].0.as_str(), analysis.deny_views[v].1),
        };
        for k in 0..texts {
            let (text, origin) = text_at(k);
            if text != cmd && !(0..k).any(|e| text_at(e).0 == text) {
                self.deny_command(text, analysis.origin(origin));
            }
        }
        let lists = self.allow_lists();
        if !lists.is_empty() {
            for text in &analysis.commands {
                self.allow(text, &lists);
            }
        }
        self.hidden_code(&analysis);
        for p in &analysis.paths {
            match &p.pieces {
                None => {
                    if let Some(n) = normalize_path(&p.text) {
                        let hits = self.deny_path(&p.text, &n);
                        if p.arg {
                            self.contains_denied(&n, &hits);
                        }
                    }
                }
                Some(pieces) => self.unknown_path(&p.text, pieces, p.redirect),
            }
        }
    }

    /// Class 3: commands whose code the splitter can't see are denied while deny rules
    /// apply, unless an allow rule names them.
    fn hidden_code(&mut self, a: &Analysis<'_>) {
        if a.opaque.is_empty() || !self.any_deny_applies() {
            return;
        }
        for o in &a.opaque {
            if self.named_by_allow_rule(&o.command) {
                self.trace.push(entry(
                    &o.command,
                    None,
                    Outcome::Passed,
                    format!("{}; an allow rule names it explicitly", o.why),
                ));
                continue;
            }
            let reason = format!(
                "code the checker can't see: {} in `{}`; deny rules can't be checked inside it, so it is denied while deny rules apply (an allow rule naming this command lets it run)",
                o.why, o.command
            );
            self.find(
                builtin::HIDDEN_CODE,
                Severity::Deny,
                &o.command,
                Outcome::Unsafe,
                reason,
            );
        }
    }

    fn path_finding(&mut self, i: usize, subject: &str, head: String) {
        let rule = &self.p.deny_paths.rules[i];
        let (sev, outcome, what) = if rule.approval {
            (Severity::Approval, Outcome::NeedsApproval, "approval")
        } else {
            (Severity::Deny, Outcome::Denied, "deny")
        };
        let reason = with_message(
            head.replace("{what}", what).replace("{id}", &rule.id),
            &rule.message,
        );
        let id = rule.id.clone();
        self.find(&id, sev, subject, outcome, reason);
    }

    /// Class 5: a directory argument that contains paths a rule denies (`grep -r x /root/.ssh`).
    fn contains_denied(&mut self, dir: &str, already: &[usize]) {
        let mut prefix = dir.trim_end_matches('/').to_owned();
        prefix.push('/');
        let could = self
            .p
            .path_dfa
            .could_match(&[Piece::Lit(prefix), Piece::Any]);
        let Some(hits) = could else {
            return; // a directory is only refused when a rule is known to match below it
        };
        for i in hits {
            if already.contains(&i) || !self.applies(self.p.deny_paths.rules[i].scope) {
                continue;
            }
            self.path_finding(
                i,
                dir,
                format!(
                    "path: the directory `{dir}` contains paths that {{what}} rule `{{id}}` covers"
                ),
            );
        }
    }

    /// Class 4/5: a path only partly known (glob, `~`, variable, unknown directory).
    fn unknown_path(&mut self, text: &str, pieces: &[Piece], redirect: bool) {
        let rules = &self.p.deny_paths.rules;
        let (hits, precise): (Vec<usize>, bool) = match self.p.path_dfa.could_match(pieces) {
            Some(h) => (h.into_iter().collect(), true),
            None => ((0..rules.len()).collect(), false),
        };
        let what = if redirect {
            "redirection target"
        } else {
            "path"
        };
        let kind = if pieces.iter().any(|p| matches!(p, Piece::OneOf(_)))
            || text.contains(['*', '?', '['])
        {
            "glob"
        } else if text.starts_with('~') {
            "home directory"
        } else if text.contains('$') || text.contains('`') {
            "variable"
        } else {
            "working directory"
        };
        for i in hits {
            if !self.applies(self.p.deny_paths.rules[i].scope) {
                continue;
            }
            let note = if precise {
                ""
            } else {
                " (the deny_paths patterns are too complex to check precisely)"
            };
            self.path_finding(
                i,
                text,
                format!(
                    "unresolvable {kind} in {what} `{text}` may match {{what}} rule `{{id}}`{note}"
                ),
            );
        }
    }

    fn allow(&mut self, text: &str, lists: &[Option<usize>]) {
        let set = &self.p.allow_commands;
        let matched = set.set.matches(text);
        for &list in lists {
            let hit = matched.iter().find(|&i| set.rules[i].scope == list);
            match hit {
                Some(i) => {
                    let rule = &set.rules[i];
                    if rule.approval {
                        let reason = with_message(
                            format!("`{text}` is allowed by `{}` only with approval", rule.id),
                            &rule.message,
                        );
                        self.find(
                            &rule.id,
                            Severity::Approval,
                            text,
                            Outcome::NeedsApproval,
                            reason,
                        );
                    } else {
                        self.trace.push(entry(
                            text,
                            Some(&rule.id),
                            Outcome::Allowed,
                            String::new(),
                        ));
                    }
                    if !self.allowed_by.contains(&rule.id) {
                        self.allowed_by.push(rule.id.clone());
                    }
                }
                None => {
                    let reason = format!(
                        "`{text}` matches no rule of {} allow list",
                        self.list_name(list)
                    );
                    self.find(
                        builtin::NOT_ALLOWED,
                        Severity::Deny,
                        text,
                        Outcome::NotAllowed,
                        reason,
                    );
                }
            }
        }
    }

    fn path(&mut self, path: &str, what: &str) {
        if let Err(why) = screen_chars(path) {
            return self.unsafe_input(path, why);
        }
        let Some(n) = normalize_path(path) else {
            return self.unsafe_input(
                path,
                format!("the {what} is a relative path; give an absolute path"),
            );
        };
        let _ = self.deny_path(path, &n);
        let p = self.p;
        let mut root_lists: Vec<(Option<usize>, &[String])> = Vec::new();
        if !p.roots.is_empty() {
            root_lists.push((None, &p.roots));
        }
        for (i, s) in p.scopes.iter().enumerate() {
            if !s.roots.is_empty() && self.active[i] {
                root_lists.push((Some(i), &s.roots));
            }
        }
        for (scope, roots) in root_lists {
            if !roots.iter().any(|r| under_root(&n, r)) {
                let reason = format!(
                    "the {what} `{n}` is outside {} allowed roots ({})",
                    self.list_name(scope),
                    roots.join(", ")
                );
                self.find(
                    builtin::OUTSIDE_ROOTS,
                    Severity::Deny,
                    &n,
                    Outcome::OutsideRoots,
                    reason,
                );
            }
        }
    }

    fn session(&mut self) {
        if !self.allow_lists().is_empty() {
            self.find(
                builtin::INTERACTIVE_SESSION,
                Severity::Deny,
                "interactive session",
                Outcome::NotAllowed,
                "an interactive session can't be checked against the allow list; run commands with `tether exec`".into(),
            );
        }
    }

    fn finish(self) -> Decision {
        let worst = self.findings.iter().map(|f| f.severity).max();
        let enforced = match worst {
            Some(Severity::Deny) => Verdict::Deny,
            Some(Severity::Approval) => Verdict::RequireApproval,
            None => Verdict::Allow,
        };
        let mut rule_ids: Vec<String> = Vec::new();
        let mut first_reason = None;
        let mut count = 0usize;
        for f in self.findings.iter().filter(|f| Some(f.severity) == worst) {
            count += 1;
            first_reason.get_or_insert(f.reason.as_str());
            if !rule_ids.contains(&f.id) {
                rule_ids.push(f.id.clone());
            }
        }
        let mut reason: Cow<'static, str> = match first_reason {
            Some(r) if count > 1 => format!("{r} (and {} more finding(s))", count - 1).into(),
            Some(r) => r.to_owned().into(),
            None if self.allowed_by.is_empty() => "no deny rule matched".into(),
            None => format!("allowed by {}", self.allowed_by.join(", ")).into(),
        };
        if enforced == Verdict::Allow {
            rule_ids = self.allowed_by;
        }
        let verdict = match (self.p.mode, enforced) {
            (_, Verdict::Allow) => Verdict::Allow,
            (Mode::Enforce, v) => v,
            (Mode::Warn, v) => {
                reason = format!("warn mode; enforce mode would say {v}: {reason}").into();
                Verdict::Warn
            }
            (Mode::Off, v) => {
                reason = format!("policy mode is off; enforce mode would say {v}: {reason}").into();
                rule_ids.clear();
                Verdict::Allow
            }
        };
        Decision {
            verdict,
            mode: self.p.mode,
            rule_ids,
            reason,
            trace: self.trace,
        }
    }
}

fn with_message(mut text: String, message: &Option<String>) -> String {
    if let Some(m) = message {
        text.push_str(": ");
        text.push_str(m);
    }
    text
}
