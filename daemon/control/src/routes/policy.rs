//! `/v1/policy`: show, check a request against, and reload the live policy.

use hyper::StatusCode;
use tether_api::{
    Empty, PolicyCheckRequest, PolicyCheckResponse, PolicyReloadResponse, PolicyShow,
    PolicyTestRequest,
};
use tether_model::Role;
use tether_policy::FixtureReport;
use tether_policy::{PolicyEngine, RequestKind};

use super::Ctx;
use crate::http::Fail;
use crate::state::ReloadError;

fn unavailable() -> Fail {
    Fail::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "policy_unavailable",
        "this tetherd runs without a policy engine",
        "start tetherd normally (tetherd run)",
    )
}

fn engine(ctx: &Ctx) -> Result<&PolicyEngine, Fail> {
    ctx.state.policy.as_ref().ok_or_else(unavailable)
}

/// `GET /v1/policy`: mode, rule count and the rules themselves (no secrets live in a policy).
pub(crate) async fn show(ctx: Ctx, _req: Empty) -> Result<PolicyShow, Fail> {
    let policy = engine(&ctx)?.policy();
    let spec = serde_json::to_value(policy.spec())
        .map_err(|e| Fail::internal(format!("could not encode the policy: {e}")))?;
    Ok(PolicyShow {
        mode: policy.mode(),
        rules: policy.rule_count(),
        spec,
    })
}

/// `POST /v1/policy/check`: the decision, with its rule-by-rule trace, for one request.
pub(crate) async fn check(ctx: Ctx, body: PolicyCheckRequest) -> Result<PolicyCheckResponse, Fail> {
    engine(&ctx)?;
    if (body.as_user.is_some() || body.as_role.is_some()) && ctx.role != Role::Admin {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "checking on behalf of another user or role needs admin; you are {}",
                ctx.role
            ),
            "drop --as/--role to check your own request",
        ));
    }
    let user = body
        .as_user
        .or_else(|| ctx.caller.user.clone())
        .unwrap_or_else(|| format!("uid:{}", ctx.caller.uid));
    let request = tether_policy::Request {
        kind: body.kind.unwrap_or(RequestKind::Exec),
        command: body.command,
        path: body.path,
        user,
        role: body.as_role.unwrap_or(ctx.role),
        host: body.host.unwrap_or_default(),
        ticket: body.ticket,
    };
    // Plugins vote after the regex rules (not in `off` mode, where nothing is enforced). A
    // panic in that blocking task is a 500, never a silent fall-back to the regex verdict.
    let state = std::sync::Arc::clone(&ctx.state);
    let req = request.clone();
    let checked = super::blocking("the policy check", move || {
        let hooks = state
            .plugins
            .as_deref()
            .map(|h| h as &dyn tether_policy::PolicyHooks);
        state.policy.as_ref().map(|e| e.check(&req, hooks))
    })
    .await?
    .ok_or_else(unavailable)?;
    Ok(PolicyCheckResponse {
        request,
        decision: checked.decision,
        plugin_votes: checked.plugin_votes,
    })
}

/// `POST /v1/policy/test`: a fixture file checked against the policy in force and the loaded
/// policy plugins, case by case exactly as `policy check` would decide.
pub(crate) async fn test(ctx: Ctx, body: PolicyTestRequest) -> Result<FixtureReport, Fail> {
    let policy = engine(&ctx)?.policy();
    let hooks = ctx.state.plugins.clone();
    super::blocking("the policy fixtures", move || {
        let hooks = hooks
            .as_deref()
            .map(|h| h as &dyn tether_policy::PolicyHooks);
        tether_policy::run_fixtures_with(&policy, &body.fixtures, hooks)
    })
    .await?
    .map_err(|e| {
        Fail::bad_request(
            "invalid_fixtures",
            e.to_string(),
            "see daemon/policy/examples/policy-tests.toml for the format",
        )
    })
}

/// `POST /v1/policy/reload`: re-read the config (and so the policy) and swap atomically.
pub(crate) async fn reload(ctx: Ctx, _req: Empty) -> Result<PolicyReloadResponse, Fail> {
    match ctx.state.reload(ctx.actor(), "policy.reload", "api").await {
        Ok(report) => {
            let (mode, rules) = ctx
                .state
                .policy
                .as_ref()
                .map(|e| (Some(e.policy().mode()), e.policy().rule_count()))
                .unwrap_or((None, 0));
            tracing::info!(?mode, rules, "policy reloaded");
            Ok(PolicyReloadResponse {
                mode,
                rules,
                changed: report.changed,
                needs_restart: report.needs_restart,
            })
        }
        Err(e) => Err(reload_failed(&e)),
    }
}

/// The 422 answer for a refused reload (config or policy), or 503 when it could not be audited.
pub(crate) fn reload_failed(e: &ReloadError) -> Fail {
    tracing::error!("reload refused; keeping the previous config and policy: {e}");
    let code = match e {
        ReloadError::Config(_) => "invalid_config",
        ReloadError::Audit(_) => {
            return Fail::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                e.to_string(),
                "free space or fix permissions in state_dir/audit, then reload again",
            );
        }
        _ => "invalid_policy",
    };
    Fail::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        code,
        format!("reload refused, the previous config and policy stay in force: {e}"),
        "fix the problems listed (tether config check FILE) and reload again",
    )
}
