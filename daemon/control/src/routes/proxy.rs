//! `POST /v1/proxy/{host}`: `tether proxy HOST` (OpenSSH's `ProxyCommand`). The caller is the
//! one the control socket's peer credentials name, with an operator role; the host must be
//! enrolled and active. `proxy.open` is written, the answer is `101 Switching Protocols`, and
//! the hub's operator SSH endpoint speaks SSH on the connection, every channel request going
//! through a [`ProxySession`] (the exec route's policy and audit). `proxy.close` is written
//! when the client goes.

use std::time::Instant;

use hyper::StatusCode;
use serde_json::json;
use tether_api::ProxyRequest;

use super::interactive::{ProxySession, active_host};
use super::{Ctx, Takeover};
use crate::http::Fail;

/// `POST /v1/proxy/{host}`.
pub(crate) async fn handle(ctx: Ctx, req: ProxyRequest) -> Result<Takeover, Fail> {
    let record = active_host(&ctx, &req.host)?;
    let Some(operator) = ctx.state.operator.clone() else {
        return Err(Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "proxy_unavailable",
            "this hub runs without its operator SSH endpoint",
            "start tetherd normally (tetherd run --role hub)",
        ));
    };
    ctx.state
        .audit_or_refuse(
            "proxy.open",
            ctx.actor(),
            Some(&record.name),
            json!({"via": "ssh"}),
        )
        .await?;
    let session = ProxySession::new(ctx.clone(), record.name.clone(), "ssh");
    Ok(Box::new(move |io| {
        Box::pin(async move {
            let started = Instant::now();
            operator.serve(io, session).await;
            let data = json!({"duration_ms": started.elapsed().as_millis() as u64});
            if let Err(e) = ctx
                .state
                .audit("proxy.close", ctx.actor(), Some(&record.name), data)
                .await
            {
                tracing::error!(host = %record.name, "could not audit a proxy's end: {e}");
            }
        })
    }))
}
