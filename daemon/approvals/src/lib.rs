//! Approvals and just-in-time access, sans-IO.
//!
//! A `require-approval` policy verdict becomes an approval request bound to the SHA-256 of
//! (caller uid + principal, the exact command, the resolved sorted target list, expiry)
//! ([`binding`]). Its life: `pending` → `granted` | `denied` | `expired`; a granted exec approval
//! → `used` (exactly once, and only for a request with the same binding) or `expired`.
//!
//! Rules ([`Approvals`]):
//! - **No self-approval**: the reviewer's uid must differ from the requester's — for admins and
//!   root as well; there is no bypass.
//! - **Quorum** ([`quorum`]): every condition together (`2 × operator + 1 × admin`); distinct
//!   reviewers; an admin counts for any role.
//! - **Single use**: [`Approvals::check_use`] then [`Approvals::mark_used`] under one lock; any
//!   change of caller, command or targets gives another binding and is refused.
//! - **Scoped allowances**: a reviewer may grant "commands matching PATTERN on HOSTS for TTL"
//!   instead of one use. *Not wider, by construction*: the (fully anchored) pattern must match
//!   the prompting command, the hosts must be a non-empty subset of the prompting request's
//!   resolved targets (names, frozen at grant time, so a host enrolled later is never covered),
//!   the requester is the same, and the TTL is bounded by `max_allowance`. An allowance only
//!   replaces the approval step: the policy is still checked for every command, and a deny stays
//!   a deny. With a quorum of several, it applies only when every approving reviewer gave the
//!   same allowance; otherwise the grant is a single use.
//! - **Just-in-time access**: an access request names a role and a duration; one reviewer who
//!   holds that role (or an admin), not the requester, grants it; [`Approvals::granted_role`] is
//!   consulted with `now` on every request, so the role is gone at expiry without anyone acting.
//!
//! Records persist through [`ApprovalStore`] ([`FileStore`] by default) so pending requests
//! survive a restart; the number pending is bounded per caller and in total.
#![forbid(unsafe_code)]

mod engine;
mod error;
pub mod quorum;
mod record;
mod store;

pub use engine::{Approvals, Change, MAX_PATTERN_BYTES, MAX_TEXT_BYTES, Requested, Settings};
pub use error::ApprovalError;
pub use record::{
    Allowance, AllowanceSpec, Principal, QuorumRule, Record, Review, State, Subject, binding,
    exact_pattern, new_id, subject_key, valid_id,
};
pub use store::{ApprovalStore, FileStore, MAX_RECORD_BYTES};

#[cfg(test)]
mod tests;
