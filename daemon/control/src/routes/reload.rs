//! `POST /v1/reload`: re-read the configuration, exactly like SIGHUP.

use tether_api::{Empty, ReloadReport};

use super::Ctx;
use crate::http::Fail;

pub(crate) async fn handle(ctx: Ctx, _req: Empty) -> Result<ReloadReport, Fail> {
    match ctx.state.reload(ctx.actor(), "config.change", "api").await {
        Ok(report) => {
            tracing::info!(changed = report.changed, needs_restart = ?report.needs_restart, "config reloaded via the control API");
            Ok(report)
        }
        Err(e) => Err(super::policy::reload_failed(&e)),
    }
}
