//! `/v1/access`: just-in-time roles. A caller asks for a role for a while; someone holding that
//! role (or an admin), never the caller, approves it with `POST /v1/approvals/{id}/approve`;
//! the role is then in force until its expiry (see [`crate::AppState::role_of`]) and gone
//! without anyone acting. Its holder or an admin may revoke it earlier.

use hyper::StatusCode;
use tether_api::{AccessAsk, AccessQuery, ApprovalInfo, ApprovalList, ApprovalRef};
use tether_approvals::{Requested, Subject};
use tether_model::Role;

use super::Ctx;
use super::approvals::{parse_state, principal, service, visible};
use crate::approvals::{alert_requested, fail, in_state, info, now_ms};
use crate::http::Fail;

/// `POST /v1/access`.
pub(crate) async fn request(ctx: Ctx, req: AccessAsk) -> Result<ApprovalInfo, Fail> {
    let svc = service(&ctx)?;
    if ctx.role == req.role || ctx.role == Role::Admin {
        return Err(Fail::new(
            StatusCode::CONFLICT,
            "already_held",
            format!("{} already holds role {}", ctx.caller.describe(), ctx.role),
            "`tether status` shows your role",
        ));
    }
    let subject = Subject::Access {
        role: req.role,
        duration_secs: req.duration_secs,
    };
    let (who, now) = (principal(&ctx), now_ms());
    let id = tether_approvals::new_id().map_err(fail)?;
    let (changes, record) = svc
        .transact(&ctx.state, &ctx.actor(), |e| {
            match e.request(who, subject, &req.reason, id, now)? {
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
    Ok(info(&record))
}

/// `GET /v1/access`.
pub(crate) async fn list(ctx: Ctx, q: AccessQuery) -> Result<ApprovalList, Fail> {
    let svc = service(&ctx)?;
    let state = parse_state(q.state.as_deref())?;
    let mut approvals: Vec<ApprovalInfo> = svc
        .read(|e| {
            e.records()
                .filter(|r| matches!(r.subject, Subject::Access { .. }))
                .filter(|r| visible(&ctx, r) && in_state(r, state))
                .map(info)
                .collect()
        })
        .await;
    approvals.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
    Ok(ApprovalList { approvals })
}

/// `POST /v1/access/{id}/revoke`.
pub(crate) async fn revoke(ctx: Ctx, req: ApprovalRef) -> Result<ApprovalInfo, Fail> {
    let svc = service(&ctx)?;
    let (who, role, now) = (principal(&ctx), ctx.role, now_ms());
    let (changes, ()) = svc
        .transact(&ctx.state, &ctx.actor(), |e| {
            Ok((vec![e.revoke(&req.id, &who, role, now)?], ()))
        })
        .await?;
    changes
        .first()
        .map(|c| info(&c.record))
        .ok_or_else(|| Fail::internal("a revocation changed nothing"))
}
