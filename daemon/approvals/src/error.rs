//! The one error type of this crate.

/// Why an approval operation was refused or failed. Every refusal leaves the records unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ApprovalError {
    /// No approval with that id (or it belongs to someone else and may not be used by this
    /// caller).
    #[error("no approval {id:?}")]
    NotFound {
        /// The id asked for.
        id: String,
    },
    /// The id is not of the form the daemon hands out (`apr-` and 16 hex digits).
    #[error("{id:?} is not an approval id (expected apr- followed by 16 hex digits)")]
    BadId {
        /// The rejected id (escaped by `Debug`).
        id: String,
    },
    /// The requester tried to review their own request; another uid must.
    #[error(
        "uid {uid} asked for this approval and cannot review it; another user must (admins and root included)"
    )]
    SelfApproval {
        /// The requester's uid.
        uid: u32,
    },
    /// This reviewer already gave a decision on this request.
    #[error("uid {uid} already reviewed this request; a quorum needs distinct reviewers")]
    AlreadyReviewed {
        /// The reviewer's uid.
        uid: u32,
    },
    /// The reviewer's role counts toward none of the request's quorum conditions.
    #[error("role {role} cannot review this request: it needs {needs}")]
    NotEligible {
        /// The reviewer's role.
        role: tether_model::Role,
        /// The quorum, as text (`1 × operator`).
        needs: String,
    },
    /// The request is no longer pending (or, when used, not granted).
    #[error("approval {id} is {state}, not {wanted}")]
    WrongState {
        /// The approval.
        id: String,
        /// Its state now.
        state: &'static str,
        /// The state the operation needs.
        wanted: &'static str,
    },
    /// The approval expired before it was decided or used.
    #[error("approval {id} expired; ask for a new one")]
    Expired {
        /// The approval.
        id: String,
    },
    /// The request being run differs from what was approved (caller, command or targets).
    #[error(
        "approval {id} was granted for {approved}, not for this request ({asked}); any change of command or targets needs a new approval"
    )]
    Mismatch {
        /// The approval.
        id: String,
        /// What was approved.
        approved: String,
        /// What was asked now.
        asked: String,
    },
    /// Too many requests are pending.
    #[error(
        "{scope} already has {limit} pending approval requests; wait for decisions or let some expire"
    )]
    TooManyPending {
        /// `this caller` or `the daemon`.
        scope: &'static str,
        /// The limit.
        limit: usize,
    },
    /// A field of the request is unusable.
    #[error("{field}: {message}")]
    Invalid {
        /// The field (`allowance.pattern`, `reason`, ...).
        field: &'static str,
        /// What is wrong and what to do.
        message: String,
    },
    /// The caller may not do this (revoke someone else's grant without being admin).
    #[error("{0}")]
    Forbidden(String),
    /// The store could not read or write a record.
    #[error("approval store {path}: {reason}")]
    Store {
        /// The file or directory.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The system random generator failed while making an id.
    #[error("cannot make an approval id: the system random generator failed ({0})")]
    Random(String),
}
