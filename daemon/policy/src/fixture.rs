//! `tether policy test FILE`: a TOML file of `{request, expect}` cases run against a policy.
//!
//! ```toml
//! [[case]]
//! name = "operators can't wipe the disk"
//! expect = "deny"                 # allow | deny | warn | require-approval
//! expect_rules = ["no-rm-root"]   # optional: these ids must be among the decision's rule_ids
//! request = { kind = "exec", command = "rm -rf /", role = "operator", host = { name = "web1" } }
//! ```
//!
//! [`run_fixtures`] checks the regex rules alone (what the CLI can do without a daemon);
//! [`run_fixtures_with`] also asks the policy plugins and combines their votes exactly like
//! `policy check` ([`Policy::check`]), so `expect_rules` may name `plugin:NAME`.
use serde::Deserialize;

use crate::{FixtureReport, Mismatch, Policy, PolicyError, PolicyHooks, Request, Verdict};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FixtureFile {
    #[serde(default, rename = "case")]
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    #[serde(default)]
    name: Option<String>,
    request: Request,
    expect: Verdict,
    #[serde(default)]
    expect_rules: Vec<String>,
}

/// Runs every case of the fixture file `text` against `policy`'s regex rules (no plugins). A
/// file that doesn't parse is an error (with line and column); cases that don't match are listed
/// in the report.
pub fn run_fixtures(policy: &Policy, text: &str) -> Result<FixtureReport, PolicyError> {
    run_fixtures_with(policy, text, None)
}

/// Like [`run_fixtures`], but each case is checked the way `policy check` checks a request:
/// the regex rules, then the votes of `hooks` (when given and the policy is not `off`) combined
/// by [`Decision::apply_votes`](crate::Decision::apply_votes). Blocks while the plugins run.
pub fn run_fixtures_with(
    policy: &Policy,
    text: &str,
    hooks: Option<&dyn PolicyHooks>,
) -> Result<FixtureReport, PolicyError> {
    let file: FixtureFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
        what: "policy test fixtures",
        message: e.to_string(),
    })?;
    let mut mismatches = Vec::new();
    for (i, case) in file.cases.iter().enumerate() {
        let checked = policy.check(&case.request, hooks);
        let d = checked.decision;
        let missing: Vec<String> = case
            .expect_rules
            .iter()
            .filter(|r| !d.rule_ids.contains(r))
            .cloned()
            .collect();
        if d.verdict != case.expect || !missing.is_empty() {
            mismatches.push(Mismatch {
                index: i + 1,
                name: case
                    .name
                    .clone()
                    .unwrap_or_else(|| format!("case {}", i + 1)),
                expected: case.expect,
                got: d.verdict,
                missing_rules: missing,
                got_rules: d.rule_ids,
                reason: d.reason.into_owned(),
                plugin_votes: checked.plugin_votes,
            });
        }
    }
    Ok(FixtureReport {
        total: file.cases.len(),
        mismatches,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::{HookFailure, PluginVote, PolicySpec, RequestKind, Vote};

    /// A stand-in for the plugin host: a change-window-like hook that denies writes without a
    /// `CHG-` ticket and abstains otherwise, and a failing one that fails closed on `reboot`.
    struct Hooks;

    impl PolicyHooks for Hooks {
        fn vote(&self, req: &Request) -> Vec<PluginVote> {
            let cmd = req.command.as_deref().unwrap_or_default();
            let write = req.kind == RequestKind::FileWrite || cmd.starts_with("systemctl restart");
            let ticketed = req.ticket.as_deref().is_some_and(|t| t.starts_with("CHG-"));
            let mut votes = vec![PluginVote {
                plugin: "change-window".into(),
                vote: if write && !ticketed {
                    Vote::Deny("writes need a change ticket".into())
                } else {
                    Vote::Abstain
                },
                may_override: false,
                error: None,
            }];
            if cmd == "reboot" {
                votes.push(PluginVote {
                    plugin: "flaky".into(),
                    vote: Vote::Deny("policy plugin flaky failed (timeout); failing closed".into()),
                    may_override: false,
                    error: Some(HookFailure {
                        kind: "timeout".into(),
                        message: "call exceeded timeout_ms = 50".into(),
                    }),
                });
            }
            votes
        }
    }

    fn policy() -> Policy {
        let spec = PolicySpec::from_toml_str(
            "[policy]\n[[policy.deny_commands]]\nid = \"no-rm-root\"\npattern = \"^rm -rf /$\"\n",
        )
        .unwrap();
        Policy::compile(&spec).unwrap()
    }

    const CASES: &str = r#"
[[case]]
name = "a restart without a ticket"
expect = "deny"
expect_rules = ["plugin:change-window"]
request = { kind = "exec", command = "systemctl restart nginx" }

[[case]]
name = "a restart with a ticket"
expect = "allow"
request = { kind = "exec", command = "systemctl restart nginx", ticket = "CHG-7" }

[[case]]
name = "the regex rules still decide first"
expect = "deny"
expect_rules = ["no-rm-root"]
request = { kind = "exec", command = "rm -rf /" }
"#;

    #[test]
    fn fixtures_see_the_plugins_votes() {
        let report = run_fixtures_with(&policy(), CASES, Some(&Hooks)).unwrap();
        assert!(report.passed(), "{report}");
        assert_eq!(report.total, 3);
    }

    #[test]
    fn without_hooks_the_plugin_cases_fail_and_say_so() {
        let report = run_fixtures(&policy(), CASES).unwrap();
        assert_eq!(report.mismatches.len(), 1, "{report}");
        let m = &report.mismatches[0];
        assert_eq!((m.expected, m.got), (Verdict::Deny, Verdict::Allow));
        assert_eq!(m.missing_rules, ["plugin:change-window"]);
        assert!(m.plugin_votes.is_empty());
    }

    #[test]
    fn a_mismatch_names_the_failed_plugin() {
        let text =
            "[[case]]\nexpect = \"allow\"\nrequest = { kind = \"exec\", command = \"reboot\" }\n";
        let report = run_fixtures_with(&policy(), text, Some(&Hooks)).unwrap();
        let m = &report.mismatches[0];
        assert_eq!(m.got, Verdict::Deny);
        assert_eq!(m.got_rules, ["plugin:flaky"]);
        assert_eq!(m.plugin_votes.len(), 2);
        let shown = report.to_string();
        assert!(
            shown.contains("plugin flaky failed: timeout: call exceeded timeout_ms = 50"),
            "{shown}"
        );
        assert!(
            shown.contains("0 of 1 policy test case(s) passed"),
            "{shown}"
        );
    }
}
