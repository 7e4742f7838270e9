//! The typed control API client used by the `tether` CLI.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tether_model::{ApiError, ErrorBody};
use tokio::net::UnixStream;

/// Why a control API call failed. [`ClientError::exit_code`] maps it to the CLI's exit codes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No socket at the path: the daemon is not running (or another path is meant).
    #[error("tetherd is not running: no control socket at {}\nhint: start it (systemctl start tetherd, or `tether demo`), or point --socket / TETHER_SOCKET at its socket", socket.display())]
    NotRunning {
        /// The socket we looked for.
        socket: PathBuf,
    },
    /// The socket exists but nothing listens: a daemon died without cleaning up.
    #[error("tetherd is not running: {} is a stale socket (connection refused)\nhint: start tetherd again; it replaces the stale socket", socket.display())]
    Stale {
        /// The stale socket.
        socket: PathBuf,
    },
    /// The OS refused the connection (file permissions on the socket or its directory).
    #[error("not permitted to connect to {}\nhint: ask an admin to add you to the socket's group (usermod -aG tether $USER, then log in again), or run as a user with access", socket.display())]
    NotPermitted {
        /// The socket.
        socket: PathBuf,
    },
    /// The daemon answered with an error.
    #[error("{error}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The daemon's error body.
        error: ApiError,
    },
    /// Talking to the socket failed midway.
    #[error("control socket {}: {source}", socket.display())]
    Io {
        /// The socket.
        socket: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The daemon's answer made no sense (version mismatch or a bug).
    #[error(
        "unexpected answer from tetherd: {0}\nhint: check that tether and tetherd are the same version"
    )]
    Protocol(String),
}

impl ClientError {
    /// The CLI exit code for this error: 2 for usage or denied (4xx, permission), 3 for
    /// internal problems (daemon down, 5xx, protocol).
    pub fn exit_code(&self) -> u8 {
        match self {
            ClientError::NotPermitted { .. } => 2,
            ClientError::Api { status, .. } if (400..500).contains(status) => 2,
            _ => 3,
        }
    }
}

/// A client for one daemon's control socket. Each call opens a fresh connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
        }
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// `GET path`, JSON answer.
    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.request(Method::GET, path, None).await?;
        parse(&body)
    }

    /// `GET path`, text answer.
    pub async fn get_text(&self, path: &str) -> Result<String, ClientError> {
        let body = self.request(Method::GET, path, None).await?;
        String::from_utf8(body.to_vec()).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `POST path` with a JSON body, JSON answer.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(e.to_string()))?;
        let body = self.request(Method::POST, path, Some(bytes)).await?;
        parse(&body)
    }

    /// `PUT path` with a raw byte body (e.g. a secret's value), JSON answer. The caller should
    /// zero its copy of `body` afterwards.
    pub async fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Vec<u8>,
    ) -> Result<T, ClientError> {
        let body = self
            .send(Method::PUT, path, Some(("application/octet-stream", body)))
            .await?;
        parse(&body)
    }

    /// `GET path` with a streamed answer: `on_chunk` gets each piece as it arrives and returns
    /// `false` to stop early. Used for NDJSON streams (`audit tail -f`, exports).
    pub async fn get_stream(
        &self,
        path: &str,
        mut on_chunk: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let (status, mut body, driver) = self.open(Method::GET, path, None).await?;
        if !status.is_success() {
            let bytes = collect(body).await;
            driver.abort();
            return Err(api_error(status, &bytes?));
        }
        while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ClientError::Protocol(format!("the stream broke: {e}")))?;
            if let Some(data) = frame.data_ref()
                && !on_chunk(data)
            {
                break;
            }
        }
        driver.abort();
        Ok(())
    }

    /// `DELETE path`, JSON answer.
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.request(Method::DELETE, path, None).await?;
        parse(&body)
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ClientError> {
        self.send(method, path, body.map(|b| ("application/json", b)))
            .await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<Bytes, ClientError> {
        let (status, body, driver) = self.open(method, path, body).await?;
        let bytes = collect(body).await;
        driver.abort();
        let bytes = bytes?;
        if status.is_success() {
            return Ok(bytes);
        }
        Err(api_error(status, &bytes))
    }

    /// Connects, sends one request (with an optional `(content type, body)`) and returns the
    /// answer's status and body, plus the connection task to abort once the body is read.
    async fn open(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
    ) -> Result<
        (
            StatusCode,
            Incoming,
            tokio::task::JoinHandle<hyper::Result<()>>,
        ),
        ClientError,
    > {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.connect_error(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "tetherd")
            .header(crate::audit::VIA_HEADER, "cli");
        let body = match body {
            Some((content_type, bytes)) => {
                req = req.header(CONTENT_TYPE, content_type);
                bytes
            }
            None => Vec::new(),
        };
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = match sender.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                driver.abort();
                return Err(ClientError::Protocol(format!("request failed: {e}")));
            }
        };
        let status = resp.status();
        Ok((status, resp.into_body(), driver))
    }

    fn connect_error(&self, e: std::io::Error) -> ClientError {
        let socket = self.socket.clone();
        match e.kind() {
            ErrorKind::NotFound => ClientError::NotRunning { socket },
            ErrorKind::ConnectionRefused => ClientError::Stale { socket },
            ErrorKind::PermissionDenied => ClientError::NotPermitted { socket },
            _ => ClientError::Io { socket, source: e },
        }
    }
}

/// Reads a whole answer body.
async fn collect(body: Incoming) -> Result<Bytes, ClientError> {
    Ok(body
        .collect()
        .await
        .map_err(|e| ClientError::Protocol(format!("reading the answer failed: {e}")))?
        .to_bytes())
}

/// Percent-encodes one path segment (everything but RFC 3986 unreserved characters), so a
/// user-supplied name can never change the request's route.
pub fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|e| ClientError::Protocol(format!("invalid JSON: {e}")))
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    let error = serde_json::from_slice::<ErrorBody>(bytes)
        .map(|b| b.error)
        .unwrap_or_else(|_| {
            ApiError::new(
                "http_error",
                format!(
                    "tetherd answered {status}: {}",
                    String::from_utf8_lossy(bytes).trim()
                ),
                "",
            )
        });
    ClientError::Api {
        status: status.as_u16(),
        error,
    }
}
