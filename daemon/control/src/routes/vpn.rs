//! `/v1/vpn/...`: invites, revocation, key rotation and tunnel status.

use std::sync::Arc;

use hyper::StatusCode;
use serde_json::json;
use tether_api::{
    Empty, InviteRequest, InviteResponse, RevokeRequest, RevokeResponse, RotateRequest,
    RotateResponse, VpnStatus,
};
use tether_enroll::{EnrollError, HostRecord, Hub};
use tether_model::{Alert, Severity};

use super::Ctx;
use crate::http::Fail;

/// The hub's enrollment core, or a 409 on a target.
pub(crate) fn hub(ctx: &Ctx) -> Result<Arc<Hub>, Fail> {
    ctx.state.hub.clone().ok_or_else(|| {
        Fail::new(
            StatusCode::CONFLICT,
            "not_a_hub",
            "this tetherd is a target; invites, hosts and revocation are managed on the hub",
            "run this command against the hub's socket (--socket or TETHER_SOCKET)",
        )
    })
}

/// Maps an enrollment error to an HTTP answer with its stable code.
pub(crate) fn enroll_error(e: &EnrollError) -> Fail {
    let status = match e.code() {
        "no_such_host" => StatusCode::NOT_FOUND,
        "name_taken" => StatusCode::CONFLICT,
        "invalid_name" | "malformed" => StatusCode::BAD_REQUEST,
        "address_pool_exhausted" | "address_unavailable" | "unreachable" => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    Fail::new(status, e.code(), e.to_string(), "")
}

/// Runs a blocking hub operation (it writes state files) off the async workers.
pub(crate) async fn on_hub<T: Send + 'static>(
    hub: &Arc<Hub>,
    what: &str,
    f: impl FnOnce(&Hub) -> Result<T, EnrollError> + Send + 'static,
) -> Result<T, Fail> {
    let hub = Arc::clone(hub);
    super::blocking(what, move || f(&hub))
        .await?
        .map_err(|e| enroll_error(&e))
}

/// Closes the pooled SSH connections of hosts that were just revoked or removed, before their
/// tunnel peers go: the target sees the disconnect and kills their running commands.
pub(crate) async fn close_connections(ctx: &Ctx, hosts: &[HostRecord], why: &str) {
    // Relayed SFTP sessions end now (their `sftp.close` written), even with a client that
    // stopped reading.
    ctx.state.sftp_relays().retain(|(host, ended)| {
        let going = hosts.iter().any(|h| &h.name == host);
        if going {
            ended.cancel();
        }
        !going && !ended.is_cancelled()
    });
    if let Some(remote) = &ctx.state.remote {
        for h in hosts {
            remote.close_host(&h.name, why).await;
        }
    }
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

pub(crate) async fn invite(ctx: Ctx, body: InviteRequest) -> Result<InviteResponse, Fail> {
    issue(ctx, body, false).await
}

pub(crate) async fn reinvite(ctx: Ctx, body: InviteRequest) -> Result<InviteResponse, Fail> {
    issue(ctx, body, true).await
}

async fn issue(ctx: Ctx, body: InviteRequest, again: bool) -> Result<InviteResponse, Fail> {
    let hub = hub(&ctx)?;
    let ttl_text = body
        .ttl
        .clone()
        .unwrap_or_else(|| ctx.state.config().enroll.default_ttl.clone());
    let Some(ttl_secs) = tether_config::parse_duration_secs(&ttl_text) else {
        return Err(Fail::bad_request(
            "invalid_ttl",
            format!("--ttl {ttl_text:?} is not a duration"),
            "write e.g. 30m, 24h or 7d",
        ));
    };
    let config = ctx.state.config();
    let max_ttl = tether_config::parse_duration_secs(&config.enroll.max_ttl).unwrap_or(30 * 86_400);
    if ttl_secs > max_ttl {
        return Err(Fail::bad_request(
            "invalid_ttl",
            format!(
                "--ttl {ttl_text} is longer than the longest invite lifetime, enroll.max_ttl = {}",
                config.enroll.max_ttl
            ),
            "give a shorter --ttl, or raise enroll.max_ttl in tetherd.toml and reload",
        ));
    }
    // Checked before anything is recorded: bad input is a 400 that names the field, never an
    // audit failure (a 100 KB name or tag once surfaced as 503 audit_unavailable).
    tether_enroll::validate_host_name(&body.name).map_err(|e| enroll_error(&e))?;
    for g in &body.groups {
        tether_enroll::validate_group(g).map_err(|e| enroll_error(&e))?;
    }
    for (k, v) in &body.tags {
        tether_enroll::validate_tag(k, v).map_err(|e| enroll_error(&e))?;
    }
    let kind = if again {
        "enroll.reinvite"
    } else {
        "enroll.invite"
    };
    let data =
        json!({"name": body.name, "tags": body.tags, "groups": body.groups, "ttl_secs": ttl_secs});
    ctx.state
        .audit_or_refuse(kind, ctx.actor(), Some(&body.name), data)
        .await?;
    let request = tether_enroll::InviteRequest {
        name: body.name,
        tags: body.tags,
        groups: body.groups,
        ttl_secs,
    };
    let previous = hub.inventory().get(&request.name);
    let now = tether_enroll::unix_now();
    let (token, record) = on_hub(&hub, "issuing the invite", move |hub| {
        if again {
            hub.reinvite(&request, now)
        } else {
            hub.invite(&request, now)
        }
    })
    .await?;
    if again {
        // A reinvite retires the old machine's identity at once.
        drop_peers(&ctx, &previous.into_iter().collect::<Vec<_>>());
    }
    Ok(InviteResponse {
        token: token.expose(str::to_owned),
        name: record.name,
        overlay_ip: record.overlay_ip.to_string(),
        expires_at: record.expires_at,
        enroll_endpoint: hub.identity().enroll_endpoint.clone(),
        hub_id: hub.hub_id().0.clone(),
    })
}

pub(crate) async fn revoke(ctx: Ctx, body: RevokeRequest) -> Result<RevokeResponse, Fail> {
    let hub = hub(&ctx)?;
    let now = tether_enroll::unix_now();
    match (body.name, body.all) {
        (Some(_), true) | (None, false) => Err(Fail::bad_request(
            "bad_request",
            "say which host to revoke, or all of them — not both",
            "tether vpn revoke NAME, or tether vpn revoke --all",
        )),
        (None, true) => {
            ctx.state
                .audit_or_refuse("host.revoke_all", ctx.actor(), None, json!({}))
                .await?;
            let hosts = on_hub(&hub, "revoke", move |hub| hub.revoke_all(now)).await?;
            close_connections(&ctx, &hosts, "host revoked").await;
            drop_peers(&ctx, &hosts);
            let revoked: Vec<String> = hosts.into_iter().map(|h| h.name).collect();
            ctx.state.alerts.raise(Alert::new(
                "host_revoked",
                Severity::Warning,
                format!(
                    "all {} hosts revoked: {}",
                    revoked.len(),
                    revoked.join(", ")
                ),
            ));
            Ok(RevokeResponse {
                revoked,
                invites_revoked: None,
            })
        }
        (Some(name), false) => {
            ctx.state
                .audit_or_refuse(
                    "host.revoke",
                    ctx.actor(),
                    Some(&name),
                    json!({"name": name}),
                )
                .await?;
            let n = name.clone();
            let outcome = on_hub(&hub, "revoke", move |hub| hub.revoke_host(&n, now)).await?;
            let hosts: Vec<HostRecord> = outcome.host.into_iter().collect();
            close_connections(&ctx, &hosts, "host revoked").await;
            drop_peers(&ctx, &hosts);
            let mut alert = Alert::new(
                "host_revoked",
                Severity::Warning,
                format!("host {name} revoked"),
            );
            alert.host = Some(name);
            ctx.state.alerts.raise(alert);
            Ok(RevokeResponse {
                revoked: hosts.into_iter().map(|h| h.name).collect(),
                invites_revoked: Some(outcome.invites_revoked as u64),
            })
        }
    }
}

/// `GET /v1/vpn/status`: this node and its peers.
pub(crate) async fn status(ctx: Ctx, _req: Empty) -> Result<VpnStatus, Fail> {
    let Some(tunnel) = &ctx.state.tunnel else {
        return Ok(VpnStatus {
            role: ctx.state.daemon_role,
            tunnel: false,
            hint: Some("this target has not enrolled: run `tetherd enroll TOKEN` with a token from `tether vpn invite` on the hub".to_owned()),
            overlay_ip: None,
            public_key: None,
            listen: None,
            peers: Vec::new(),
            relays: Vec::new(),
            enroll_endpoint: None,
            wg_endpoint: None,
            enrollment: None,
        });
    };
    let identity = ctx.state.hub.as_ref().map(|h| h.identity());
    Ok(VpnStatus {
        role: ctx.state.daemon_role,
        tunnel: true,
        hint: None,
        overlay_ip: Some(tunnel.overlay_ip().to_string()),
        public_key: Some(tunnel.public_key().to_base64()),
        listen: Some(tunnel.local_addr().to_string()),
        peers: tunnel.status().iter().map(crate::convert::peer).collect(),
        relays: tunnel
            .relays()
            .into_iter()
            .map(|r| tether_api::RelayInfo {
                name: r.name,
                connected: r.connected,
            })
            .collect(),
        enroll_endpoint: identity.map(|i| i.enroll_endpoint.clone()),
        wg_endpoint: identity.map(|i| i.wg_endpoint.clone()),
        enrollment: ctx.state.enrollment.clone(),
    })
}

/// `POST /v1/vpn/rotate-keys`: rotate WireGuard keys now (one host, all hosts, or this target).
pub(crate) async fn rotate_keys(ctx: Ctx, body: RotateRequest) -> Result<RotateResponse, Fail> {
    let Some(rotator) = ctx.state.rotator.clone() else {
        return Err(Fail::new(
            StatusCode::CONFLICT,
            "no_tunnel",
            "this tetherd has no tunnel to rotate keys on",
            "enroll this target first (tetherd enroll TOKEN)",
        ));
    };
    if let (Some(name), Some(hub)) = (&body.name, &ctx.state.hub)
        && hub.inventory().get(name).is_none()
    {
        return Err(Fail::new(
            StatusCode::NOT_FOUND,
            "no_such_host",
            format!(
                "no host named {:?} in the inventory",
                crate::denials::excerpt(name)
            ),
            "see `tether hosts list` for the enrolled hosts",
        ));
    }
    let data = json!({"name": body.name});
    ctx.state
        .audit_or_refuse(
            "vpn.rotate_requested",
            ctx.actor(),
            body.name.as_deref(),
            data,
        )
        .await?;
    Ok(RotateResponse {
        rotated: rotator.rotate(body.name).await,
    })
}
