//! The records: who asked for what, the binding hash, the reviews and the state.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tether_model::Role;

use crate::ApprovalError;

/// Who asked (or reviewed): the peer's uid and its principal name (login name, or `uid:N`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    /// The uid from SO_PEERCRED.
    pub uid: u32,
    /// The login name, or `uid:N` when the uid has none.
    pub name: String,
}

/// What an approval is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Subject {
    /// One exact command on an exact, sorted set of hosts.
    Exec {
        /// The command, byte for byte.
        command: String,
        /// The resolved target hosts, sorted and deduplicated.
        targets: Vec<String>,
    },
    /// A role for the requester for a while (just-in-time access).
    Access {
        /// The role asked for.
        role: Role,
        /// How long the role lasts once granted, seconds.
        duration_secs: u64,
    },
}

impl Subject {
    /// An exec subject with its targets sorted and deduplicated (the binding's canonical form).
    pub fn exec(command: impl Into<String>, targets: impl IntoIterator<Item = String>) -> Subject {
        let mut targets: Vec<String> = targets.into_iter().collect();
        targets.sort();
        targets.dedup();
        Subject::Exec {
            command: command.into(),
            targets,
        }
    }

    /// `exec` or `access`.
    pub fn kind(&self) -> &'static str {
        match self {
            Subject::Exec { .. } => "exec",
            Subject::Access { .. } => "access",
        }
    }

    /// One line for messages: `"cmd" on a, b` or `role operator for 7200 s`.
    pub fn describe(&self) -> String {
        match self {
            Subject::Exec { command, targets } => {
                format!("{command:?} on {}", targets.join(", "))
            }
            Subject::Access {
                role,
                duration_secs,
            } => format!("role {role} for {duration_secs} s"),
        }
    }
}

/// The canonical bytes hashed into a binding. Field order is fixed by this struct; JSON string
/// escaping makes the encoding unambiguous (no separator can be forged by a command).
#[derive(Serialize)]
struct Canonical<'a> {
    v: u8,
    uid: u32,
    principal: &'a str,
    subject: &'a Subject,
    expires_at_ms: Option<u64>,
}

fn digest(who: &Principal, subject: &Subject, expires_at_ms: Option<u64>) -> String {
    let canonical = Canonical {
        v: 1,
        uid: who.uid,
        principal: &who.name,
        subject,
        expires_at_ms,
    };
    // Serializing plain strings and integers cannot fail; an empty input would only make every
    // binding differ from the stored one (fail closed).
    let bytes = serde_json::to_vec(&canonical).unwrap_or_default();
    hex::encode(Sha256::digest(&bytes))
}

/// SHA-256 (hex) of (caller uid + principal, the exact subject with its sorted targets, expiry):
/// what an approval is bound to. Any change of one of them gives another binding.
pub fn binding(who: &Principal, subject: &Subject, expires_at_ms: u64) -> String {
    digest(who, subject, Some(expires_at_ms))
}

/// The binding without the expiry: finds an already pending request for the same thing.
pub fn subject_key(who: &Principal, subject: &Subject) -> String {
    digest(who, subject, None)
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Waiting for reviews.
    Pending,
    /// The quorum approved. Exec: may run once before expiry. Access: the role is in force
    /// until the grant's expiry.
    Granted,
    /// A reviewer denied it (or the requester withdrew it).
    Denied,
    /// It was not decided or used in time, or (access) the grant lapsed.
    Expired,
    /// The approved command ran (exec only; a single use).
    Used,
    /// An access grant taken back before its expiry.
    Revoked,
}

impl State {
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "pending",
            State::Granted => "granted",
            State::Denied => "denied",
            State::Expired => "expired",
            State::Used => "used",
            State::Revoked => "revoked",
        }
    }

    /// No further change can happen.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Denied | State::Expired | State::Used | State::Revoked
        )
    }
}

impl std::str::FromStr for State {
    type Err = ApprovalError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            State::Pending,
            State::Granted,
            State::Denied,
            State::Expired,
            State::Used,
            State::Revoked,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| ApprovalError::Invalid {
            field: "state",
            message: format!(
                "{s:?} is not a state; use pending, granted, denied, expired, used or revoked"
            ),
        })
    }
}

/// One quorum condition: `count` distinct reviewers holding `role` (admins count for any role).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumRule {
    /// The role a reviewer must hold.
    pub role: Role,
    /// How many distinct reviewers.
    pub count: u32,
}

/// A reviewer's scoped allowance as asked: instead of a single use, commands matching `pattern`
/// on `hosts` by the same requester, for `ttl_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowanceSpec {
    /// A regular expression that must match a whole command (anchored at both ends).
    pub pattern: String,
    /// Host names, each one of the prompting request's targets.
    pub hosts: Vec<String>,
    /// How long it lasts from the grant, seconds.
    pub ttl_secs: u64,
}

/// An allowance in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowance {
    /// The anchored pattern (see [`AllowanceSpec::pattern`]).
    pub pattern: String,
    /// The hosts it covers (sorted).
    pub hosts: Vec<String>,
    /// When it ends, unix milliseconds.
    pub expires_at_ms: u64,
}

/// One reviewer's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// Who.
    pub reviewer: Principal,
    /// Their role when they reviewed.
    pub role: Role,
    /// Approved (`true`) or denied.
    pub approve: bool,
    /// Their comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// An allowance they granted instead of a single use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<AllowanceSpec>,
    /// When, unix milliseconds.
    pub at_ms: u64,
}

/// One approval request and everything that happened to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// `apr-` and 16 hex digits.
    pub id: String,
    /// Who asked.
    pub requester: Principal,
    /// For what.
    pub subject: Subject,
    /// Why (the policy's reason, or the requester's for access).
    pub reason: String,
    /// When it was asked, unix milliseconds.
    pub created_at_ms: u64,
    /// Deadline for deciding and (exec) using it, unix milliseconds.
    pub expires_at_ms: u64,
    /// [`binding`] of requester, subject and expiry.
    pub binding: String,
    /// Every condition must be met together.
    pub quorum: Vec<QuorumRule>,
    /// Where it is.
    pub state: State,
    /// Decisions so far.
    pub reviews: Vec<Review>,
    /// A scoped allowance the reviewers granted (exec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<Allowance>,
    /// When it reached its current state (other than pending), unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_at_ms: Option<u64>,
    /// When the approved command ran (exec).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at_ms: Option<u64>,
    /// When the granted role lapses (access).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_expires_at_ms: Option<u64>,
}

/// Whether `id` has the form the daemon hands out: `apr-` and 16 lowercase hex digits. Checked
/// before an id is used as a file name.
pub fn valid_id(id: &str) -> bool {
    id.strip_prefix("apr-").is_some_and(|h| {
        h.len() == 16
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// A new random id.
pub fn new_id() -> Result<String, ApprovalError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| ApprovalError::Random(e.to_string()))?;
    Ok(format!("apr-{}", hex::encode(b)))
}

/// The allowance pattern that matches exactly `command` and nothing else.
pub fn exact_pattern(command: &str) -> String {
    regex::escape(command)
}
