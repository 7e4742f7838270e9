//! `/v1/alerts`: recent alerts with their delivery state; a test alert through one sink.

use std::time::Duration;

use hyper::StatusCode;
use serde_json::json;
use tether_api::{AlertInfo, AlertList, AlertTestRequest, AlertsQuery};

use super::Ctx;
use crate::http::Fail;

fn service(ctx: &Ctx) -> Result<tether_alerts::AlertService, Fail> {
    ctx.state.alert_service.clone().ok_or_else(|| {
        Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "alert delivery is not running in this daemon",
            "retry once tetherd has started",
        )
    })
}

/// `GET /v1/alerts`: the newest alerts, each with its state per sink.
pub(crate) async fn list(ctx: Ctx, req: AlertsQuery) -> Result<AlertList, Fail> {
    let svc = service(&ctx)?;
    let limit = req.limit.unwrap_or(50).clamp(1, 1000);
    Ok(AlertList {
        alerts: svc
            .recent(limit)
            .iter()
            .map(crate::convert::alert_info)
            .collect(),
        sinks: svc.sinks(),
    })
}

/// `POST /v1/alerts/test`: a test alert through `sink`'s real queue, retries and dead-lettering;
/// answers once it is delivered or dropped (or `wait_secs` passed).
pub(crate) async fn test(ctx: Ctx, req: AlertTestRequest) -> Result<AlertInfo, Fail> {
    let svc = service(&ctx)?;
    if !svc.sinks().contains(&req.sink) {
        return Err(Fail::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no alert sink named {:?}", req.sink),
            "tether alerts list shows the configured sinks; tether plugin list the alert_sink plugins",
        ));
    }
    ctx.state
        .audit_or_refuse("alert.test", ctx.actor(), None, json!({"sink": req.sink}))
        .await?;
    let wait = Duration::from_secs(req.wait_secs.unwrap_or(30).min(600));
    let entry = svc.test(&req.sink, wait).await.map_err(|e| {
        Fail::new(
            StatusCode::NOT_FOUND,
            "not_found",
            e.to_string(),
            "tether alerts list shows the configured sinks",
        )
    })?;
    Ok(crate::convert::alert_info(&entry))
}
