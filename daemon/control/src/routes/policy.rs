//! `/v1/policy`: show, check a request against, and reload the live policy.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tether_model::Role;
use tether_model::selector::HostFacts;
use tether_policy::{PolicyEngine, RequestKind};

use super::{Ctx, HandlerFuture};
use crate::http::{self, Body};
use crate::state::ReloadError;

fn engine(ctx: &Ctx) -> Result<&PolicyEngine, hyper::Response<Body>> {
    ctx.state.policy.as_ref().ok_or_else(|| {
        http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "policy_unavailable",
            "this tetherd runs without a policy engine",
            "start tetherd normally (tetherd run)",
        )
    })
}

/// `GET /v1/policy`: mode, rule count and the rules themselves (no secrets live in a policy).
pub(crate) fn show(_req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let engine = match engine(&ctx) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let policy = engine.policy();
        http::json(
            StatusCode::OK,
            &json!({"mode": policy.mode(), "rules": policy.rule_count(), "spec": policy.spec()}),
        )
    })
}

/// The body of `POST /v1/policy/check`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckRequest {
    /// `exec` (default), `file_read`, `file_write` or `session`.
    #[serde(default)]
    kind: Option<RequestKind>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    path: Option<String>,
    /// The target host's facts (name, groups, tags).
    #[serde(default)]
    host: Option<HostFacts>,
    /// Check on behalf of another user (admin only).
    #[serde(default)]
    as_user: Option<String>,
    /// Check with another role (admin only).
    #[serde(default)]
    as_role: Option<Role>,
}

/// `POST /v1/policy/check`: the decision, with its rule-by-rule trace, for one request.
pub(crate) fn check(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let body: CheckRequest = match http::read_json(req, ctx.state.idle_timeout()).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let engine = match engine(&ctx) {
            Ok(e) => e,
            Err(r) => return r,
        };
        if (body.as_user.is_some() || body.as_role.is_some()) && ctx.role != Role::Admin {
            return http::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                &format!(
                    "checking on behalf of another user or role needs admin; you are {}",
                    ctx.role
                ),
                "drop --as/--role to check your own request",
            );
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
            ticket: None,
        };
        let mut decision = engine.evaluate(&request);
        let mut votes = Vec::new();
        // Plugins vote after the regex rules (not in `off` mode, where nothing is enforced).
        if let Some(hooks) = ctx.state.plugins.clone().filter(|_| decision.takes_votes()) {
            let req = request.clone();
            votes = tokio::task::spawn_blocking(move || hooks.vote(&req))
                .await
                .unwrap_or_default();
            decision.apply_votes(&votes);
        }
        http::json(
            StatusCode::OK,
            &json!({"request": request, "decision": decision, "plugin_votes": votes}),
        )
    })
}

/// `GET /v1/plugins`: the loaded plugins with their counters.
pub(crate) fn plugins(_req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        match ctx.state.plugins.clone() {
            Some(p) => http::json(StatusCode::OK, &json!({"plugins": p.list()})),
            None => http::json(
                StatusCode::OK,
                &json!({"plugins": [], "hint": "no plugins_manifest in tetherd.toml"}),
            ),
        }
    })
}

/// `POST /v1/plugins/reload`: re-read the plugin manifest (atomic; a bad plugin keeps the old set).
pub(crate) fn plugins_reload(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let actor = crate::audit::actor(&ctx.caller, Some(ctx.role), crate::audit::via_of(&req));
        if let Err(r) = http::read_json::<serde_json::Value>(req, ctx.state.idle_timeout()).await {
            return r;
        }
        let Some(p) = ctx.state.plugins.clone() else {
            return http::error(
                StatusCode::CONFLICT,
                "no_plugins",
                "this tetherd loads no plugins",
                "set plugins_manifest in tetherd.toml and restart",
            );
        };
        let result = tokio::task::spawn_blocking(move || p.reload())
            .await
            .unwrap_or_else(|e| Err(ReloadError::Plugins(Box::new(e))));
        let data = match &result {
            Ok(n) => json!({"ok": true, "plugins": n}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        };
        if let Err(r) = ctx
            .state
            .audit_or_refuse("plugin.reload", actor, None, data)
            .await
        {
            return r;
        }
        match result {
            Ok(n) => http::json(StatusCode::OK, &json!({"plugins": n})),
            Err(e) => http::error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_plugins",
                &e.to_string(),
                "fix the manifest or the plugin (tether plugin list shows what is loaded) and reload again",
            ),
        }
    })
}

/// `POST /v1/policy/reload`: re-read the config (and so the policy) and swap atomically.
pub(crate) fn reload(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let actor = crate::audit::actor(&ctx.caller, Some(ctx.role), crate::audit::via_of(&req));
        if let Err(r) = http::read_json::<serde_json::Value>(req, ctx.state.idle_timeout()).await {
            return r;
        }
        match ctx.state.reload(actor, "policy.reload", "api").await {
            Ok(report) => {
                let (mode, rules) = ctx
                    .state
                    .policy
                    .as_ref()
                    .map(|e| (Some(e.policy().mode()), e.policy().rule_count()))
                    .unwrap_or((None, 0));
                tracing::info!(?mode, rules, "policy reloaded");
                http::json(
                    StatusCode::OK,
                    &json!({"mode": mode, "rules": rules, "changed": report.changed, "needs_restart": report.needs_restart}),
                )
            }
            Err(e) => reload_failed(&e),
        }
    })
}

/// The 422 answer for a refused reload (config or policy).
pub(crate) fn reload_failed(e: &ReloadError) -> hyper::Response<Body> {
    tracing::error!("reload refused; keeping the previous config and policy: {e}");
    let code = match e {
        ReloadError::Config(_) => "invalid_config",
        ReloadError::Audit(_) => {
            return http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                &e.to_string(),
                "free space or fix permissions in state_dir/audit, then reload again",
            );
        }
        _ => "invalid_policy",
    };
    http::error(
        StatusCode::UNPROCESSABLE_ENTITY,
        code,
        &format!("reload refused, the previous config and policy stay in force: {e}"),
        "fix the problems listed (tether config check FILE) and reload again",
    )
}
