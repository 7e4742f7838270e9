//! `/v1/approvals` and `/v1/access`: approval requests made by `require-approval` verdicts,
//! their reviews, scoped allowances, and just-in-time role grants.

use serde::{Deserialize, Serialize};
use tether_model::Role;

/// Query of `GET /v1/approvals`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsQuery {
    /// Only requests in this state: `pending`, `granted`, `denied`, `expired`, `used`, `revoked`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Only `exec` or `access` requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// An approval's id (path parameter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalRef {
    /// `apr-` and 16 hex digits.
    pub id: String,
}

/// A scoped allowance a reviewer grants instead of a single use: the same requester may run
/// commands matching `pattern` on `hosts` until `ttl_secs` have passed, each still checked by
/// the policy. Never wider than the request: the pattern must match its whole command, the hosts
/// must be among its targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AllowanceRequest {
    /// A regular expression matched against the whole command (anchored at both ends).
    /// Default: exactly the request's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// A selector resolved now against the inventory; every host it picks must be one of the
    /// request's targets. Default: the request's targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hosts: Option<String>,
    /// How long it lasts, seconds (at most `approvals.max_allowance`).
    pub ttl_secs: u64,
}

/// Body of `POST /v1/approvals/{id}/approve`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ApproveRequest {
    /// The request to approve.
    pub id: String,
    /// Why (kept in the record and the audit log), at most 1024 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// Grant a scoped allowance instead of a single use (exec requests only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<AllowanceRequest>,
}

/// Body of `POST /v1/approvals/{id}/deny`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DenyRequest {
    /// The request to deny (or, for its requester, withdraw).
    pub id: String,
    /// Why, at most 1024 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// A user as the daemon saw them (SO_PEERCRED).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalPerson {
    /// uid.
    pub uid: u32,
    /// Login name, or `uid:N`.
    pub user: String,
}

/// One quorum condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuorumInfo {
    /// The role a reviewer must hold (admins count for any).
    pub role: Role,
    /// How many distinct reviewers.
    pub count: u32,
}

/// An allowance as granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AllowanceInfo {
    /// Anchored regular expression over the whole command.
    pub pattern: String,
    /// The hosts it covers.
    pub hosts: Vec<String>,
    /// When it ends (unix seconds); for a review's proposal, its length in seconds instead.
    pub expires_at: u64,
}

/// One reviewer's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReviewInfo {
    /// Who.
    pub reviewer: ApprovalPerson,
    /// Their role when they reviewed.
    pub role: Role,
    /// `approve` or `deny`.
    pub decision: String,
    /// Their comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The allowance they proposed: pattern, hosts and its TTL in seconds (in `expires_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<AllowanceInfo>,
    /// When (unix seconds).
    pub at: u64,
}

/// One approval request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalInfo {
    /// `apr-` and 16 hex digits.
    pub id: String,
    /// `exec` (a command on hosts) or `access` (a role for a while).
    pub kind: String,
    /// `pending`, `granted`, `denied`, `expired`, `used` or `revoked`.
    pub state: String,
    /// Who asked.
    pub requester: ApprovalPerson,
    /// Exec: the exact command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Exec: the resolved targets, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Access: the role asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Access: how long the role lasts once granted, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<u64>,
    /// Why it was asked (the policy's reason, or the requester's).
    pub reason: String,
    /// SHA-256 (hex) of requester, subject and expiry: what the approval is bound to.
    pub binding: String,
    /// When it was asked (unix seconds).
    pub created_at: u64,
    /// Deadline for deciding and (exec) using it (unix seconds).
    pub expires_at: u64,
    /// Every condition must be met together.
    pub quorum: Vec<QuorumInfo>,
    /// Whether the quorum is met.
    pub quorum_met: bool,
    /// Decisions so far.
    pub reviews: Vec<ReviewInfo>,
    /// The scoped allowance granted, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance: Option<AllowanceInfo>,
    /// When the approved command ran (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_at: Option<u64>,
    /// Access: when the granted role lapses (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant_expires_at: Option<u64>,
}

/// Answer of `GET /v1/approvals` and `GET /v1/access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApprovalList {
    /// Newest first.
    pub approvals: Vec<ApprovalInfo>,
}

/// Body of `POST /v1/access`: ask for a role for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessAsk {
    /// The role wanted.
    pub role: Role,
    /// For how long once granted, seconds (at most `approvals.max_access`).
    pub duration_secs: u64,
    /// Why (required, at most 1024 bytes).
    pub reason: String,
}

/// Query of `GET /v1/access`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessQuery {
    /// Only requests in this state (`pending`, `granted`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
}

/// A just-in-time role in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoleGrant {
    /// The access request that granted it.
    pub id: String,
    /// Who holds it.
    pub holder: ApprovalPerson,
    /// The role.
    pub role: Role,
    /// When it lapses (unix seconds).
    pub expires_at: u64,
}

endpoint! {
    /// approval requests (?state=pending, ?kind=exec|access), newest first
    ApprovalsList: Get "/v1/approvals", ApprovalsQuery => ApprovalList;
}
endpoint! {
    /// one approval request with its reviews (poll it to wait for a decision)
    ApprovalsShow: Get "/v1/approvals/{id}", ApprovalRef => ApprovalInfo;
}
endpoint! {
    /// approve a request (another uid than its requester; optionally as a scoped allowance)
    ApprovalsApprove: Post "/v1/approvals/{id}/approve", ApproveRequest => ApprovalInfo;
}
endpoint! {
    /// deny a request (its requester may withdraw it)
    ApprovalsDeny: Post "/v1/approvals/{id}/deny", DenyRequest => ApprovalInfo;
}
endpoint! {
    /// ask for a role for a while (just-in-time access); approve it with /v1/approvals/{id}/approve
    AccessRequest: Post "/v1/access", AccessAsk => ApprovalInfo;
}
endpoint! {
    /// just-in-time access requests and grants
    AccessList: Get "/v1/access", AccessQuery => ApprovalList;
}
endpoint! {
    /// take back a granted role before its expiry (its holder or an admin)
    AccessRevoke: Post "/v1/access/{id}/revoke", ApprovalRef => ApprovalInfo;
}
