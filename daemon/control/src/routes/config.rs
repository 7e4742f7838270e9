//! `GET /v1/config`: the effective configuration with secrets redacted.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::{Ctx, HandlerFuture};
use crate::http;

pub(crate) fn handle(_req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let config = ctx.state.config();
        http::json(StatusCode::OK, &tether_config::redacted_json(&*config))
    })
}
