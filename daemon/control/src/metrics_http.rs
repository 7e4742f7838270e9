//! The optional Prometheus listener (`[metrics] listen`): plain HTTP/1.1 on TCP serving only
//! `GET /metrics`, `/healthz` and `/readyz` — never a `/v1` route, so nothing on this port can
//! change or reveal the daemon's state beyond its metrics. Prometheus cannot scrape a Unix
//! socket; this is the port it scrapes.
//!
//! With `metrics.token_name` set, `/metrics` needs `Authorization: Bearer TOKEN` (the token is a
//! vault secret, compared in constant time, never logged). The listener is unauthenticated by
//! nature, so it is bounded: at most [`MAX_CONNECTIONS`] at once (more wait in the kernel's
//! backlog), request headers within 10 s, no request bodies, GET and HEAD only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, HeaderValue, WWW_AUTHENTICATE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus::{Encoder, TextEncoder};
use subtle::ConstantTimeEq;
use tether_config::MetricsConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{self, Body};
use crate::{AppState, ControlError};

/// Connections served at once; the rest wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 64;

/// How long a client may take to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound metrics listener, ready to serve once the daemon's state exists.
pub struct MetricsListener {
    listener: TcpListener,
    token: Option<tether_vault::SecretBox>,
}

impl std::fmt::Debug for MetricsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsListener")
            .field("addr", &self.listener.local_addr().ok())
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .finish()
    }
}

impl MetricsListener {
    /// Binds `[metrics] listen` and reads the bearer token from the vault; `None` when the
    /// listener is off. A missing token secret or a taken port is an error (the daemon does not
    /// start half-configured).
    pub async fn bind(
        config: &MetricsConfig,
        vault: &tether_vault::Vault,
    ) -> Result<Option<MetricsListener>, ControlError> {
        let Some(listen) = config.listen.as_deref() else {
            return Ok(None);
        };
        let addr: SocketAddr = listen.parse().map_err(|_| ControlError::MetricsAddress {
            listen: listen.to_owned(),
        })?;
        let token = match &config.token_name {
            None => None,
            Some(name) => match vault.get(name) {
                Ok(Some(secret)) => Some(secret),
                Ok(None) => {
                    return Err(ControlError::MetricsToken {
                        name: name.clone(),
                        reason: "no such secret".to_owned(),
                    });
                }
                Err(e) => {
                    return Err(ControlError::MetricsToken {
                        name: name.clone(),
                        reason: e.to_string(),
                    });
                }
            },
        };
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ControlError::MetricsBind { addr, source })?;
        Ok(Some(MetricsListener { listener, token }))
    }

    /// The address actually bound (port 0 resolves here).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until `shutdown`, then lets in-flight scrapes finish (bounded by the drain
    /// timeout of the control server).
    pub async fn serve(self, state: Arc<AppState>, shutdown: CancellationToken) {
        let tracker = TaskTracker::new();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let token = Arc::new(self.token);
        loop {
            let permit = tokio::select! {
                () = shutdown.cancelled() => break,
                p = Arc::clone(&slots).acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            tokio::select! {
                () = shutdown.cancelled() => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        let (state, token, shutdown) =
                            (Arc::clone(&state), Arc::clone(&token), shutdown.clone());
                        tracker.spawn(async move {
                            serve_connection(stream, state, token, shutdown).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        tracing::warn!("metrics listener accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        tracker.close();
        let _ = tokio::time::timeout(crate::server::DRAIN_TIMEOUT, tracker.wait()).await;
    }
}

async fn serve_connection(
    stream: TcpStream,
    state: Arc<AppState>,
    token: Arc<Option<tether_vault::SecretBox>>,
    shutdown: CancellationToken,
) {
    let service = service_fn(move |req| {
        let (state, token) = (Arc::clone(&state), Arc::clone(&token));
        async move { Ok::<_, Infallible>(answer(&req, &state, token.as_ref().as_ref())) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn answer(
    req: &Request<Incoming>,
    state: &AppState,
    token: Option<&tether_vault::SecretBox>,
) -> Response<Body> {
    let path = req.uri().path();
    let known = matches!(path, "/metrics" | "/healthz" | "/readyz");
    let resp = if !known {
        http::error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("this port serves only /metrics, /healthz and /readyz, not {path}"),
            "the control API (/v1) is only on the daemon's Unix socket",
        )
    } else if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = http::error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            &format!("{path} does not accept {}", req.method()),
            "use GET",
        );
        r.headers_mut()
            .insert(hyper::header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        r
    } else {
        match path {
            "/healthz" => json_status(StatusCode::OK, "ok"),
            "/readyz" if state.is_ready() => json_status(StatusCode::OK, "ready"),
            "/readyz" => http::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "tetherd is starting or shutting down",
                "retry in a moment",
            ),
            _ if !authorized(req, token) => {
                let mut r = http::error(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "/metrics needs the bearer token named by metrics.token_name",
                    "send Authorization: Bearer TOKEN (Prometheus: authorization.credentials_file)",
                );
                r.headers_mut().insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"tetherd metrics\""),
                );
                r
            }
            _ => metrics(state),
        }
    };
    let route = if known { path_label(path) } else { "unknown" };
    state
        .metrics
        .requests
        .with_label_values(&[route, resp.status().as_str()])
        .inc();
    resp
}

fn path_label(path: &str) -> &'static str {
    match path {
        "/metrics" => "metrics_http /metrics",
        "/healthz" => "metrics_http /healthz",
        _ => "metrics_http /readyz",
    }
}

/// Whether the request carries the configured bearer token (always, when none is configured).
fn authorized(req: &Request<Incoming>, token: Option<&tether_vault::SecretBox>) -> bool {
    let Some(token) = token else {
        return true;
    };
    let Some(given) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
    else {
        return false;
    };
    token.expose(|expected| {
        let expected = trim_newline(expected);
        bool::from(given.ct_eq(expected))
    })
}

/// A token stored with `echo TOKEN | tether secret set NAME` ends in a newline; the header can't.
fn trim_newline(bytes: &[u8]) -> &[u8] {
    let mut b = bytes;
    while let [rest @ .., b'\n' | b'\r'] = b {
        b = rest;
    }
    b
}

fn json_status(status: StatusCode, text: &str) -> Response<Body> {
    let body = serde_json::to_vec(&tether_api::Health {
        status: text.to_owned(),
    })
    .unwrap_or_default();
    http::with_type(status, http::full(body), "application/json")
}

fn metrics(state: &AppState) -> Response<Body> {
    let families = state.registry.gather();
    let mut out = Vec::new();
    match TextEncoder::new().encode(&families, &mut out) {
        Ok(()) => http::with_type(
            StatusCode::OK,
            http::full(out),
            "text/plain; version=0.0.4; charset=utf-8",
        ),
        Err(e) => http::error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("could not encode metrics: {e}"),
            "this is a bug in tetherd; please report it",
        ),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn stored_newlines_are_not_part_of_the_token() {
        assert_eq!(super::trim_newline(b"abc\n"), b"abc");
        assert_eq!(super::trim_newline(b"abc\r\n"), b"abc");
        assert_eq!(super::trim_newline(b"abc"), b"abc");
    }
}
