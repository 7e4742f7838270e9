//! `GET /healthz` and `GET /readyz`.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use super::{Ctx, HandlerFuture};
use crate::http;

pub(crate) fn healthz(_req: Request<Incoming>, _ctx: Ctx) -> HandlerFuture {
    Box::pin(async move { http::json(StatusCode::OK, &json!({"status": "ok"})) })
}

pub(crate) fn readyz(_req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        if ctx.state.is_ready() {
            http::json(StatusCode::OK, &json!({"status": "ready"}))
        } else {
            http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "tetherd is starting or shutting down",
                "retry in a moment",
            )
        }
    })
}
