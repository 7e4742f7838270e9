//! `/v1/hosts`: the hub's inventory, joined with live tunnel state.

use hyper::StatusCode;
use serde_json::json;
use tether_api::{Host, HostList, HostRef, HostRemoved, HostsQuery};
use tether_enroll::HostRecord;
use tether_model::selector::Selector;

use super::Ctx;
use super::vpn::{close_connections, drop_peers, hub, on_hub};
use crate::http::Fail;

/// Hosts with their peers' live state.
fn with_live_state(ctx: &Ctx, hosts: &[HostRecord]) -> Vec<Host> {
    let peers = ctx
        .state
        .tunnel
        .as_ref()
        .map(|t| t.status())
        .unwrap_or_default();
    // One map, not a scan of every peer per host (quadratic at thousands of hosts).
    let by_ip: std::collections::HashMap<_, _> = peers.iter().map(|p| (p.overlay_ip, p)).collect();
    hosts
        .iter()
        .map(|h| crate::convert::host(h, by_ip.get(&h.overlay_ip).copied()))
        .collect()
}

/// `GET /v1/hosts?selector=SEL`.
pub(crate) async fn list(ctx: Ctx, q: HostsQuery) -> Result<HostList, Fail> {
    let hub = hub(&ctx)?;
    let hosts = match q.selector.as_deref() {
        Some(s) => {
            let selector = Selector::parse(s).map_err(|e| {
                Fail::bad_request(
                    "invalid_selector",
                    e.to_string(),
                    "see `tether hosts list --help` for the selector syntax",
                )
            })?;
            hub.inventory().select(&selector)
        }
        None => hub.inventory().list(),
    };
    Ok(HostList {
        hosts: with_live_state(&ctx, &hosts),
    })
}

/// `GET /v1/hosts/{name}`.
pub(crate) async fn show(ctx: Ctx, r: HostRef) -> Result<Host, Fail> {
    let hub = hub(&ctx)?;
    match hub.inventory().get(&r.name) {
        Some(h) => Ok(with_live_state(&ctx, std::slice::from_ref(&h)).remove(0)),
        None => Err(Fail::new(
            StatusCode::NOT_FOUND,
            "no_such_host",
            format!("no host named {:?} in the inventory", r.name),
            "`tether hosts list` shows the names",
        )),
    }
}

/// `DELETE /v1/hosts/{name}`: forget a host (its peer goes away at once).
pub(crate) async fn remove(ctx: Ctx, r: HostRef) -> Result<HostRemoved, Fail> {
    let hub = hub(&ctx)?;
    let name = r.name;
    ctx.state
        .audit_or_refuse(
            "host.remove",
            ctx.actor(),
            Some(&name),
            json!({"name": name}),
        )
        .await?;
    let n = name.clone();
    let host = on_hub(&hub, "remove", move |hub| {
        hub.remove_host(&n, tether_enroll::unix_now())
    })
    .await?;
    close_connections(&ctx, std::slice::from_ref(&host), "host removed").await;
    drop_peers(&ctx, std::slice::from_ref(&host));
    Ok(HostRemoved { removed: host.name })
}
