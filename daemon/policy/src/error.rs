use tether_model::selector::ParseSelectorError;

/// Why a policy could not be loaded, compiled or used. Every variant names the rule, scope or
/// file concerned and says what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// A rule's pattern is not a valid regular expression.
    #[error(
        "policy rule `{rule}` in {list}: pattern {pattern:?} is not a valid regex: {reason}; fix the pattern (syntax: https://docs.rs/regex/latest/regex/#syntax)"
    )]
    InvalidPattern {
        /// The rule id.
        rule: String,
        /// Where the rule is, e.g. `deny_commands` or `scope prod: allow_commands`.
        list: String,
        /// The pattern as written.
        pattern: String,
        /// The regex compiler's explanation.
        reason: String,
    },
    /// A rule's pattern compiles to a program larger than the per-rule limit (e.g. `(a{1000}){1000}`).
    #[error(
        "policy rule `{rule}` in {list}: pattern is too complex (its compiled form exceeds {limit} bytes); simplify it, e.g. avoid large counted repetitions like `{{1000}}` or many nested Unicode classes"
    )]
    PatternTooComplex {
        /// The rule id.
        rule: String,
        /// Where the rule is.
        list: String,
        /// The compiled-size limit in bytes.
        limit: usize,
    },
    /// A rule's pattern text is longer than the limit.
    #[error(
        "policy rule `{rule}` in {list}: pattern is {len} bytes; the limit is {max} bytes; split it into several rules"
    )]
    PatternTooLong {
        /// The rule id.
        rule: String,
        /// Where the rule is.
        list: String,
        /// Length of the pattern.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A rule id is empty, too long, or uses characters outside `[A-Za-z0-9._-]`.
    #[error(
        "policy rule id {id:?} in {list} is invalid ({problem}); use 1 to 64 ASCII letters, digits, '.', '_' or '-'"
    )]
    InvalidRuleId {
        /// The id as written.
        id: String,
        /// Where the rule is.
        list: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// Two rules share an id.
    #[error(
        "policy rule id `{id}` is used twice (in {first} and in {second}); every rule needs its own id so decisions and audit records can name it"
    )]
    DuplicateRuleId {
        /// The duplicated id.
        id: String,
        /// Where it first appeared.
        first: String,
        /// Where it appeared again.
        second: String,
    },
    /// Two scopes share an id, or a scope id is invalid.
    #[error(
        "policy scope id {id:?} is {problem}; give every `[[policy.scope]]` its own `id` of ASCII letters, digits, '.', '_' or '-'"
    )]
    InvalidScopeId {
        /// The id as written.
        id: String,
        /// What is wrong (`used twice`, `empty`...).
        problem: &'static str,
    },
    /// A scope has no `roles`, `users` or `hosts`, so it would silently apply to everybody.
    #[error(
        "policy scope `{scope}` has no condition; give it `roles`, `users` and/or `hosts` (put rules that apply to everyone at the top level of [policy])"
    )]
    ScopeWithoutCondition {
        /// The scope id.
        scope: String,
    },
    /// A scope's `hosts` selector does not parse.
    #[error("policy scope `{scope}`: host selector {selector:?} is invalid: {source}")]
    InvalidSelector {
        /// The scope id.
        scope: String,
        /// The selector as written.
        selector: String,
        /// Why it was refused.
        #[source]
        source: ParseSelectorError,
    },
    /// An entry of `allowed_roots` is not an absolute, clean path.
    #[error(
        "allowed root {root:?} in {list} is invalid: {problem}; write an absolute directory such as \"/srv/app\""
    )]
    InvalidRoot {
        /// The root as written.
        root: String,
        /// Where it is (`allowed_roots` or `scope X: allowed_roots`).
        list: String,
        /// What is wrong.
        problem: &'static str,
    },
    /// A `[[policy.wrappers]]` entry is malformed.
    #[error(
        "wrapper {name:?} in [[policy.wrappers]] is invalid: {problem}; see the wrappers example in examples/policy.toml"
    )]
    InvalidWrapper {
        /// The wrapper's name as written.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// The policy has more rules than the engine accepts.
    #[error("policy has {count} rules; the limit is {max}; merge rules with alternations (`a|b`)")]
    TooManyRules {
        /// How many rules the policy has.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// All patterns of one kind together exceed the compiled-size limit of a rule set.
    #[error(
        "the {kind} rules together are too large to compile ({reason}); remove or simplify rules"
    )]
    SetTooLarge {
        /// `deny_commands`, `allow_commands` or `deny_paths`.
        kind: &'static str,
        /// The regex compiler's explanation.
        reason: String,
    },
    /// A policy or fixture file is not valid TOML or does not have the expected shape.
    #[error("cannot read {what}: {message}")]
    Parse {
        /// What was being read, e.g. `policy file` or `policy test fixtures`.
        what: &'static str,
        /// The parser's explanation, with line and column.
        message: String,
    },
    /// The engine's metrics could not be registered.
    #[error(
        "cannot register the policy metrics: {0}; register one PolicyEngine per prometheus Registry"
    )]
    Metrics(String),
}
