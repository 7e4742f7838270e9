//! `GET /v1/status`.

use std::sync::atomic::Ordering;

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use tether_model::{StatusReport, VERSION};

use super::{Ctx, HandlerFuture};
use crate::http;

pub(crate) fn handle(_req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let s = &ctx.state;
        let report = StatusReport {
            role: s.daemon_role,
            version: VERSION.to_owned(),
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
        };
        http::json(StatusCode::OK, &report)
    })
}
