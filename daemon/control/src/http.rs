//! Small HTTP helpers shared by the routes: JSON responses, JSON errors, bounded body reads.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tether_model::{ApiError, ErrorBody};

use crate::MAX_BODY_BYTES;

/// Response body type for every route (boxed so streaming routes can share it later).
pub(crate) type Body = BoxBody<Bytes, Infallible>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A JSON response.
pub(crate) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            with_type(status, full(bytes), "application/json")
        }
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("could not encode the response: {e}"),
            "this is a bug in tetherd; please report it",
        ),
    }
}

/// A JSON error response: `{"error":{"code","message","hint"}}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str, hint: &str) -> Response<Body> {
    let body = ErrorBody {
        error: ApiError::new(code, message, hint),
    };
    let mut bytes = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
    bytes.push(b'\n');
    with_type(status, full(bytes), "application/json")
}

pub(crate) fn with_type(
    status: StatusCode,
    body: Body,
    content_type: &'static str,
) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

pub(crate) fn too_large() -> Response<Body> {
    error(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        &format!("request body is larger than the {MAX_BODY_BYTES}-byte limit"),
        "send less data per request",
    )
}

/// The declared Content-Length, if any and parseable.
pub(crate) fn declared_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// Reads the whole body, at most [`MAX_BODY_BYTES`], within `timeout`.
pub(crate) async fn read_body(
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<Bytes, Response<Body>> {
    if declared_length(&req).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            &format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            ),
            "send the whole body promptly",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            "bad_body",
            &format!("could not read the request body: {e}"),
            "",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Reads and parses a JSON body. An empty body parses as `{}`.
pub(crate) async fn read_json<T: DeserializeOwned>(
    req: Request<Incoming>,
    timeout: Duration,
) -> Result<T, Response<Body>> {
    let bytes = read_body(req, timeout).await?;
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(bytes).map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            &format!("the request body is not valid JSON for this route: {e}"),
            "see daemon/control/openapi.yaml for the expected shape",
        )
    })
}
