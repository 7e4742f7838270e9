//! `/v1/approvals`: list, show, approve and deny approval requests; and the gate `POST /v1/exec`
//! passes through when the policy says `require-approval` or the caller brings an approval.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;
use tether_api::{
    ApprovalInfo, ApprovalList, ApprovalRef, ApprovalsQuery, ApproveRequest, DenyRequest,
};
use tether_approvals::{AllowanceSpec, ApprovalError, Principal, Requested, State, Subject};
use tether_model::Role;
use tether_model::selector::Selector;

use super::Ctx;
use crate::approvals::{ApprovalService, alert_requested, fail, in_state, info, now_ms};
use crate::http::Fail;

/// The daemon's approvals, or `503`.
pub(super) fn service(ctx: &Ctx) -> Result<Arc<ApprovalService>, Fail> {
    ctx.state.approvals.clone().ok_or_else(|| {
        Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "approvals_unavailable",
            "this tetherd runs without its approval store",
            "start tetherd normally (tetherd run)",
        )
    })
}

/// The caller as the approvals core sees them.
pub(super) fn principal(ctx: &Ctx) -> Principal {
    Principal {
        uid: ctx.caller.uid,
        name: ctx
            .caller
            .user
            .clone()
            .unwrap_or_else(|| format!("uid:{}", ctx.caller.uid)),
    }
}

/// Read-only callers see only their own requests; everyone else sees all.
pub(super) fn visible(ctx: &Ctx, r: &tether_approvals::Record) -> bool {
    ctx.role != Role::ReadOnly || r.requester.uid == ctx.caller.uid
}

pub(super) fn parse_state(state: Option<&str>) -> Result<Option<State>, Fail> {
    state.map(str::parse::<State>).transpose().map_err(fail)
}

/// `GET /v1/approvals`.
pub(crate) async fn list(ctx: Ctx, q: ApprovalsQuery) -> Result<ApprovalList, Fail> {
    let svc = service(&ctx)?;
    let state = parse_state(q.state.as_deref())?;
    if let Some(k) = q.kind.as_deref()
        && k != "exec"
        && k != "access"
    {
        return Err(Fail::bad_request(
            "invalid_approval",
            format!("kind {k:?} is neither exec nor access"),
            "use ?kind=exec or ?kind=access",
        ));
    }
    let mut approvals: Vec<ApprovalInfo> = svc
        .read(|e| {
            e.records()
                .filter(|r| visible(&ctx, r) && in_state(r, state))
                .filter(|r| q.kind.as_deref().is_none_or(|k| r.subject.kind() == k))
                .map(info)
                .collect()
        })
        .await;
    approvals.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(ApprovalList { approvals })
}

/// `GET /v1/approvals/{id}`.
pub(crate) async fn show(ctx: Ctx, req: ApprovalRef) -> Result<ApprovalInfo, Fail> {
    let svc = service(&ctx)?;
    svc.read(|e| match e.get(&req.id) {
        Ok(r) if visible(&ctx, r) => Ok(info(r)),
        Ok(_) => Err(fail(ApprovalError::NotFound { id: req.id.clone() })),
        Err(err) => Err(fail(err)),
    })
    .await
}

/// The allowance a reviewer asked for, made concrete: the pattern defaults to exactly the
/// command, the host selector is resolved now (default: the request's targets).
async fn allowance(
    ctx: &Ctx,
    svc: &ApprovalService,
    req: &ApproveRequest,
) -> Result<Option<AllowanceSpec>, Fail> {
    let Some(a) = &req.allowance else {
        return Ok(None);
    };
    let subject = svc
        .read(|e| e.get(&req.id).map(|r| r.subject.clone()))
        .await
        .map_err(fail)?;
    let Subject::Exec { command, targets } = subject else {
        return Err(fail(ApprovalError::Invalid {
            field: "allowance",
            message: "only exec approvals can be granted as an allowance".to_owned(),
        }));
    };
    let hosts = match a.hosts.as_deref() {
        None => targets,
        Some(sel) => {
            let parsed = Selector::parse(sel).map_err(|e| {
                Fail::bad_request(
                    "invalid_selector",
                    format!("allowance hosts: {e}"),
                    "see `tether hosts list --help` for the selector syntax",
                )
            })?;
            super::vpn::hub(ctx)?
                .inventory()
                .select(&parsed)
                .into_iter()
                .map(|h| h.name)
                .collect()
        }
    };
    Ok(Some(AllowanceSpec {
        pattern: a
            .pattern
            .clone()
            .unwrap_or_else(|| tether_approvals::exact_pattern(&command)),
        hosts,
        ttl_secs: a.ttl_secs,
    }))
}

/// `POST /v1/approvals/{id}/approve`.
pub(crate) async fn approve(ctx: Ctx, req: ApproveRequest) -> Result<ApprovalInfo, Fail> {
    let svc = service(&ctx)?;
    // An answer that comes back over an AI agent's channel is not a person's approval.
    if ctx.via == tether_audit::Via::Mcp {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            "approval_via_mcp",
            "approvals are not accepted from the MCP server: an agent cannot approve anything",
            "a person approves with `tether approvals approve ID` from their own shell",
        ));
    }
    let allowance = allowance(&ctx, &svc, &req).await?;
    // A just-in-time role never approves another just-in-time request: access requests are
    // reviewed with the reviewer's configured role, so grants can't be chained.
    let access = svc
        .read(|e| {
            e.get(&req.id)
                .is_ok_and(|r| matches!(r.subject, Subject::Access { .. }))
        })
        .await;
    let role = if access {
        ctx.state.roles().role_of(&ctx.caller).ok_or_else(|| {
            fail(ApprovalError::Forbidden(format!(
                "{} holds no configured role, so it cannot grant access",
                ctx.caller.describe()
            )))
        })?
    } else {
        ctx.role
    };
    let (who, now) = (principal(&ctx), now_ms());
    let (changes, ()) = svc
        .transact(&ctx.state, &ctx.actor(), |e| {
            let c = e.approve(&req.id, who, role, req.comment.clone(), allowance, now)?;
            Ok((vec![c], ()))
        })
        .await?;
    changes
        .first()
        .map(|c| info(&c.record))
        .ok_or_else(|| Fail::internal("an approval changed nothing"))
}

/// `POST /v1/approvals/{id}/deny`.
pub(crate) async fn deny(ctx: Ctx, req: DenyRequest) -> Result<ApprovalInfo, Fail> {
    let svc = service(&ctx)?;
    let (who, role, now) = (principal(&ctx), ctx.role, now_ms());
    let (changes, ()) = svc
        .transact(&ctx.state, &ctx.actor(), |e| {
            Ok((
                vec![e.deny(&req.id, who, role, req.comment.clone(), now)?],
                (),
            ))
        })
        .await?;
    changes
        .first()
        .map(|c| info(&c.record))
        .ok_or_else(|| Fail::internal("a denial changed nothing"))
}

/// The approval step of `POST /v1/exec`, after the policy check and before `exec.requested`.
///
/// - With an `approval` id: it must be granted, unused, unexpired and bound to exactly this
///   caller, command and targets; it is marked used (audited `approval.used`, persisted) before
///   anything runs. A refusal is audited as `approval.refused`.
/// - Without one, when the policy asked for an approval (`reason`): an allowance of this caller
///   that covers the command and every target lets it through (audited `approval.used` with the
///   allowance); otherwise the matching pending request is found or a new one made (audited
///   `approval.requested`, alert `approval_requested`), and the answer is `403
///   approval_required` carrying its id.
pub(super) async fn exec_gate(
    ctx: &Ctx,
    command: &str,
    hosts: &[String],
    approval: Option<&str>,
    reason: Option<&str>,
) -> Result<(), Fail> {
    if approval.is_none() && reason.is_none() {
        return Ok(());
    }
    let svc = service(ctx)?;
    let subject = Subject::exec(command, hosts.iter().cloned());
    let (who, now, actor) = (principal(ctx), now_ms(), ctx.actor());
    if let Some(id) = approval {
        let used = svc
            .transact(&ctx.state, &actor, |e| {
                Ok((vec![e.mark_used(id, &who, &subject, now)?], ()))
            })
            .await;
        if let Err(f) = &used
            && f.error.code != "audit_unavailable"
        {
            let data = json!({
                "id": crate::denials::excerpt(id),
                "command": command,
                "hosts": hosts,
                "error": f.error.code,
                "message": f.error.message,
            });
            ctx.state
                .audit_or_refuse("approval.refused", actor, None, data)
                .await?;
        }
        return used.map(|_| ());
    }
    // The policy's reason, cut to what a record keeps (at a character boundary).
    let mut reason = reason.unwrap_or_default();
    if reason.len() > tether_approvals::MAX_TEXT_BYTES {
        let mut cut = tether_approvals::MAX_TEXT_BYTES;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason = &reason[..cut];
    }
    let allowance = svc
        .read(|e| e.allowance_for(&who, &subject, now).map(|r| r.id.clone()))
        .await;
    if let Some(id) = allowance {
        let data = json!({
            "id": id,
            "allowance": true,
            "command": command,
            "hosts": hosts,
            "requester": {"uid": who.uid, "user": who.name},
        });
        return ctx
            .state
            .audit_or_refuse("approval.used", actor, None, data)
            .await;
    }
    let new_id = tether_approvals::new_id().map_err(fail)?;
    let (changes, record) = svc
        .transact(&ctx.state, &actor, |e| {
            match e.request(who, subject, reason, new_id, now)? {
                Requested::New(c) => {
                    let r = c.record.clone();
                    Ok((vec![c], r))
                }
                Requested::Existing(r) => Ok((Vec::new(), r)),
            }
        })
        .await?;
    if !changes.is_empty() {
        alert_requested(&ctx.state, &record);
    }
    let mut refusal = Fail::new(
        StatusCode::FORBIDDEN,
        "approval_required",
        format!(
            "an approval is needed to run this on {}: {reason}; approval {} is pending (expires in {} s)",
            hosts.join(", "),
            record.id,
            record.expires_at_ms.saturating_sub(now) / 1000
        ),
        &format!(
            "another user approves it with `tether approvals approve {}`; then run the same command again with --approval {}",
            record.id, record.id
        ),
    );
    refusal.error.approval = Some(record.id);
    Err(refusal)
}
