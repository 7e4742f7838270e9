//! What the host lets a plugin do. Each call goes to the daemon, which enforces the plugin's
//! manifest (granted secrets, allowed HTTP destinations, size and time limits).
//!
//! Outside `wasm32` these functions panic (there is no host); keep logic you want to unit-test
//! on the build machine in pure functions that take the values as arguments.

/// Logging into the daemon's log, tagged with the plugin's name.
pub mod log {
    use crate::bindings::log::{Level, log};

    /// Logs a debug message.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }

    /// Logs an informational message.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }

    /// Logs a warning.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }

    /// Logs an error.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// The only clock a plugin has (UTC wall time from the host).
pub mod clock {
    use crate::time::Timestamp;

    /// The current time.
    pub fn now() -> Timestamp {
        Timestamp::from_unix_ms(now_unix_ms())
    }

    /// The current time in milliseconds since the Unix epoch.
    pub fn now_unix_ms() -> u64 {
        crate::bindings::clock::now_unix_ms()
    }
}

/// The plugin's own settings, from `[plugins.NAME.config]` in the manifest.
pub mod config {
    /// The value of `key`, if the manifest sets it.
    pub fn get(key: &str) -> Option<String> {
        crate::bindings::config::get(key)
    }

    /// The value of `key`, or `default` when the manifest does not set it.
    pub fn get_or(key: &str, default: &str) -> String {
        get(key).unwrap_or_else(|| default.to_owned())
    }
}

/// Secrets from the daemon's vault, by name; only names granted in the manifest are readable.
pub mod secrets {
    use core::fmt;

    /// A secret's bytes. `Debug` never shows them; the buffer is overwritten on drop.
    pub struct Secret(Vec<u8>);

    impl Secret {
        /// The secret's bytes.
        pub fn expose(&self) -> &[u8] {
            &self.0
        }

        /// The secret as UTF-8 text (API tokens), or `None` if it is not valid UTF-8.
        pub fn as_str(&self) -> Option<&str> {
            core::str::from_utf8(&self.0).ok()
        }
    }

    impl fmt::Debug for Secret {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Secret(<redacted>)")
        }
    }

    impl Drop for Secret {
        fn drop(&mut self) {
            for b in self.0.iter_mut() {
                *b = 0;
            }
            core::hint::black_box(&mut self.0);
        }
    }

    /// The secret `name`, or `None` if it does not exist or is not granted to this plugin.
    pub fn get(name: &str) -> Option<Secret> {
        crate::bindings::secrets::get(name).map(Secret)
    }
}

/// Outbound HTTP, performed by the host. The destination is checked against the plugin's
/// `allowed_hosts` after DNS resolution; HTTPS only unless the manifest says `allow_http`.
pub mod http {
    use crate::bindings::http as wit;
    use core::fmt;

    /// An HTTP request for [`send`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Request {
        /// The method, e.g. `GET`, `POST`.
        pub method: String,
        /// The absolute URL (`https://…`).
        pub url: String,
        /// Header names and values.
        pub headers: Vec<(String, String)>,
        /// The body (may be empty).
        pub body: Vec<u8>,
    }

    impl Request {
        /// A request with the given method and URL, no headers and an empty body.
        pub fn new(method: &str, url: &str) -> Self {
            Request {
                method: method.to_owned(),
                url: url.to_owned(),
                headers: Vec::new(),
                body: Vec::new(),
            }
        }

        /// A `GET` request.
        pub fn get(url: &str) -> Self {
            Self::new("GET", url)
        }

        /// A `POST` request with a body.
        pub fn post(url: &str, body: impl Into<Vec<u8>>) -> Self {
            Self::new("POST", url).body(body)
        }

        /// Adds a header.
        pub fn header(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.to_owned(), value.to_owned()));
            self
        }

        /// Sets the body.
        pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
            self.body = body.into();
            self
        }

        /// Sets a JSON body (already serialised) and `content-type: application/json`.
        pub fn json(self, json: &str) -> Self {
            self.header("content-type", "application/json")
                .body(json.as_bytes().to_vec())
        }
    }

    /// The answer to a [`send`].
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Response {
        /// The HTTP status code.
        pub status: u16,
        /// Header names and values.
        pub headers: Vec<(String, String)>,
        /// The body.
        pub body: Vec<u8>,
    }

    impl Response {
        /// Whether the status is 2xx.
        pub fn is_success(&self) -> bool {
            (200..300).contains(&self.status)
        }

        /// The body as text (invalid UTF-8 replaced).
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }

        /// The first header called `name` (case-insensitive).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    /// Why the host did not deliver a request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    #[non_exhaustive]
    pub enum Error {
        /// The destination (name or resolved address) is not in the plugin's `allowed_hosts`,
        /// or the scheme is not allowed; the text says which.
        NotAllowed(String),
        /// The request took longer than the plugin's HTTP time limit.
        Timeout,
        /// The request or response was larger than the plugin's limit.
        TooLarge,
        /// The request failed (connection, TLS, protocol); the text says why.
        Failed(String),
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::NotAllowed(why) => write!(f, "not allowed: {why}"),
                Error::Timeout => f.write_str("timeout"),
                Error::TooLarge => f.write_str("too large"),
                Error::Failed(why) => write!(f, "failed: {why}"),
            }
        }
    }

    impl std::error::Error for Error {}

    /// Sends `req` through the host and waits for the answer.
    pub fn send(req: &Request) -> Result<Response, Error> {
        let wreq = wit::Request {
            method: req.method.clone(),
            url: req.url.clone(),
            headers: req.headers.clone(),
            body: req.body.clone(),
        };
        match wit::send(&wreq) {
            Ok(r) => Ok(Response {
                status: r.status,
                headers: r.headers,
                body: r.body,
            }),
            Err(wit::Error::NotAllowed(why)) => Err(Error::NotAllowed(why)),
            Err(wit::Error::Timeout) => Err(Error::Timeout),
            Err(wit::Error::TooLarge) => Err(Error::TooLarge),
            Err(wit::Error::Failed(why)) => Err(Error::Failed(why)),
        }
    }
}

/// Outbound TCP for sinks (`alert-sink`, `audit-sink` worlds), performed by the host: the
/// destination must be in the manifest's `allowed_hosts` and every address it resolves to must
/// pass the same filter as `http.send` (private, loopback and metadata addresses only with
/// `allow_private`). Bytes per call are capped by `max_request_bytes` / `max_response_bytes`,
/// every operation ends by the call's deadline, at most 4 connections are open at once, and
/// the host closes every connection when the call returns.
///
/// ```ignore
/// let mut c = tether_plugin_sdk::host::tcp::connect("siem.example.com", 6514)?;
/// c.send(b"<14>1 - host tether - - - hello\n")?;
/// let reply = c.receive(512, 20)?;
/// ```
pub mod tcp {
    use crate::__private::bindings::alerts::tether::plugin::tcp as wit;
    use core::fmt;

    /// Why a TCP operation failed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Error {
        /// The destination (name or resolved address) is not allowed for this plugin.
        NotAllowed(String),
        /// The call's deadline (or the receive timeout) passed.
        Timeout,
        /// More bytes than the plugin's limits, or too many connections.
        TooLarge,
        /// The peer closed the connection, or it was closed already.
        Closed,
        /// Anything else (connection refused, reset...).
        Failed(String),
    }

    impl fmt::Display for Error {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            match self {
                Error::NotAllowed(s) => write!(f, "destination not allowed: {s}"),
                Error::Timeout => f.write_str("timed out"),
                Error::TooLarge => f.write_str("over the plugin's size or connection limits"),
                Error::Closed => f.write_str("connection closed"),
                Error::Failed(s) => write!(f, "tcp failed: {s}"),
            }
        }
    }

    impl From<wit::Error> for Error {
        fn from(e: wit::Error) -> Self {
            match e {
                wit::Error::NotAllowed(s) => Error::NotAllowed(s),
                wit::Error::Timeout => Error::Timeout,
                wit::Error::TooLarge => Error::TooLarge,
                wit::Error::Closed => Error::Closed,
                wit::Error::Failed(s) => Error::Failed(s),
            }
        }
    }

    /// An open connection; closed on drop (and by the host when the call returns).
    #[derive(Debug)]
    pub struct Connection {
        id: u32,
    }

    /// Connects to `host:port` (a name or an IP literal).
    pub fn connect(host: &str, port: u16) -> Result<Connection, Error> {
        Ok(Connection {
            id: wit::connect(host, port)?,
        })
    }

    impl Connection {
        /// Sends all of `data`.
        pub fn send(&mut self, data: &[u8]) -> Result<(), Error> {
            Ok(wit::send(self.id, data)?)
        }

        /// Receives up to `max_bytes` (at least one), waiting at most `timeout_ms`;
        /// [`Error::Closed`] at the end of the stream.
        pub fn receive(&mut self, max_bytes: u32, timeout_ms: u32) -> Result<Vec<u8>, Error> {
            Ok(wit::receive(self.id, max_bytes, timeout_ms)?)
        }
    }

    impl Drop for Connection {
        fn drop(&mut self) {
            wit::close(self.id);
        }
    }
}
