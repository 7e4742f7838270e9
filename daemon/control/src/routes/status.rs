//! `GET /v1/status`.

use std::sync::atomic::Ordering;

use tether_api::{Empty, StatusReport};
use tether_model::VERSION;

use super::Ctx;
use crate::http::Fail;

pub(crate) async fn handle(ctx: Ctx, _req: Empty) -> Result<StatusReport, Fail> {
    let s = &ctx.state;
    Ok(StatusReport {
        role: s.daemon_role,
        version: VERSION.to_owned(),
        commit: s.commit.to_owned(),
        uptime_secs: s.started.elapsed().as_secs(),
        pid: s.pid,
        hosts: match &s.hub {
            Some(hub) => hub
                .inventory()
                .list()
                .iter()
                .filter(|h| h.is_active())
                .count() as u64,
            None => s.hosts.load(Ordering::Relaxed),
        },
        caller_role: ctx.role,
        access_grants: s
            .approvals
            .as_ref()
            .map(|a| a.grant_list())
            .unwrap_or_default(),
    })
}
