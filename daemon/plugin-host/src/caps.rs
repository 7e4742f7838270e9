//! The capability granter: the ONE place that decides what a plugin's host imports may do.
//!
//! Every WIT version's host module (`v0_1`, later `v0_2`...) translates its bindgen types and
//! calls into `Grants`; no other code hands anything to a plugin.
//!
//! - `log` → `tracing`, tagged with the plugin name, messages truncated to 4 KiB.
//! - `clock` → the wall clock (ms since the Unix epoch).
//! - `config` → the manifest's `[plugin.config]` table.
//! - `secrets` → only names in the manifest's `secrets` grant, through a [`SecretSource`];
//!   anything else is `None`, counted and logged.
//! - `tcp` (0.2.0 sinks) → [`Grants::tcp_destination`] applies the same destination check as
//!   `http` (allowed_hosts, then every resolved address through the special-address filter);
//!   the connection goes to a checked address (see the `tcp` module for the limits).
//! - `http` → performed by the host: host name checked against `allowed_hosts`, then resolved,
//!   then EVERY resolved address checked (every IANA special-purpose range, IPv4 and IPv6, and
//!   the IPv6 forms carrying such an IPv4 address, refused unless the manifest allows that
//!   host=ip pair; see the `addr` module), then the connection goes to a checked address (no second
//!   lookup, so DNS rebinding cannot swap it; the checked addresses are tried in order).
//!   `https://` is the default: TLS over that connection, the certificate verified against the
//!   URL's host name (also the SNI) with the built-in Mozilla roots plus the plugin's optional
//!   `ca_file` (see the `tls` module). Plain `http://` only with `allow_http`. The request size,
//!   response size (`max_response_bytes`) and the call's deadline (handshake included) apply
//!   to both. `Host` always comes from the URL: a plugin header that would route the request
//!   elsewhere (`Host`, `:authority`, `Forwarded`, `X-Forwarded-Host`, ...) is refused.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use zeroize::Zeroizing;

use crate::manifest::PluginSpec;

/// Where granted secrets come from (the daemon passes its vault).
pub trait SecretSource: Send + Sync {
    /// The secret's bytes, or `None` if there is no such secret.
    fn get(&self, name: &str) -> Option<Zeroizing<Vec<u8>>>;
}

/// A [`SecretSource`] with no secrets.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSecrets;

impl SecretSource for NoSecrets {
    fn get(&self, _name: &str) -> Option<Zeroizing<Vec<u8>>> {
        None
    }
}

/// Log level of a plugin message.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

/// An outgoing request (version-independent).
pub(crate) struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A response handed back to the plugin.
pub(crate) struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Why `http.send` failed.
#[derive(Debug)]
pub(crate) enum HttpError {
    NotAllowed(String),
    Timeout,
    TooLarge,
    Failed(String),
}

/// Why a `tcp` operation failed.
#[derive(Debug)]
pub(crate) enum TcpError {
    NotAllowed(String),
    Timeout,
    TooLarge,
    Closed,
    Failed(String),
}

/// Everything one plugin has been granted.
pub(crate) struct Grants {
    pub plugin: String,
    spec: PluginSpec,
    secrets: Arc<dyn SecretSource>,
    rt: tokio::runtime::Handle,
    /// TLS client config (`None` when the plugin may not reach any host).
    tls: Option<Arc<rustls::ClientConfig>>,
    /// `secrets.get` calls refused because the name is not granted.
    pub secret_denials: AtomicU64,
    /// `http.send` calls refused by the destination check.
    pub http_denials: AtomicU64,
}

const MAX_LOG: usize = 4096;

impl Grants {
    /// Fails when the plugin's `ca_file` cannot be used.
    pub fn new(
        spec: PluginSpec,
        secrets: Arc<dyn SecretSource>,
        rt: tokio::runtime::Handle,
    ) -> crate::error::Result<Self> {
        let tls = if spec.capabilities.allowed_hosts.is_empty() {
            None
        } else {
            Some(crate::tls::client_config(&spec)?)
        };
        Ok(Grants {
            plugin: spec.name.clone(),
            spec,
            secrets,
            rt,
            tls,
            secret_denials: AtomicU64::new(0),
            http_denials: AtomicU64::new(0),
        })
    }

    pub fn log(&self, level: Level, message: &str) {
        let mut end = message.len().min(MAX_LOG);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let m = &message[..end];
        let plugin = self.plugin.as_str();
        match level {
            Level::Debug => tracing::debug!(plugin, "{m}"),
            Level::Info => tracing::info!(plugin, "{m}"),
            Level::Warn => tracing::warn!(plugin, "{m}"),
            Level::Error => tracing::error!(plugin, "{m}"),
        }
    }

    pub fn now_unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    pub fn config(&self, key: &str) -> Option<String> {
        self.spec.config.get(key).cloned()
    }

    pub fn secret(&self, name: &str) -> Option<Zeroizing<Vec<u8>>> {
        // A daemon key is never handed out, whatever a (hand-built) spec says.
        if !self.spec.capabilities.secrets.contains(name)
            || tether_model::is_reserved_secret_name(name)
        {
            self.secret_denials.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(plugin = %self.plugin, secret = name, "plugin asked for a secret it is not granted; returned none");
            return None;
        }
        self.secrets.get(name)
    }

    /// The plugin's limits.
    pub fn limits(&self) -> crate::manifest::Limits {
        self.spec.limits
    }

    /// Where a `tcp.connect` to `host:port` may go: `host` must be in `allowed_hosts`, and EVERY
    /// address it resolves to must pass the same special-address filter as `http.send` (unless
    /// `allow_private` names that host=ip pair). The caller connects only to these addresses.
    pub fn tcp_destination(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Vec<SocketAddr>, TcpError> {
        let r = self.tcp_destination_inner(host, port, deadline);
        if let Err(TcpError::NotAllowed(why)) = &r {
            self.http_denials.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(plugin = %self.plugin, "tcp destination refused: {why}");
        }
        r
    }

    fn tcp_destination_inner(
        &self,
        host: &str,
        port: u16,
        deadline: Instant,
    ) -> Result<Vec<SocketAddr>, TcpError> {
        let caps = &self.spec.capabilities;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if !host_allowed(&caps.allowed_hosts, &host) {
            return Err(TcpError::NotAllowed(format!(
                "{host} is not in allowed_hosts"
            )));
        }
        if port == 0 {
            return Err(TcpError::NotAllowed("port 0".into()));
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(TcpError::Timeout);
        }
        let allow_private: Vec<IpAddr> = caps
            .allow_private
            .iter()
            .filter(|(h, _)| *h == host)
            .map(|(_, ip)| *ip)
            .collect();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let r =
                tokio::time::timeout(remaining, checked_addrs(&host, port, &allow_private)).await;
            let _ = tx.send(r);
        });
        match rx.recv_timeout(remaining + Duration::from_millis(50)) {
            Ok(Ok(Ok(addrs))) => Ok(addrs),
            Ok(Ok(Err(Refused::NotAllowed(s)))) => Err(TcpError::NotAllowed(s)),
            Ok(Ok(Err(Refused::Failed(s)))) => Err(TcpError::Failed(s)),
            Ok(Err(_)) | Err(_) => Err(TcpError::Timeout),
        }
    }

    /// Performs `req` if the manifest allows its destination; `deadline` is the call's deadline.
    pub fn http(&self, req: HttpRequest, deadline: Instant) -> Result<HttpResponse, HttpError> {
        let r = self.http_inner(req, deadline);
        if let Err(HttpError::NotAllowed(why)) = &r {
            self.http_denials.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(plugin = %self.plugin, "http destination refused: {why}");
        }
        r
    }

    fn http_inner(&self, req: HttpRequest, deadline: Instant) -> Result<HttpResponse, HttpError> {
        let caps = &self.spec.capabilities;
        let limits = self.spec.limits;
        let size = req.url.len()
            + req.method.len()
            + req.body.len()
            + req
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>();
        if size > limits.max_request_bytes {
            return Err(HttpError::TooLarge);
        }
        let uri: hyper::Uri = req
            .url
            .parse()
            .map_err(|e| HttpError::Failed(format!("bad url: {e}")))?;
        let host = uri
            .host()
            .ok_or_else(|| HttpError::Failed("url has no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        if !host_allowed(&caps.allowed_hosts, &host) {
            return Err(HttpError::NotAllowed(format!(
                "{host} is not in allowed_hosts"
            )));
        }
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            other => {
                return Err(HttpError::NotAllowed(format!(
                    "scheme {other:?} (only https, or http with allow_http)"
                )));
            }
        };
        if !https && !caps.allow_http {
            return Err(HttpError::NotAllowed(format!(
                "http://{host} is plain HTTP; HTTPS only unless allow_http = true"
            )));
        }
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let method = hyper::Method::from_bytes(req.method.as_bytes())
            .map_err(|_| HttpError::Failed(format!("bad method {:?}", req.method)))?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(HttpError::Timeout);
        }
        let allow_private: Vec<IpAddr> = caps
            .allow_private
            .iter()
            .filter(|(h, _)| *h == host)
            .map(|(_, ip)| *ip)
            .collect();
        let max_resp = limits.max_response_bytes;
        let path = uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let authority = authority_of(&host, port, https);
        let headers = routing_checked(req.headers, &host, port, https)?;
        let host2 = host.clone();
        let tls = self.tls.clone();
        let fut = async move {
            // 1. resolve; 2. every resolved address must be acceptable
            let addrs = checked_addrs(&host2, port, &allow_private)
                .await
                .map_err(|e| match e {
                    Refused::NotAllowed(s) => HttpError::NotAllowed(s),
                    Refused::Failed(s) => HttpError::Failed(s),
                })?;
            // 3. connect to a checked address, never re-resolving
            let mut stream = None;
            let mut last_err = String::new();
            for a in &addrs {
                match tokio::net::TcpStream::connect(a).await {
                    Ok(s) => {
                        stream = Some(s);
                        break;
                    }
                    Err(e) => last_err = format!("connect {a}: {e}"),
                }
            }
            let stream = stream.ok_or(HttpError::Failed(last_err))?;
            if !https {
                return send_http1(
                    stream, method, &path, &authority, headers, req.body, max_resp,
                )
                .await;
            }
            // 4. TLS on that connection, verified against the host name (not the address)
            let (Some(config), Some(name)) = (tls, crate::tls::server_name(&host2)) else {
                return Err(HttpError::Failed(format!(
                    "{host2} is not usable as a TLS server name"
                )));
            };
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map_err(|e| HttpError::Failed(crate::tls::describe(&host2, &e)))?;
            send_http1(
                stream, method, &path, &authority, headers, req.body, max_resp,
            )
            .await
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.spawn(async move {
            let r = match tokio::time::timeout(remaining, fut).await {
                Ok(r) => r,
                Err(_) => Err(HttpError::Timeout),
            };
            let _ = tx.send(r);
        });
        match rx.recv_timeout(remaining + Duration::from_millis(50)) {
            Ok(r) => r,
            Err(_) => Err(HttpError::Timeout),
        }
    }
}

async fn send_http1<S>(
    stream: S,
    method: hyper::Method,
    path: &str,
    authority: &str,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    max_resp: usize,
) -> Result<HttpResponse, HttpError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    use http_body_util::{BodyExt, Full};
    let failed = |e: &dyn std::fmt::Display| HttpError::Failed(e.to_string());
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| failed(&e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    // `Host` always comes from the URL (see `routing_checked`); plugin headers never carry it.
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", authority);
    for (k, v) in &headers {
        builder = builder.header(k.as_str(), v.as_str());
    }
    let request = builder
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| failed(&e))?;
    let resp = sender.send_request(request).await.map_err(|e| failed(&e))?;
    let status = resp.status().as_u16();
    let mut size = 0usize;
    let mut out_headers = Vec::new();
    for (k, v) in resp.headers() {
        size += k.as_str().len() + v.len() + 4;
        out_headers.push((
            k.as_str().to_string(),
            String::from_utf8_lossy(v.as_bytes()).into_owned(),
        ));
    }
    if size > max_resp {
        return Err(HttpError::TooLarge);
    }
    let mut body = resp.into_body();
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| failed(&e))?;
        if let Some(data) = frame.data_ref() {
            size += data.len();
            if size > max_resp {
                return Err(HttpError::TooLarge);
            }
            out.extend_from_slice(data);
        }
    }
    Ok(HttpResponse {
        status,
        headers: out_headers,
        body: out,
    })
}

/// Why [`checked_addrs`] refused a destination.
enum Refused {
    NotAllowed(String),
    Failed(String),
}

/// The one destination check of `http.send` and `tcp.connect`: resolves `host` (an IP literal
/// resolves to itself) and checks EVERY address against the special-address filter, unless
/// `allow_private` (the manifest's addresses for this host) names it. Callers connect only to
/// the returned addresses, never re-resolving.
async fn checked_addrs(
    host: &str,
    port: u16,
    allow_private: &[IpAddr],
) -> Result<Vec<SocketAddr>, Refused> {
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Refused::Failed(format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(Refused::Failed(format!("{host} resolves to no address")));
    }
    for a in &addrs {
        if let Some(why) = forbidden(a.ip())
            && !allow_private.contains(&a.ip())
        {
            return Err(Refused::NotAllowed(format!(
                "{host} resolves to {} ({why})",
                a.ip()
            )));
        }
    }
    Ok(addrs)
}

/// The `Host` value for a URL: the host (IPv6 in brackets), plus the port when not the default.
fn authority_of(host: &str, port: u16, https: bool) -> String {
    let h = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    if port == if https { 443 } else { 80 } {
        h
    } else {
        format!("{h}:{port}")
    }
}

/// Headers that route a request to another virtual host or origin behind a shared front end
/// (domain fronting). A plugin may not set them to anything but the URL's own host.
const ROUTING_HEADERS: &[&str] = &[
    "host",
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-host",
    "x-original-host",
    "x-http-host-override",
];

/// Checks a plugin's request headers against the URL it was allowed to reach: a pseudo-header
/// (`:authority`, ...) is refused, and so is a routing header ([`ROUTING_HEADERS`]) whose value
/// is not the URL's host (with or without its port). A matching `Host` is dropped (the host
/// sets it from the URL); the other headers pass unchanged.
pub(crate) fn routing_checked(
    headers: Vec<(String, String)>,
    host: &str,
    port: u16,
    https: bool,
) -> Result<Vec<(String, String)>, HttpError> {
    let bare = authority_of(host, if https { 443 } else { 80 }, https);
    let with_port = format!("{bare}:{port}");
    let mut out = Vec::with_capacity(headers.len());
    for (k, v) in headers {
        let name = k.trim();
        if name.starts_with(':') {
            return Err(HttpError::NotAllowed(format!(
                "header {name:?}: pseudo-headers are set by the host from the URL"
            )));
        }
        let lower = name.to_ascii_lowercase();
        if !ROUTING_HEADERS.contains(&lower.as_str()) {
            out.push((k, v));
            continue;
        }
        let value = v.trim();
        let same = lower != "forwarded"
            && (value.eq_ignore_ascii_case(&bare) || value.eq_ignore_ascii_case(&with_port));
        if !same {
            return Err(HttpError::NotAllowed(format!(
                "header {name:?} may only name the URL's host {bare:?}, not {:?}",
                excerpt(value)
            )));
        }
        if lower != "host" {
            out.push((k, v));
        }
    }
    Ok(out)
}

/// At most 64 characters of `s`, for an error message (the `{:?}` around it escapes them).
fn excerpt(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

fn host_allowed(allowed: &[String], host: &str) -> bool {
    allowed.iter().any(|a| match a.strip_prefix("*.") {
        Some(domain) => {
            host.len() > domain.len() + 1
                && host.ends_with(domain)
                && host[..host.len() - domain.len()].ends_with('.')
        }
        None => a == host,
    })
}

pub(crate) use crate::addr::forbidden;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "100.64.0.1",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
            "64:ff9b::a00:1",
        ] {
            assert!(forbidden(a.parse().unwrap()).is_some(), "{a}");
        }
        for a in ["93.184.216.34", "1.1.1.1", "2606:4700::1111"] {
            assert!(forbidden(a.parse().unwrap()).is_none(), "{a}");
        }
    }

    #[test]
    fn a_plugin_cannot_route_its_request_to_another_host() {
        let h = |k: &str, v: &str| vec![(k.to_string(), v.to_string())];
        // Host, in every spelling, naming another host: refused
        for (k, v) in [
            ("Host", "internal.example"),
            ("host", "internal.example:443"),
            ("HOST ", "api.example.com.evil"),
            ("X-Forwarded-Host", "admin.example"),
            ("x-original-host", "admin.example"),
            ("Forwarded", "host=admin.example"),
            (":authority", "api.example.com"),
            (":path", "/"),
        ] {
            let r = routing_checked(h(k, v), "api.example.com", 443, true);
            assert!(
                matches!(r, Err(HttpError::NotAllowed(_))),
                "{k}: {v} -> {r:?}"
            );
        }
        // the URL's own host (any case, with or without the port): allowed, Host dropped
        for v in ["api.example.com", "API.example.com", "api.example.com:443"] {
            let r = routing_checked(h("Host", v), "api.example.com", 443, true).unwrap();
            assert!(r.is_empty(), "{r:?}");
        }
        let r = routing_checked(h("host", "[::1]:8080"), "::1", 8080, false).unwrap();
        assert!(r.is_empty());
        assert!(routing_checked(h("host", "::1"), "::1", 8080, false).is_err());
        // other headers pass unchanged
        let r = routing_checked(h("Authorization", "Bearer x"), "a.io", 443, true).unwrap();
        assert_eq!(r, h("Authorization", "Bearer x"));
        assert_eq!(authority_of("a.io", 443, true), "a.io");
        assert_eq!(authority_of("a.io", 80, true), "a.io:80");
        assert_eq!(authority_of("::1", 80, false), "[::1]");
    }

    #[test]
    fn host_patterns() {
        let allowed = vec!["api.example.com".to_string(), "*.hooks.io".to_string()];
        assert!(host_allowed(&allowed, "api.example.com"));
        assert!(!host_allowed(&allowed, "evil.api.example.com"));
        assert!(host_allowed(&allowed, "a.hooks.io"));
        assert!(!host_allowed(&allowed, "hooks.io"));
        assert!(!host_allowed(&allowed, "xhooks.io"));
    }
}
