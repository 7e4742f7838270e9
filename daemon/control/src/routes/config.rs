//! `GET /v1/config`: the effective configuration with secrets redacted.

use tether_api::{EffectiveConfig, Empty};

use super::Ctx;
use crate::http::Fail;

pub(crate) async fn handle(ctx: Ctx, _req: Empty) -> Result<EffectiveConfig, Fail> {
    let config = ctx.state.config();
    Ok(EffectiveConfig(tether_config::redacted_json(&*config)))
}
