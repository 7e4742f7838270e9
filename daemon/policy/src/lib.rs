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
//! a denied command past the rules; what it can't follow is denied in enforce mode. Five bypass
//! classes are closed explicitly, and every deny names its class: programs that run a string
//! (`bash -x -c S`, `su -c`, `find -exec sh -c S`), wrappers (a data table, extendable with
//! `[[policy.wrappers]]`), code the splitter can't see (`python3 -c`, `… | sh`, `sh -c "$(…)"`:
//! denied while deny rules exist unless an allow rule names the command), unresolvable
//! expansions in arguments (`rm -rf /?*` is checked as `rm -rf /*`) and paths in every form
//! (`-o/p`, `--file=/p`, `~`, after `cd`, globs, directories that contain denied paths).
//! [`parse_commands`] gives the parse to policy plugins (`tether:plugin@0.2.0`). Paths are
//! normalized lexically (`..`, `.`, `//`); symlinks are resolved by the target before its own
//! check, which runs the same policy.
#![forbid(unsafe_code)]

mod combine;
mod engine;
mod error;
mod fixture;
mod hooks;
mod input;
mod paths;
mod policy;
mod shell;
mod spec;
mod wrappers;

pub use combine::Checked;
pub use combine::with_votes;
pub use engine::{ALERT_REBUILD_FAILED, PolicyEngine};
pub use error::PolicyError;
pub use fixture::{run_fixtures, run_fixtures_with};
pub use hooks::{CommandParser, PolicyHooks};
pub use policy::{
    MAX_INPUT_BYTES, MAX_PATTERN_BYTES, MAX_RULES, Policy, RULE_SIZE_LIMIT, SET_SIZE_LIMIT,
    builtin, parse_commands,
};
pub use shell::ParsedCommand;
pub use spec::{Mode, PolicySpec, RuleSpec, ScopeSpec, WrapperSpec};
pub use tether_model::policy::{
    Decision, FixtureReport, HookFailure, Mismatch, Outcome, PluginVote, Request, RequestKind,
    TraceEntry, Verdict, Vote,
};
pub use tether_model::selector::HostFacts;
