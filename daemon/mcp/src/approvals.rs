//! `approvals_status`, and the wait `exec` does for a decision when given `wait_secs`.
//!
//! There is deliberately no tool that approves or denies: a decision is a person's, made over
//! the control socket from another uid, and the daemon refuses approvals that arrive through
//! MCP (`approval_via_mcp`) in any case.

use std::time::{Duration, Instant};

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::{Json, Peer, RoleServer, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tether_api::{ApprovalInfo, ApprovalRef, ApprovalsShow};
use tokio_util::sync::CancellationToken;

use crate::tools::{TetherMcp, failed};

/// Input of `approvals_status`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ApprovalsStatusInput {
    /// The approval request (`apr-` and 16 hex digits), from an `approval_pending` result.
    pub id: String,
}

/// One quorum condition.
#[derive(Debug, Serialize, JsonSchema)]
pub struct QuorumOut {
    /// The role a reviewer must hold (admins count for any).
    pub role: String,
    /// How many distinct reviewers.
    pub count: u32,
}

/// One reviewer's decision.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ReviewOut {
    /// The reviewer's login name (or `uid:N`).
    pub reviewer: String,
    /// The reviewer's uid.
    pub uid: u32,
    /// Their role when they reviewed.
    pub role: String,
    /// `approve` or `deny`.
    pub decision: String,
    /// Their comment.
    pub comment: Option<String>,
    /// When, unix seconds.
    pub at: u64,
}

/// Output of `approvals_status`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct ApprovalsStatusOutput {
    /// The approval request.
    pub id: String,
    /// `exec` (a command on hosts) or `access` (a role for a while).
    pub kind: String,
    /// `pending`, `granted` (run the command now, with `approval` set), `denied`, `expired`,
    /// `used` or `revoked`.
    pub state: String,
    /// Who asked (login name or `uid:N`).
    pub requester: String,
    /// Exec: the exact command approved or asked for.
    pub command: Option<String>,
    /// Exec: the hosts, sorted. The command runs only on exactly these.
    pub hosts: Vec<String>,
    /// Why an approval is needed.
    pub reason: String,
    /// When it was asked, unix seconds.
    pub created_at: u64,
    /// Deadline for deciding and using it, unix seconds.
    pub expires_at: u64,
    /// Every condition must be met together.
    pub quorum: Vec<QuorumOut>,
    /// Whether the quorum is met.
    pub quorum_met: bool,
    /// The reviewers' decisions so far.
    pub reviews: Vec<ReviewOut>,
    /// When the approved command ran, unix seconds.
    pub used_at: Option<u64>,
}

impl From<ApprovalInfo> for ApprovalsStatusOutput {
    fn from(a: ApprovalInfo) -> Self {
        ApprovalsStatusOutput {
            id: a.id,
            kind: a.kind,
            state: a.state,
            requester: a.requester.user,
            command: a.command,
            hosts: a.hosts,
            reason: a.reason,
            created_at: a.created_at,
            expires_at: a.expires_at,
            quorum: a
                .quorum
                .into_iter()
                .map(|q| QuorumOut {
                    role: q.role.to_string(),
                    count: q.count,
                })
                .collect(),
            quorum_met: a.quorum_met,
            reviews: a
                .reviews
                .into_iter()
                .map(|r| ReviewOut {
                    reviewer: r.reviewer.user,
                    uid: r.reviewer.uid,
                    role: r.role.to_string(),
                    decision: r.decision,
                    comment: r.comment,
                    at: r.at,
                })
                .collect(),
            used_at: a.used_at,
        }
    }
}

#[tool_router(router = approvals_router, vis = "pub(crate)")]
impl TetherMcp {
    /// One approval request's state, reviewers and expiry. Poll it after `exec` answered
    /// `approval_pending`; once `granted`, call exec again with `approval` set to the id. A
    /// person approves or denies outside MCP (`tether approvals approve ID` from another uid);
    /// no tool can.
    #[tool(annotations(read_only_hint = true))]
    pub(crate) async fn approvals_status(
        &self,
        Parameters(input): Parameters<ApprovalsStatusInput>,
    ) -> Result<Json<ApprovalsStatusOutput>, String> {
        let a = self
            .client
            .call::<ApprovalsShow>(&ApprovalRef { id: input.id })
            .await
            .map_err(failed)?;
        Ok(Json(ApprovalsStatusOutput::from(a)))
    }
}

/// How a wait for an approval ended.
pub(crate) enum Waited {
    /// Granted after this many polls (the progress sent so far).
    Granted {
        /// Progress notifications' last value.
        polls: u64,
    },
    /// Still pending when the wait ran out.
    Pending,
    /// Denied, expired, revoked or used: the message for the `isError` result.
    Refused(String),
}

/// Polls approval `id` every second for up to `wait_secs`, sending a progress notification per
/// poll (`polls` of `wait_secs`, with the state and quorum as the message).
pub(crate) async fn wait(
    client: &tether_api::Client,
    id: &str,
    wait_secs: u64,
    progress: Option<&ProgressToken>,
    peer: &Peer<RoleServer>,
    ct: &CancellationToken,
) -> Result<Waited, String> {
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    let mut polls = 0u64;
    loop {
        let a = client
            .call::<ApprovalsShow>(&ApprovalRef { id: id.to_owned() })
            .await
            .map_err(failed)?;
        polls += 1;
        let approvals = a.reviews.iter().filter(|r| r.decision == "approve").count();
        let needed: u32 = a.quorum.iter().map(|q| q.count).sum();
        if let Some(token) = progress {
            let _ = peer
                .notify_progress(
                    ProgressNotificationParam::new(token.clone(), polls as f64)
                        .with_total(wait_secs.max(polls) as f64)
                        .with_message(format!(
                            "waiting for approval {id}: {}, {approvals}/{needed} approvals",
                            a.state
                        )),
                )
                .await;
        }
        match a.state.as_str() {
            "granted" => return Ok(Waited::Granted { polls }),
            "pending" => {}
            _ => return Ok(Waited::Refused(refused(&a))),
        }
        if Instant::now() >= deadline {
            return Ok(Waited::Pending);
        }
        tokio::select! {
            () = ct.cancelled() => {
                return Err(format!("cancelled by the client; nothing ran and approval {id} stays pending"));
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Why a decided approval can't be used, naming who denied it.
fn refused(a: &ApprovalInfo) -> String {
    let by = a
        .reviews
        .iter()
        .rev()
        .find(|r| r.decision == "deny")
        .map(|r| {
            format!(
                " by {}{}",
                r.reviewer.user,
                r.comment
                    .as_deref()
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default()
            )
        })
        .unwrap_or_default();
    format!(
        "approval {} is {}{by}; nothing was run. A new request needs a new approval: call exec again to ask for one",
        a.id, a.state
    )
}
