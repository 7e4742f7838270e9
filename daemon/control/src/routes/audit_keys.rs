//! `POST /v1/audit/rotate-key` (admin): a new audit key epoch. The `key.rotated` record, MACed
//! with the old key, is the audit of the rotation; the request is recorded before anything is
//! made.

use hyper::StatusCode;
use serde_json::json;
use tether_api::{RotateKeyRequest, RotateKeyResponse};
use tether_audit::AuditError;

use super::Ctx;
use crate::http::Fail;

fn unavailable() -> Fail {
    Fail::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "audit_unavailable",
        "this tetherd runs without an audit log",
        "start tetherd normally (tetherd run)",
    )
}

/// Rotates the HMAC and/or signing key of the audit chain.
pub(crate) async fn rotate(ctx: Ctx, req: RotateKeyRequest) -> Result<RotateKeyResponse, Fail> {
    let (Some(log), Some(keys)) = (ctx.state.audit.clone(), ctx.state.audit_keys.clone()) else {
        return Err(unavailable());
    };
    ctx.state
        .audit_or_refuse(
            "audit.rotate_key_requested",
            ctx.actor(),
            None,
            json!({"hmac": req.hmac, "signing": req.signing, "epoch": log.key_epoch()}),
        )
        .await?;
    let r = log
        .rotate_keys(keys, ctx.actor(), req.hmac, req.signing)
        .await
        .map_err(|e| match e {
            AuditError::KeyUnavailable { .. } => Fail::new(
                StatusCode::CONFLICT,
                "rotation_unsupported",
                e.to_string(),
                "the audit keys can rotate only in a writable vault (keyring or file backend); with systemd credentials, provision the next epoch's keys as credentials",
            ),
            AuditError::WriteFailed { .. } | AuditError::RollbackFailed { .. } => Fail::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                e.to_string(),
                "free space or fix the audit directory, then retry; the keys did not change",
            ),
            other => Fail::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "audit_error",
                other.to_string(),
                "",
            ),
        })?;
    Ok(RotateKeyResponse {
        epoch: r.epoch,
        seq: r.seq,
        hmac_key_id: r.hmac_key_id,
        signing_key: r.signing_key,
        rotated: r.rotated,
    })
}
