//! `/v1/secrets`: the vault, admin only. Values go in (PUT) and never come out: no route returns
//! a secret's value. Request bodies holding a value are copied into locked memory and the
//! transfer buffer is zeroed.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;
use tether_vault::{SecretBox, Vault, VaultError};
use zeroize::Zeroize;

use super::{Ctx, HandlerFuture};
use crate::http::{self, Body};

fn vault(ctx: &Ctx) -> Result<Vault, hyper::Response<Body>> {
    ctx.state.vault.clone().ok_or_else(|| {
        http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "vault_unavailable",
            "this tetherd runs without a vault",
            "start tetherd normally (tetherd run) to manage secrets",
        )
    })
}

/// Maps a vault error to an HTTP answer. Messages never contain secret values.
fn vault_error(e: &VaultError) -> hyper::Response<Body> {
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
    http::error(status, code, &e.to_string(), "")
}

/// Runs a blocking vault call off the async workers (file IO, D-Bus).
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> Result<T, hyper::Response<Body>> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(vault_error(&e)),
        Err(_) => Err(http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the vault operation panicked",
            "this is a bug in tetherd; please report it",
        )),
    }
}

fn name(ctx: &Ctx) -> String {
    ctx.params.first().cloned().unwrap_or_default()
}

/// The start of every change to a secret: the vault, the name, and the durable audit record
/// (`kind`, names only) — refused if that record can't be written.
async fn change(
    ctx: &Ctx,
    req: &Request<Incoming>,
    kind: &str,
) -> Result<(Vault, String), hyper::Response<Body>> {
    let v = vault(ctx)?;
    let n = name(ctx);
    let a = crate::audit::actor(&ctx.caller, Some(ctx.role), crate::audit::via_of(req));
    ctx.state
        .audit_or_refuse(kind, a, None, json!({"name": n}))
        .await?;
    Ok((v, n))
}

pub(crate) fn list(_req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let v = match vault(&ctx) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let backend = v.backend();
        match blocking(move || v.list()).await {
            Ok(list) => http::json(
                StatusCode::OK,
                &json!({"backend": backend, "secrets": list}),
            ),
            Err(r) => r,
        }
    })
}

pub(crate) fn set(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let via = crate::audit::via_of(&req);
        let v = match vault(&ctx) {
            Ok(v) => v,
            Err(r) => return r,
        };
        let body = match http::read_body(req, ctx.state.idle_timeout()).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let mut raw: Vec<u8> = body.into();
        let secret = SecretBox::from_slice(&raw);
        raw.zeroize();
        let secret = match secret {
            Ok(s) => s,
            Err(e) => return vault_error(&e),
        };
        let n = name(&ctx);
        let a = crate::audit::actor(&ctx.caller, Some(ctx.role), via);
        if let Err(r) = ctx
            .state
            .audit_or_refuse("secret.set", a, None, json!({"name": n}))
            .await
        {
            return r;
        }
        match blocking(move || v.set(&n, secret)).await {
            Ok(info) => {
                tracing::info!(secret = %info.name, version = info.version, "secret set");
                http::json(StatusCode::OK, &info)
            }
            Err(r) => r,
        }
    })
}

pub(crate) fn remove(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let (v, n) = match change(&ctx, &req, "secret.rm").await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let n2 = n.clone();
        match blocking(move || v.remove(&n2)).await {
            Ok(()) => {
                tracing::info!(secret = %n, "secret removed");
                http::json(StatusCode::OK, &json!({"removed": n}))
            }
            Err(r) => r,
        }
    })
}

pub(crate) fn rotate(req: Request<Incoming>, ctx: Ctx) -> HandlerFuture {
    Box::pin(async move {
        let (v, n) = match change(&ctx, &req, "secret.rotate").await {
            Ok(x) => x,
            Err(r) => return r,
        };
        match blocking(move || v.rotate(&n)).await {
            Ok(info) => {
                tracing::info!(secret = %info.name, version = info.version, "secret rotated");
                http::json(StatusCode::OK, &info)
            }
            Err(r) => r,
        }
    })
}
