//! The typed control API client used by the `tether` CLI: one call per [`Endpoint`], with the
//! request and response types the server uses.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::{ApiError, Encoding, Endpoint, ErrorBody};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
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
    /// A request value could not be encoded (a bug in the caller).
    #[error(transparent)]
    Encode(#[from] crate::EncodeError),
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
    via: &'static str,
}

impl Client {
    /// A client for the socket at `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Client {
            socket: socket.into(),
            via: "cli",
        }
    }

    /// The same client, saying it is `via` (`cli` by default, `mcp` for `tether mcp serve`). The
    /// daemon believes the claim only from the installed `tether` binary; anyone else is `api`.
    pub fn with_via(mut self, via: &'static str) -> Self {
        self.via = via;
        self
    }

    /// The socket this client talks to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Calls endpoint `E` with `req` and reads its whole answer: a JSON document, or for a text
    /// endpoint the text.
    pub async fn call<E: Endpoint>(&self, req: &E::Request) -> Result<E::Response, ClientError> {
        let enc = crate::encode::<E>(req)?;
        let body = self
            .send(
                E::METHOD,
                &enc.path_and_query,
                enc.body.map(|b| ("application/json", b)),
            )
            .await?;
        parse::<E>(&body)
    }

    /// Calls endpoint `E` (whose body is raw bytes, e.g. a secret's value) with `req` for the
    /// path and `body`. The caller should zero its copy of `body` afterwards.
    pub async fn call_raw<E: Endpoint>(
        &self,
        req: &E::Request,
        body: Vec<u8>,
    ) -> Result<E::Response, ClientError> {
        let enc = crate::encode::<E>(req)?;
        let body = self
            .send(
                E::METHOD,
                &enc.path_and_query,
                Some(("application/octet-stream", body)),
            )
            .await?;
        parse::<E>(&body)
    }

    /// Calls endpoint `E` whose body is streamed ([`Endpoint::STREAMED_BODY`], e.g. an
    /// upload): the chunks received from `body` are sent as they come; the sender closing the
    /// channel ends the body. If the sender is dropped after an error of its own, the call
    /// still waits for the daemon's answer (which then reports a short body).
    pub async fn call_streamed<E: Endpoint>(
        &self,
        req: &E::Request,
        body: tokio::sync::mpsc::Receiver<Bytes>,
    ) -> Result<E::Response, ClientError> {
        let enc = crate::encode::<E>(req)?;
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.connect_error(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let driver = tokio::spawn(conn);
        let method = match E::METHOD {
            crate::Method::Get => Method::GET,
            crate::Method::Post => Method::POST,
            crate::Method::Put => Method::PUT,
            crate::Method::Delete => Method::DELETE,
        };
        let request = Request::builder()
            .method(method)
            .uri(&enc.path_and_query)
            .header(HOST, "tetherd")
            .header(crate::VIA_HEADER, self.via)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(ChannelBody(body))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = match sender.send_request(request).await {
            Ok(r) => r,
            Err(e) => {
                driver.abort();
                return Err(ClientError::Protocol(format!("request failed: {e}")));
            }
        };
        let status = resp.status();
        let bytes = collect(resp.into_body()).await;
        driver.abort();
        let bytes = bytes?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        parse::<E>(&bytes)
    }

    /// Calls streaming endpoint `E` (a POST sends its JSON body): `on_line` gets each complete NDJSON line (with its newline,
    /// byte for byte) as it arrives and returns `false` to stop early.
    pub async fn stream_lines<E: Endpoint>(
        &self,
        req: &E::Request,
        mut on_line: impl FnMut(&[u8]) -> bool,
    ) -> Result<(), ClientError> {
        let enc = crate::encode::<E>(req)?;
        let (status, mut body, driver) = self
            .open(
                E::METHOD,
                &enc.path_and_query,
                enc.body.map(|b| ("application/json", b)),
            )
            .await?;
        if !status.is_success() {
            let bytes = collect(body).await;
            driver.abort();
            return Err(api_error(status, &bytes?));
        }
        let mut pending: Vec<u8> = Vec::new();
        'frames: while let Some(frame) = body.frame().await {
            let frame =
                frame.map_err(|e| ClientError::Protocol(format!("the stream broke: {e}")))?;
            let Some(data) = frame.data_ref() else {
                continue;
            };
            pending.extend_from_slice(data);
            let mut start = 0;
            while let Some(i) = pending[start..].iter().position(|b| *b == b'\n') {
                let end = start + i + 1;
                if !on_line(&pending[start..end]) {
                    // Stopped: nothing more goes to `on_line`, not even the lines buffered.
                    pending.clear();
                    break 'frames;
                }
                start = end;
            }
            pending.drain(..start);
        }
        driver.abort();
        if !pending.is_empty() {
            on_line(&pending);
        }
        Ok(())
    }

    /// [`Client::stream_lines`], each line parsed as an [`Endpoint::Response`].
    pub async fn stream<E: Endpoint>(
        &self,
        req: &E::Request,
        mut on_item: impl FnMut(E::Response) -> bool,
    ) -> Result<(), ClientError> {
        let mut bad = None;
        self.stream_lines::<E>(req, |line| {
            if line.iter().all(u8::is_ascii_whitespace) {
                return true;
            }
            match serde_json::from_slice(line) {
                Ok(item) => on_item(item),
                Err(e) => {
                    bad = Some(e.to_string());
                    false
                }
            }
        })
        .await?;
        match bad {
            Some(e) => Err(ClientError::Protocol(format!("invalid NDJSON line: {e}"))),
            None => Ok(()),
        }
    }

    /// Calls upgrade endpoint `E` ([`Encoding::Upgrade`]): on `101 Switching Protocols` returns
    /// the connection, on which the endpoint's protocol now runs; any other answer is the
    /// daemon's error.
    pub async fn upgrade<E: Endpoint>(
        &self,
        req: &E::Request,
    ) -> Result<TokioIo<hyper::upgrade::Upgraded>, ClientError> {
        let Encoding::Upgrade(protocol) = E::RESPONSE else {
            return Err(ClientError::Protocol(format!(
                "{} is not an upgrade endpoint",
                E::PATH
            )));
        };
        let enc = crate::encode::<E>(req)?;
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|e| self.connect_error(e))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        tokio::spawn(conn.with_upgrades());
        let req = Request::builder()
            .method(Method::POST)
            .uri(&enc.path_and_query)
            .header(HOST, "tetherd")
            .header(crate::VIA_HEADER, self.via)
            .header(CONNECTION, "upgrade")
            .header(UPGRADE, protocol)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(enc.body.unwrap_or_default())))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| ClientError::Protocol(format!("request failed: {e}")))?;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let bytes = collect(resp.into_body()).await?;
            return Err(api_error(status, &bytes));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| ClientError::Protocol(format!("the upgrade failed: {e}")))?;
        Ok(TokioIo::new(upgraded))
    }

    async fn send(
        &self,
        method: crate::Method,
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
        method: crate::Method,
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
        let method = match method {
            crate::Method::Get => Method::GET,
            crate::Method::Post => Method::POST,
            crate::Method::Put => Method::PUT,
            crate::Method::Delete => Method::DELETE,
        };
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header(HOST, "tetherd")
            .header(crate::VIA_HEADER, self.via);
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

fn parse<E: Endpoint>(bytes: &[u8]) -> Result<E::Response, ClientError> {
    let parsed = match E::RESPONSE {
        Encoding::Text => {
            let text = String::from_utf8(bytes.to_vec())
                .map_err(|e| ClientError::Protocol(format!("the answer is not UTF-8: {e}")))?;
            serde_json::from_value(serde_json::Value::String(text))
        }
        Encoding::Json | Encoding::NdJson | Encoding::Upgrade(_) => serde_json::from_slice(bytes),
    };
    parsed.map_err(|e| {
        ClientError::Protocol(format!(
            "invalid answer to {} {}: {e}",
            E::METHOD.as_str(),
            E::PATH
        ))
    })
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

/// A request body fed from a channel (chunked transfer encoding).
struct ChannelBody(tokio::sync::mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|c| c.map(|b| Ok(hyper::body::Frame::data(b))))
    }
}
