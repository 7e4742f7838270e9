//! Small HTTP helpers shared by the routes: JSON responses, JSON errors, bounded body reads.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderValue};
use hyper::{Request, Response, StatusCode};
use tether_api::{ApiError, ErrorBody};

use crate::MAX_BODY_BYTES;

/// A route's refusal: the status and the error body. Handlers return it; the adapter in
/// [`crate::routes`] turns it into the JSON answer.
#[derive(Debug, Clone)]
pub(crate) struct Fail {
    pub status: StatusCode,
    pub error: ApiError,
}

impl Fail {
    /// A refusal with `status` and the three parts of the error body.
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>, hint: &str) -> Fail {
        Fail {
            status,
            error: ApiError::new(code, message, hint),
        }
    }

    /// `400`.
    pub fn bad_request(code: &str, message: impl Into<String>, hint: &str) -> Fail {
        Fail::new(StatusCode::BAD_REQUEST, code, message, hint)
    }

    /// `500` for a bug or a panicked blocking task.
    pub fn internal(message: impl Into<String>) -> Fail {
        Fail::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            message,
            "this is a bug in tetherd; please report it",
        )
    }

    /// The JSON answer.
    pub fn into_response(self) -> Response<Body> {
        let mut bytes =
            serde_json::to_vec(&ErrorBody { error: self.error }).unwrap_or_else(|_| b"{}".to_vec());
        bytes.push(b'\n');
        with_type(self.status, full(bytes), "application/json")
    }
}

/// Response body type for every route (boxed so streaming routes can share it later).
pub(crate) type Body = BoxBody<Bytes, Infallible>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).boxed()
}

/// A JSON error response: `{"error":{"code","message","hint"}}`.
pub(crate) fn error(status: StatusCode, code: &str, message: &str, hint: &str) -> Response<Body> {
    Fail::new(status, code, message, hint).into_response()
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

pub(crate) fn too_large() -> Fail {
    Fail::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("request body is larger than the {MAX_BODY_BYTES}-byte limit"),
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

/// At most this much of a body is read and dropped before an early refusal ([`discard_body`]).
pub(crate) const DISCARD_BYTES: usize = 64 * 1024;

/// Reads and drops what is left of a request body the route refuses before reading it (no
/// role, unknown route, wrong method, `426`), at most [`DISCARD_BYTES`] and within `timeout`.
/// Answering with the body unread makes hyper close the connection with the body's bytes
/// still unread; a client (or a TCP bridge such as socat) still sending them then gets a
/// broken pipe or a reset, and can lose the answer. A bigger or slower body is left unread,
/// and the connection closes after the answer as before.
pub(crate) async fn discard_body(body: Incoming, timeout: Duration) {
    use hyper::body::Body as _;
    if body.is_end_stream() {
        return;
    }
    let limited = Limited::new(body, DISCARD_BYTES);
    let _ = tokio::time::timeout(timeout, limited.collect()).await;
}

/// Reads the whole body, at most [`MAX_BODY_BYTES`], within `timeout`.
pub(crate) async fn read_body(req: Request<Incoming>, timeout: Duration) -> Result<Bytes, Fail> {
    if declared_length(&req).is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let limited = Limited::new(req.into_body(), MAX_BODY_BYTES);
    match tokio::time::timeout(timeout, limited.collect()).await {
        Err(_) => Err(Fail::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!(
                "the request body did not arrive within {} s",
                timeout.as_secs()
            ),
            "send the whole body promptly",
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(e)) => Err(Fail::bad_request(
            "bad_body",
            format!("could not read the request body: {e}"),
            "",
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}
