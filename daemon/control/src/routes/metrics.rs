//! `GET /metrics`: Prometheus text format.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use prometheus::{Encoder, TextEncoder};

use super::{Ctx, HandlerFuture};
use crate::http;

pub(crate) fn handle(_req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let families = ctx.state.registry.gather();
        let mut out = Vec::new();
        match TextEncoder::new().encode(&families, &mut out) {
            Ok(()) => http::with_type(StatusCode::OK, http::full(out), "text/plain; version=0.0.4"),
            Err(e) => http::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("could not encode metrics: {e}"),
                "this is a bug in tetherd; please report it",
            ),
        }
    })
}
