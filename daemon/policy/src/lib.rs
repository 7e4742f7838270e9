//! Policy engine: deny-first regex rules compiled into `RegexSet`s; a pure, explainable
//! [`Policy::evaluate`] that every exec, file and session request passes before it reaches a
//! target (and again on the target).
//!
//! * [`PolicySpec`] is the `[policy]` config table (see `examples/policy.toml`).
//! * [`Policy::compile`] validates it and builds one `RegexSet` per rule kind, with size limits.
//! * [`Policy::evaluate`] returns a [`Decision`]: verdict, rule ids, reason and a trace.
//! * [`PolicyEngine`] serves the current policy, swaps it atomically on reload (keeping the old
//!   one and raising `policy_rebuild_failed` when the new one is invalid) and records metrics.
//! * Policy plugins vote after the regex rules: [`PolicyHooks`] asks them (implemented by the
//!   daemon over the WASM plugin host), each answers a [`PluginVote`], and
//!   [`Decision::apply_votes`] is the one rule that combines the votes with the regex decision
//!   ([`Policy::check`] and [`PolicyEngine::check`] do both steps and return a [`Checked`]).
//! * [`run_fixtures`] runs a `tether policy test` fixture file (see `examples/policy-tests.toml`);
//!   [`run_fixtures_with`] also asks the plugins, so a fixture checks what `policy check` says.
//!
//! Commands are split by a conservative shell parser so chaining and substitution can't smuggle
//! a denied command past the rules; what it can't follow is denied in enforce mode. Paths are
//! normalized lexically (`..`, `.`, `//`); symlinks are resolved by the target before its own
//! check, which runs the same policy.
#![forbid(unsafe_code)]

mod combine;
mod engine;
mod error;
mod fixture;
mod hooks;
mod input;
mod policy;
mod shell;
mod spec;

pub use combine::Checked;
pub use combine::with_votes;
pub use engine::{ALERT_REBUILD_FAILED, PolicyEngine};
pub use error::PolicyError;
pub use fixture::{run_fixtures, run_fixtures_with};
pub use hooks::PolicyHooks;
pub use policy::{
    MAX_INPUT_BYTES, MAX_PATTERN_BYTES, MAX_RULES, Policy, RULE_SIZE_LIMIT, SET_SIZE_LIMIT, builtin,
};
pub use spec::{Mode, PolicySpec, RuleSpec, ScopeSpec};
pub use tether_model::policy::{
    Decision, FixtureReport, HookFailure, Mismatch, Outcome, PluginVote, Request, RequestKind,
    TraceEntry, Verdict, Vote,
};
pub use tether_model::selector::HostFacts;
