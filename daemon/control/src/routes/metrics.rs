//! `GET /metrics`: Prometheus text format.

use prometheus::{Encoder, TextEncoder};
use tether_api::Empty;

use super::Ctx;
use crate::http::Fail;

pub(crate) async fn handle(ctx: Ctx, _req: Empty) -> Result<String, Fail> {
    let families = ctx.state.registry.gather();
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&families, &mut out)
        .map_err(|e| Fail::internal(format!("could not encode metrics: {e}")))?;
    String::from_utf8(out).map_err(|e| Fail::internal(format!("metrics are not UTF-8: {e}")))
}
