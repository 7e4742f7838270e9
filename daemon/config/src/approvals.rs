//! `[approvals]`: how long approval requests wait, who must approve, and the bounds.
//!
//! ```toml
//! [approvals]
//! expiry = "15m"                 # a request must be decided (and an exec used) within this
//! max_pending_per_caller = 20
//! max_pending = 1000
//! max_allowance = "8h"           # longest scoped allowance a reviewer may grant
//! max_access = "12h"             # longest just-in-time role grant
//! [[approvals.quorum]]           # every condition together; default: one operator
//! role = "operator"
//! count = 2
//! [[approvals.quorum]]
//! role = "admin"
//! count = 1
//! ```
//! A reviewer fills one condition; an admin counts for any role; the requester never counts.

use serde::{Deserialize, Serialize};
use tether_model::Role;

use crate::schema::parse_duration_secs;

/// `[approvals]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApprovalsSection {
    /// Deadline for deciding a request and (exec) running it once granted (`15m`).
    pub expiry: String,
    /// Most pending requests per requester uid (1–10000).
    pub max_pending_per_caller: usize,
    /// Most pending requests in all (1–100000).
    pub max_pending: usize,
    /// Longest scoped allowance a reviewer may grant (`8h`).
    pub max_allowance: String,
    /// Longest just-in-time role grant (`12h`).
    pub max_access: String,
    /// The quorum for exec approvals: every condition together.
    #[serde(rename = "quorum")]
    pub quorum: Vec<QuorumCondition>,
}

/// `[[approvals.quorum]]`: `count` distinct reviewers holding `role`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuorumCondition {
    /// The role (`operator`, `admin`, ...).
    pub role: Role,
    /// How many (1–10).
    pub count: u32,
}

impl Default for ApprovalsSection {
    fn default() -> Self {
        ApprovalsSection {
            expiry: "15m".to_owned(),
            max_pending_per_caller: 20,
            max_pending: 1000,
            max_allowance: "8h".to_owned(),
            max_access: "12h".to_owned(),
            quorum: vec![QuorumCondition {
                role: Role::Operator,
                count: 1,
            }],
        }
    }
}

impl ApprovalsSection {
    /// `expiry` in seconds (only after [`ApprovalsSection::validate`] passed; else 15 min).
    pub fn expiry_secs(&self) -> u64 {
        parse_duration_secs(&self.expiry).unwrap_or(900)
    }

    /// `max_allowance` in seconds (default 8 h when invalid).
    pub fn max_allowance_secs(&self) -> u64 {
        parse_duration_secs(&self.max_allowance).unwrap_or(8 * 3600)
    }

    /// `max_access` in seconds (default 12 h when invalid).
    pub fn max_access_secs(&self) -> u64 {
        parse_duration_secs(&self.max_access).unwrap_or(12 * 3600)
    }

    /// Checks durations, ranges and the quorum; each problem as (key, message).
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, value, max) in [
            ("approvals.expiry", &self.expiry, 7 * 86_400),
            ("approvals.max_allowance", &self.max_allowance, 30 * 86_400),
            ("approvals.max_access", &self.max_access, 30 * 86_400),
        ] {
            match parse_duration_secs(value) {
                Some(s) if s <= max => {}
                Some(_) => out.push((
                    key.into(),
                    format!("{value:?} is longer than {} days", max / 86_400),
                )),
                None => out.push((
                    key.into(),
                    format!("{value:?} is not a duration; write e.g. 90s, 15m, 8h or 2d"),
                )),
            }
        }
        if !(1..=10_000).contains(&self.max_pending_per_caller) {
            out.push((
                "approvals.max_pending_per_caller".into(),
                format!("{} is not in 1..=10000", self.max_pending_per_caller),
            ));
        }
        if !(1..=100_000).contains(&self.max_pending) {
            out.push((
                "approvals.max_pending".into(),
                format!("{} is not in 1..=100000", self.max_pending),
            ));
        }
        if self.quorum.is_empty() {
            out.push((
                "approvals.quorum".into(),
                "name at least one condition, e.g. [[approvals.quorum]] role = \"operator\" count = 1".into(),
            ));
        }
        for (i, q) in self.quorum.iter().enumerate() {
            if !(1..=10).contains(&q.count) {
                out.push((
                    format!("approvals.quorum[{i}].count"),
                    format!("{} is not in 1..=10", q.count),
                ));
            }
            if q.role == Role::ReadOnly {
                out.push((
                    format!("approvals.quorum[{i}].role"),
                    "read_only reviewers cannot approve; use operator, auditor or admin".into(),
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(ApprovalsSection::default().validate().is_empty());
        assert_eq!(ApprovalsSection::default().expiry_secs(), 900);
        let bad = ApprovalsSection {
            expiry: "soon".into(),
            max_pending: 0,
            quorum: vec![QuorumCondition {
                role: Role::ReadOnly,
                count: 0,
            }],
            ..ApprovalsSection::default()
        };
        let keys: Vec<String> = bad.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "approvals.expiry",
                "approvals.max_pending",
                "approvals.quorum[0].count",
                "approvals.quorum[0].role"
            ]
        );
        let parsed: ApprovalsSection = toml::from_str(
            "expiry = \"1m\"\n[[quorum]]\nrole = \"operator\"\ncount = 2\n[[quorum]]\nrole = \"admin\"\ncount = 1\n",
        )
        .unwrap();
        assert_eq!(parsed.quorum.len(), 2);
        assert!(parsed.validate().is_empty());
    }
}
