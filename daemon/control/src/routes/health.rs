//! `GET /healthz` and `GET /readyz`.

use hyper::StatusCode;
use tether_api::{Empty, Health};

use super::Ctx;
use crate::http::Fail;

pub(crate) async fn healthz(_ctx: Ctx, _req: Empty) -> Result<Health, Fail> {
    Ok(Health {
        status: "ok".to_owned(),
    })
}

pub(crate) async fn readyz(ctx: Ctx, _req: Empty) -> Result<Health, Fail> {
    if ctx.state.is_ready() {
        Ok(Health {
            status: "ready".to_owned(),
        })
    } else {
        Err(Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "tetherd is starting or shutting down",
            "retry in a moment",
        ))
    }
}
