//! `/v1/hosts`: the hub's inventory, joined with live tunnel state.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{Value, json};
use tether_enroll::HostRecord;
use tether_model::selector::Selector;

use super::vpn::{drop_peers, enroll_error, hub};
use super::{Ctx, HandlerFuture};
use crate::audit::{actor, via_of};
use crate::http;

/// A host record with `online`, `last_handshake_secs` and traffic from the tunnel.
fn with_live_state(ctx: &Ctx, h: &HostRecord) -> Value {
    let mut v = serde_json::to_value(h).unwrap_or(Value::Null);
    let peer = ctx.state.tunnel.as_ref().and_then(|t| {
        t.status()
            .into_iter()
            .find(|p| p.overlay_ip == h.overlay_ip)
    });
    v["online"] = json!(peer.as_ref().is_some_and(|p| p.up));
    v["last_handshake_secs"] = json!(peer.as_ref().and_then(|p| p.last_handshake_secs));
    v["endpoint"] = json!(peer.as_ref().and_then(|p| p.endpoint));
    v["rx_bytes"] = json!(peer.as_ref().map_or(0, |p| p.rx_bytes));
    v["tx_bytes"] = json!(peer.as_ref().map_or(0, |p| p.tx_bytes));
    v
}

/// `GET /v1/hosts?selector=SEL`.
pub(crate) fn list(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let hub = match hub(&ctx) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let mut selector = None;
        for (k, v) in super::query_pairs(&req) {
            match k.as_str() {
                "selector" => match Selector::parse(&v) {
                    Ok(s) => selector = Some(s),
                    Err(e) => {
                        return http::error(
                            StatusCode::BAD_REQUEST,
                            "invalid_selector",
                            &e.to_string(),
                            "see `tether hosts list --help` for the selector syntax",
                        );
                    }
                },
                other => {
                    return http::error(
                        StatusCode::BAD_REQUEST,
                        "bad_query",
                        &format!("unknown query parameter {other:?}"),
                        "",
                    );
                }
            }
        }
        let hosts = match &selector {
            Some(s) => hub.inventory().select(s),
            None => hub.inventory().list(),
        };
        let out: Vec<Value> = hosts.iter().map(|h| with_live_state(&ctx, h)).collect();
        http::json(StatusCode::OK, &json!({"hosts": out}))
    })
}

/// `GET /v1/hosts/{name}`.
pub(crate) fn show(_req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let hub = match hub(&ctx) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let name = ctx.params.first().cloned().unwrap_or_default();
        match hub.inventory().get(&name) {
            Some(h) => http::json(StatusCode::OK, &with_live_state(&ctx, &h)),
            None => http::error(
                StatusCode::NOT_FOUND,
                "no_such_host",
                &format!("no host named {name:?} in the inventory"),
                "`tether hosts list` shows the names",
            ),
        }
    })
}

/// `DELETE /v1/hosts/{name}`: forget a host (its peer goes away at once).
pub(crate) fn remove(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let hub = match hub(&ctx) {
            Ok(h) => h,
            Err(r) => return r,
        };
        let name = ctx.params.first().cloned().unwrap_or_default();
        let a = actor(&ctx.caller, Some(ctx.role), via_of(&req));
        if let Err(r) = ctx
            .state
            .audit_or_refuse("host.remove", a, Some(&name), json!({"name": name}))
            .await
        {
            return r;
        }
        let hub2 = Arc::clone(&hub);
        let n = name.clone();
        match tokio::task::spawn_blocking(move || hub2.remove_host(&n, tether_enroll::unix_now()))
            .await
        {
            Ok(Ok(host)) => {
                drop_peers(&ctx, std::slice::from_ref(&host));
                http::json(StatusCode::OK, &json!({"removed": host.name}))
            }
            Ok(Err(e)) => enroll_error(&e),
            Err(_) => http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "remove panicked",
                "",
            ),
        }
    })
}
