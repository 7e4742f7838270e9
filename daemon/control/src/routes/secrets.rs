//! `/v1/secrets`: the vault, admin only. Values go in (PUT) and never come out: no route returns
//! a secret's value. Request bodies holding a value are copied into locked memory and the
//! transfer buffer is zeroed.

use bytes::Bytes;
use hyper::StatusCode;
use serde_json::json;
use tether_api::{Empty, SecretInfo, SecretList, SecretRef, SecretRemoved};
use tether_vault::{SecretBox, Vault, VaultError};
use zeroize::Zeroize;

use super::Ctx;
use crate::http::Fail;

fn vault(ctx: &Ctx) -> Result<Vault, Fail> {
    ctx.state.vault.clone().ok_or_else(|| {
        Fail::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "vault_unavailable",
            "this tetherd runs without a vault",
            "start tetherd normally (tetherd run) to manage secrets",
        )
    })
}

/// Refuses names in the daemon's own namespace (`tetherd.*`): its keys are not user secrets and
/// change only through tetherd. Checked before anything else, so a refusal changes nothing.
fn not_reserved(name: &str) -> Result<(), Fail> {
    if tether_model::is_reserved_secret_name(name) {
        return Err(Fail::new(
            StatusCode::FORBIDDEN,
            "reserved_secret",
            format!("{name:?} is a daemon key; the secrets API cannot set, remove or rotate it"),
            tether_model::RESERVED_SECRET_HINT,
        ));
    }
    Ok(())
}

/// Maps a vault error to an HTTP answer. Messages never contain secret values.
fn vault_error(e: &VaultError) -> Fail {
    let (status, code) = match e {
        VaultError::InvalidName { .. } | VaultError::EmptySecret { .. } => {
            (StatusCode::BAD_REQUEST, "invalid_secret")
        }
        VaultError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
        VaultError::NotFound { .. } => (StatusCode::NOT_FOUND, "secret_not_found"),
        VaultError::NotGenerated { .. } | VaultError::ReadOnly { .. } => {
            (StatusCode::CONFLICT, "secret_not_changeable")
        }
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "vault_error"),
    };
    Fail::new(status, code, e.to_string(), "")
}

/// Runs a blocking vault call off the async workers (file IO, D-Bus).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> Result<T, Fail> {
    super::blocking("the vault operation", f)
        .await?
        .map_err(|e| vault_error(&e))
}

/// The start of every change to a secret: the vault and the durable audit record (`kind`, names
/// only) — refused if that record can't be written.
async fn change(ctx: &Ctx, name: &str, kind: &str) -> Result<Vault, Fail> {
    not_reserved(name)?;
    let v = vault(ctx)?;
    ctx.state
        .audit_or_refuse(kind, ctx.actor(), None, json!({"name": name}))
        .await?;
    Ok(v)
}

pub(crate) async fn list(ctx: Ctx, _req: Empty) -> Result<SecretList, Fail> {
    let v = vault(&ctx)?;
    let backend = v.backend().as_str().to_owned();
    let list = blocking(move || v.list()).await?;
    Ok(SecretList {
        backend,
        secrets: list.iter().map(crate::convert::secret).collect(),
    })
}

pub(crate) async fn set(ctx: Ctx, r: SecretRef, body: Bytes) -> Result<SecretInfo, Fail> {
    let mut raw: Vec<u8> = body.into();
    if let Err(f) = not_reserved(&r.name).and_then(|()| vault(&ctx).map(drop)) {
        raw.zeroize();
        return Err(f);
    }
    let secret = SecretBox::from_slice(&raw);
    raw.zeroize();
    let secret = secret.map_err(|e| vault_error(&e))?;
    let v = change(&ctx, &r.name, "secret.set").await?;
    let n = r.name;
    let info = blocking(move || v.set(&n, secret)).await?;
    tracing::info!(secret = %info.name, version = info.version, "secret set");
    Ok(crate::convert::secret(&info))
}

pub(crate) async fn remove(ctx: Ctx, r: SecretRef) -> Result<SecretRemoved, Fail> {
    let v = change(&ctx, &r.name, "secret.rm").await?;
    let n = r.name.clone();
    blocking(move || v.remove(&n)).await?;
    tracing::info!(secret = %r.name, "secret removed");
    Ok(SecretRemoved { removed: r.name })
}

pub(crate) async fn rotate(ctx: Ctx, r: SecretRef) -> Result<SecretInfo, Fail> {
    let v = change(&ctx, &r.name, "secret.rotate").await?;
    let info = blocking(move || v.rotate(&r.name)).await?;
    tracing::info!(secret = %info.name, version = info.version, "secret rotated");
    Ok(crate::convert::secret(&info))
}
