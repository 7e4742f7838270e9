//! `/v1/vpn/...`: invites, revocation and tunnel status.

use std::collections::BTreeMap;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tether_enroll::{EnrollError, HostRecord, Hub, InviteRequest};
use tether_model::{Alert, Severity};

use super::{Ctx, HandlerFuture};
use crate::audit::{actor, via_of};
use crate::http::{self, Body};

/// The hub's enrollment core, or a 409 on a target.
pub(crate) fn hub(ctx: &Ctx) -> Result<Arc<Hub>, hyper::Response<Body>> {
    ctx.state.hub.clone().ok_or_else(|| {
        http::error(
            StatusCode::CONFLICT,
            "not_a_hub",
            "this tetherd is a target; invites, hosts and revocation are managed on the hub",
            "run this command against the hub's socket (--socket or TETHER_SOCKET)",
        )
    })
}

/// Maps an enrollment error to an HTTP answer with its stable code.
pub(crate) fn enroll_error(e: &EnrollError) -> hyper::Response<Body> {
    let status = match e.code() {
        "no_such_host" => StatusCode::NOT_FOUND,
        "name_taken" => StatusCode::CONFLICT,
        "invalid_name" | "malformed" => StatusCode::BAD_REQUEST,
        "address_pool_exhausted" | "address_unavailable" => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    http::error(status, e.code(), &e.to_string(), "")
}

/// Removes the tunnel peers of hosts that were just revoked or removed.
pub(crate) fn drop_peers(ctx: &Ctx, hosts: &[HostRecord]) {
    let Some(tunnel) = &ctx.state.tunnel else {
        return;
    };
    for h in hosts {
        if let Some(id) = tunnel.peer_by_ip(h.overlay_ip)
            && let Err(e) = tunnel.remove_peer(id)
        {
            tracing::error!(host = %h.name, "could not remove the tunnel peer: {e}");
        }
    }
}

/// Body of `POST /v1/vpn/invite` and `/v1/vpn/reinvite`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InviteBody {
    name: String,
    #[serde(default)]
    tags: BTreeMap<String, String>,
    #[serde(default)]
    groups: Vec<String>,
    /// `30m`, `24h`, `7d`; default `enroll.default_ttl`.
    #[serde(default)]
    ttl: Option<String>,
}

pub(crate) fn invite(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    issue(req, ctx, false)
}

pub(crate) fn reinvite(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    issue(req, ctx, true)
}

fn issue(req: Request<Incoming>, ctx: Ctx, again: bool) -> HandlerFuture {
    Box::pin(async move {
        let hub = match hub(&ctx) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let via = via_of(&req);
        let body: InviteBody = match http::read_json(req, ctx.state.idle_timeout()).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let ttl_text = body
            .ttl
            .clone()
            .unwrap_or_else(|| ctx.state.config().enroll.default_ttl.clone());
        let Some(ttl_secs) = tether_config::parse_duration_secs(&ttl_text) else {
            return http::error(
                StatusCode::BAD_REQUEST,
                "invalid_ttl",
                &format!("--ttl {ttl_text:?} is not a duration"),
                "write e.g. 30m, 24h or 7d",
            );
        };
        let kind = if again {
            "enroll.reinvite"
        } else {
            "enroll.invite"
        };
        let data = json!({"name": body.name, "tags": body.tags, "groups": body.groups, "ttl_secs": ttl_secs});
        if let Err(r) = ctx
            .state
            .audit_or_refuse(
                kind,
                actor(&ctx.caller, Some(ctx.role), via),
                Some(&body.name),
                data,
            )
            .await
        {
            return r;
        }
        let request = InviteRequest {
            name: body.name.clone(),
            tags: body.tags,
            groups: body.groups,
            ttl_secs,
        };
        let previous = hub.inventory().get(&request.name);
        let hub2 = Arc::clone(&hub);
        let now = tether_enroll::unix_now();
        let issued = tokio::task::spawn_blocking(move || {
            if again {
                hub2.reinvite(&request, now)
            } else {
                hub2.invite(&request, now)
            }
        })
        .await;
        match issued {
            Ok(Ok((token, record))) => {
                if again {
                    // A reinvite retires the old machine's identity at once.
                    drop_peers(&ctx, &previous.into_iter().collect::<Vec<_>>());
                }
                let identity = hub.identity();
                let text = token.expose(str::to_owned);
                http::json(
                    StatusCode::OK,
                    &json!({
                        "token": text,
                        "name": record.name,
                        "overlay_ip": record.overlay_ip,
                        "expires_at": record.expires_at,
                        "enroll_endpoint": identity.enroll_endpoint,
                        "hub_id": hub.hub_id().0,
                    }),
                )
            }
            Ok(Err(e)) => enroll_error(&e),
            Err(_) => http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "issuing the invite panicked",
                "",
            ),
        }
    })
}

/// Body of `POST /v1/vpn/revoke`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeBody {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    all: bool,
}

pub(crate) fn revoke(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let hub = match hub(&ctx) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let via = via_of(&req);
        let body: RevokeBody = match http::read_json(req, ctx.state.idle_timeout()).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let a = actor(&ctx.caller, Some(ctx.role), via);
        let now = tether_enroll::unix_now();
        match (body.name, body.all) {
            (Some(_), true) | (None, false) => http::error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "say which host to revoke, or all of them — not both",
                "tether vpn revoke NAME, or tether vpn revoke --all",
            ),
            (None, true) => {
                if let Err(r) = ctx
                    .state
                    .audit_or_refuse("host.revoke_all", a, None, json!({}))
                    .await
                {
                    return r;
                }
                let hub2 = Arc::clone(&hub);
                match tokio::task::spawn_blocking(move || hub2.revoke_all(now)).await {
                    Ok(Ok(hosts)) => {
                        drop_peers(&ctx, &hosts);
                        let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
                        ctx.state.alerts.raise(Alert::new(
                            "host_revoked",
                            Severity::Warning,
                            format!("all {} hosts revoked: {}", names.len(), names.join(", ")),
                        ));
                        http::json(StatusCode::OK, &json!({"revoked": names}))
                    }
                    Ok(Err(e)) => enroll_error(&e),
                    Err(_) => http::error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "revoke panicked",
                        "",
                    ),
                }
            }
            (Some(name), false) => {
                if let Err(r) = ctx
                    .state
                    .audit_or_refuse("host.revoke", a, Some(&name), json!({"name": name}))
                    .await
                {
                    return r;
                }
                let hub2 = Arc::clone(&hub);
                let n = name.clone();
                match tokio::task::spawn_blocking(move || hub2.revoke_host(&n, now)).await {
                    Ok(Ok(outcome)) => {
                        let hosts: Vec<HostRecord> = outcome.host.into_iter().collect();
                        drop_peers(&ctx, &hosts);
                        let mut alert = Alert::new(
                            "host_revoked",
                            Severity::Warning,
                            format!("host {name} revoked"),
                        );
                        alert.host = Some(name.clone());
                        ctx.state.alerts.raise(alert);
                        http::json(
                            StatusCode::OK,
                            &json!({"revoked": hosts.iter().map(|h| &h.name).collect::<Vec<_>>(), "invites_revoked": outcome.invites_revoked}),
                        )
                    }
                    Ok(Err(e)) => enroll_error(&e),
                    Err(_) => http::error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "revoke panicked",
                        "",
                    ),
                }
            }
        }
    })
}

/// `GET /v1/vpn/status`: this node and its peers.
pub(crate) fn status(_req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let Some(tunnel) = &ctx.state.tunnel else {
            return http::json(
                StatusCode::OK,
                &json!({
                    "role": ctx.state.daemon_role,
                    "tunnel": false,
                    "hint": "this target has not enrolled: run `tetherd enroll TOKEN` with a token from `tether vpn invite` on the hub",
                    "peers": [],
                }),
            );
        };
        let mut out = json!({
            "role": ctx.state.daemon_role,
            "tunnel": true,
            "overlay_ip": tunnel.overlay_ip(),
            "public_key": tunnel.public_key().to_base64(),
            "listen": tunnel.local_addr(),
            "peers": tunnel.status(),
        });
        if let Some(hub) = &ctx.state.hub {
            out["enroll_endpoint"] = json!(hub.identity().enroll_endpoint);
            out["wg_endpoint"] = json!(hub.identity().wg_endpoint);
        }
        if let Some(e) = &ctx.state.enrollment {
            out["enrollment"] = e.clone();
        }
        http::json(StatusCode::OK, &out)
    })
}

/// Body of `POST /v1/vpn/rotate-keys`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    #[serde(default)]
    name: Option<String>,
}

/// `POST /v1/vpn/rotate-keys`: rotate WireGuard keys now (one host, all hosts, or this target).
pub(crate) fn rotate_keys(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let Some(rotator) = ctx.state.rotator.clone() else {
            return http::error(
                StatusCode::CONFLICT,
                "no_tunnel",
                "this tetherd has no tunnel to rotate keys on",
                "enroll this target first (tetherd enroll TOKEN)",
            );
        };
        let via = via_of(&req);
        let body: RotateBody = match http::read_json(req, ctx.state.idle_timeout()).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let a = actor(&ctx.caller, Some(ctx.role), via);
        let data = json!({"name": body.name});
        if let Err(r) = ctx
            .state
            .audit_or_refuse("vpn.rotate_requested", a, body.name.as_deref(), data)
            .await
        {
            return r;
        }
        let outcomes = rotator.rotate(body.name).await;
        http::json(StatusCode::OK, &json!({"rotated": outcomes}))
    })
}
