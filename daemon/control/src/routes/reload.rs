//! `POST /v1/reload`: re-read the configuration, exactly like SIGHUP.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;

use super::{Ctx, HandlerFuture};
use crate::http;

/// The request body: `{}` (reserved for options).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReloadRequest {}

pub(crate) fn handle(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let timeout = ctx.state.idle_timeout();
        let actor = crate::audit::actor(&ctx.caller, Some(ctx.role), crate::audit::via_of(&req));
        if let Err(resp) = http::read_json::<ReloadRequest>(req, timeout).await {
            return resp;
        }
        match ctx.state.reload(actor, "config.change", "api").await {
            Ok(report) => {
                tracing::info!(changed = report.changed, needs_restart = ?report.needs_restart, "config reloaded via the control API");
                http::json(StatusCode::OK, &report)
            }
            Err(e) => super::policy::reload_failed(&e),
        }
    })
}
