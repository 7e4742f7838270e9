//! `tether policy test FILE`: a TOML file of `{request, expect}` cases run against a policy.
//!
//! ```toml
//! [[case]]
//! name = "operators can't wipe the disk"
//! expect = "deny"                 # allow | deny | warn | require-approval
//! expect_rules = ["no-rm-root"]   # optional: these ids must be among the decision's rule_ids
//! request = { kind = "exec", command = "rm -rf /", role = "operator", host = { name = "web1" } }
//! ```
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Policy, PolicyError, Request, Verdict};

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

/// One case whose decision differed from what the file expected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
}

/// The outcome of running a fixture file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
        }
        write!(
            f,
            "{} of {} policy test case(s) passed",
            self.total - self.mismatches.len(),
            self.total
        )
    }
}

/// Runs every case of the fixture file `text` against `policy`. A file that doesn't parse is an
/// error (with line and column); cases that don't match are listed in the report.
pub fn run_fixtures(policy: &Policy, text: &str) -> Result<FixtureReport, PolicyError> {
    let file: FixtureFile = toml::from_str(text).map_err(|e| PolicyError::Parse {
        what: "policy test fixtures",
        message: e.to_string(),
    })?;
    let mut mismatches = Vec::new();
    for (i, case) in file.cases.iter().enumerate() {
        let d = policy.evaluate(&case.request);
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
            });
        }
    }
    Ok(FixtureReport {
        total: file.cases.len(),
        mismatches,
    })
}
