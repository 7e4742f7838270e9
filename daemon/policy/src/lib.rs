//! Policy engine: deny-first regex rules compiled into `RegexSet`s; a pure, explainable
//! [`Policy::evaluate`] that every exec, file and session request passes before it reaches a
//! target (and again on the target).
//!
//! * [`PolicySpec`] is the `[policy]` config table (see `examples/policy.toml`).
//! * [`Policy::compile`] validates it and builds one `RegexSet` per rule kind, with size limits.
//! * [`Policy::evaluate`] returns a [`Decision`]: verdict, rule ids, reason and a trace.
//! * [`PolicyEngine`] serves the current policy, swaps it atomically on reload (keeping the old
//!   one and raising `policy_rebuild_failed` when the new one is invalid) and records metrics.
//! * [`run_fixtures`] runs a `tether policy test` fixture file (see `examples/policy-tests.toml`).
//!
//! Commands are split by a conservative shell parser so chaining and substitution can't smuggle
//! a denied command past the rules; what it can't follow is denied in enforce mode. Paths are
//! normalized lexically (`..`, `.`, `//`); symlinks are resolved by the target before its own
//! check, which runs the same policy.
#![forbid(unsafe_code)]

mod engine;
mod error;
mod fixture;
mod input;
mod policy;
mod shell;
mod spec;
mod votes;

pub use engine::{ALERT_REBUILD_FAILED, PolicyEngine};
pub use error::PolicyError;
pub use fixture::{FixtureReport, Mismatch, run_fixtures};
pub use policy::{
    MAX_INPUT_BYTES, MAX_PATTERN_BYTES, MAX_RULES, Policy, RULE_SIZE_LIMIT, SET_SIZE_LIMIT, builtin,
};
pub use spec::{Mode, PolicySpec, RuleSpec, ScopeSpec};
pub use tether_model::policy::{
    Decision, HookVote, Outcome, PluginVote, Request, RequestKind, TraceEntry, Verdict,
};
pub use tether_model::selector::HostFacts;
pub use votes::apply_votes;
