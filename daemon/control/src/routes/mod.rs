//! One file per route. [`ROUTES`] is the table the server dispatches on, the OpenAPI test checks
//! against, and `tether` documents.

// Handlers return a ready error `Response` as the early-exit value of their helpers; boxing it
// would only add an allocation on the error path.
#![allow(clippy::result_large_err)]

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use tether_model::Role;

use crate::http::Body;
use crate::{AppState, Caller};

mod audit;
mod config;
mod health;
mod hosts;
mod metrics;
mod policy;
mod reload;
mod secrets;
mod status;
mod vpn;

/// What a handler gets besides the request.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub state: Arc<AppState>,
    /// The caller, for auditing in later routes.
    #[allow(dead_code)]
    pub caller: Arc<Caller>,
    pub role: Role,
    /// Values of the route's `{param}` segments, in order.
    pub params: Vec<String>,
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
type Handler = fn(Request<Incoming>, Ctx) -> HandlerFuture;

/// One route of the control API.
pub struct RouteInfo {
    /// HTTP method.
    pub method: Method,
    /// Exact path.
    pub path: &'static str,
    /// Roles allowed to call it.
    pub roles: &'static [Role],
    /// One line for docs and `tether` help.
    pub summary: &'static str,
    pub(crate) handler: Handler,
}

const ANY: &[Role] = &Role::ALL;
const ADMIN: &[Role] = &[Role::Admin];
const AUDIT_READERS: &[Role] = &[Role::Admin, Role::Auditor];

/// Every route the daemon serves.
pub static ROUTES: &[RouteInfo] = &[
    RouteInfo {
        method: Method::GET,
        path: "/healthz",
        roles: ANY,
        summary: "liveness: 200 while the process serves requests",
        handler: health::healthz,
    },
    RouteInfo {
        method: Method::GET,
        path: "/readyz",
        roles: ANY,
        summary: "readiness: 200 once every subsystem is up, 503 before and while draining",
        handler: health::readyz,
    },
    RouteInfo {
        method: Method::GET,
        path: "/metrics",
        roles: ANY,
        summary: "Prometheus text exposition of the daemon's metrics",
        handler: metrics::handle,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/status",
        roles: ANY,
        summary: "role, version, uptime, pid and host count",
        handler: status::handle,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/config",
        roles: ANY,
        summary: "the effective configuration, secrets redacted",
        handler: config::handle,
    },
    RouteInfo {
        method: Method::POST,
        path: "/v1/reload",
        roles: ADMIN,
        summary: "re-read the configuration (same as SIGHUP); an invalid one keeps the old",
        handler: reload::handle,
    },
    RouteInfo {
        method: Method::POST,
        path: "/v1/audit/verify",
        roles: AUDIT_READERS,
        summary: "verify the audit chain (optionally against an exported checkpoint)",
        handler: audit::verify,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/audit/records",
        roles: AUDIT_READERS,
        summary: "the last N audit records (NDJSON), filtered by type, host, date",
        handler: audit::tail,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/audit/follow",
        roles: AUDIT_READERS,
        summary: "new audit records as they are written (NDJSON stream)",
        handler: audit::follow,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/audit/export",
        roles: AUDIT_READERS,
        summary: "export the audit log (format=jsonl), byte for byte",
        handler: audit::export,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/audit/checkpoint",
        roles: AUDIT_READERS,
        summary: "a signed head checkpoint for off-box storage",
        handler: audit::checkpoint,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/policy",
        roles: ANY,
        summary: "the policy in force: mode, rule count, rules",
        handler: policy::show,
    },
    RouteInfo {
        method: Method::POST,
        path: "/v1/policy/check",
        roles: ANY,
        summary: "explain the verdict for one request, rule by rule (as another user: admin only)",
        handler: policy::check,
    },
    RouteInfo {
        method: Method::POST,
        path: "/v1/policy/reload",
        roles: ADMIN,
        summary: "re-read the config and swap the policy atomically; an invalid one keeps the old",
        handler: policy::reload,
    },
    RouteInfo {
        method: Method::POST,
        path: "/v1/vpn/invite",
        roles: ADMIN,
        summary: "issue a single-use invite token for a new target (shown once)",
        handler: vpn::invite,
    },
    RouteInfo {
        method: Method::POST,
        path: "/v1/vpn/reinvite",
        roles: ADMIN,
        summary: "a fresh token for a lost machine: its old identity is revoked, its address kept",
        handler: vpn::reinvite,
    },
    RouteInfo {
        method: Method::POST,
        path: "/v1/vpn/revoke",
        roles: ADMIN,
        summary: "throw a host (or all hosts) out: tunnel peer removed at once, invites revoked",
        handler: vpn::revoke,
    },
    RouteInfo {
        method: Method::POST,
        path: "/v1/vpn/rotate-keys",
        roles: ADMIN,
        summary: "rotate WireGuard keys now over the tunnel (hub: one or all hosts; target: itself)",
        handler: vpn::rotate_keys,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/vpn/status",
        roles: ANY,
        summary: "this node's tunnel and every peer: endpoint, handshake, traffic, health",
        handler: vpn::status,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/hosts",
        roles: ANY,
        summary: "the inventory (optionally ?selector=SEL) with online state",
        handler: hosts::list,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/hosts/{name}",
        roles: ANY,
        summary: "one host's record and live tunnel state",
        handler: hosts::show,
    },
    RouteInfo {
        method: Method::DELETE,
        path: "/v1/hosts/{name}",
        roles: ADMIN,
        summary: "forget a host; its tunnel peer goes away at once",
        handler: hosts::remove,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/plugins",
        roles: ANY,
        summary: "loaded WASM plugins: kind, hash, signer, calls, errors, latency, quarantine",
        handler: policy::plugins,
    },
    RouteInfo {
        method: Method::POST,
        path: "/v1/plugins/reload",
        roles: ADMIN,
        summary: "re-read the plugin manifest atomically (a bad plugin keeps the old set)",
        handler: policy::plugins_reload,
    },
    RouteInfo {
        method: Method::GET,
        path: "/v1/secrets",
        roles: ADMIN,
        summary: "list secret names, backends and times (never values)",
        handler: secrets::list,
    },
    RouteInfo {
        method: Method::PUT,
        path: "/v1/secrets/{name}",
        roles: ADMIN,
        summary: "store a secret; the body is the raw value (application/octet-stream)",
        handler: secrets::set,
    },
    RouteInfo {
        method: Method::DELETE,
        path: "/v1/secrets/{name}",
        roles: ADMIN,
        summary: "remove a secret",
        handler: secrets::remove,
    },
    RouteInfo {
        method: Method::POST,
        path: "/v1/secrets/{name}/rotate",
        roles: ADMIN,
        summary: "replace a generated key with a fresh random one",
        handler: secrets::rotate,
    },
];

/// The result of looking a request up in [`ROUTES`].
pub(crate) enum Lookup {
    Found(&'static RouteInfo, Vec<String>),
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

pub(crate) fn lookup(method: &Method, path: &str) -> Lookup {
    let same_path: Vec<(&'static RouteInfo, Vec<String>)> = ROUTES
        .iter()
        .filter_map(|r| match_path(r.path, path).map(|p| (r, p)))
        .collect();
    if same_path.is_empty() {
        return Lookup::NotFound;
    }
    let allowed = same_path.iter().map(|(r, _)| r.method.clone()).collect();
    match same_path.into_iter().find(|(r, _)| r.method == method) {
        Some((r, params)) => Lookup::Found(r, params),
        None => Lookup::MethodNotAllowed(allowed),
    }
}

/// The query string's `key=value` pairs, percent-decoded (`+` is not a space here).
pub(crate) fn query_pairs<B>(req: &Request<B>) -> Vec<(String, String)> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// Decodes `%XX` escapes; invalid escapes and non-UTF-8 results are kept as written (the
/// handler's own validation then rejects them with a precise message).
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

/// Matches `/v1/secrets/{name}` against `/v1/secrets/db`, returning `["db"]`. A parameter is one
/// non-empty path segment; percent-escapes are not decoded (names never need them).
fn match_path(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {
                params.push(percent_decode(g));
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route is documented in openapi.yaml with its method, and the file documents no
    /// route we don't serve.
    #[test]
    fn openapi_lists_exactly_the_served_routes() {
        let spec = include_str!("../../openapi.yaml");
        let mut documented = Vec::new();
        let mut current: Option<String> = None;
        for line in spec.lines() {
            if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
                current = Some(format!("/{p}"));
            } else if let (Some(path), Some(m)) = (&current, line.strip_prefix("    ")) {
                if let Some(method) = m.strip_suffix(':').filter(|m| !m.starts_with(' ')) {
                    documented.push((method.to_ascii_uppercase(), path.clone()));
                }
            } else if !line.starts_with("  ") && !line.trim().is_empty() {
                current = None;
            }
        }
        let mut served: Vec<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_string(), r.path.to_owned()))
            .collect();
        served.sort();
        documented.sort();
        assert_eq!(served, documented, "openapi.yaml and ROUTES differ");
    }

    #[test]
    fn lookup_distinguishes_404_and_405() {
        assert!(matches!(
            lookup(&Method::GET, "/v1/status"),
            Lookup::Found(_, _)
        ));
        match lookup(&Method::DELETE, "/v1/secrets/db-password") {
            Lookup::Found(r, params) => {
                assert_eq!(r.path, "/v1/secrets/{name}");
                assert_eq!(params, vec!["db-password".to_owned()]);
            }
            _ => panic!("param route not found"),
        }
        assert!(matches!(
            lookup(&Method::GET, "/v1/secrets/"),
            Lookup::NotFound
        ));
        match lookup(&Method::PUT, "/v1/secrets/bad%20name%21") {
            Lookup::Found(_, params) => assert_eq!(params, vec!["bad name!".to_owned()]),
            _ => panic!("encoded param not matched"),
        }
        assert!(matches!(
            lookup(&Method::GET, "/v1/secrets/a/b"),
            Lookup::NotFound
        ));
        assert!(matches!(
            lookup(&Method::POST, "/v1/status"),
            Lookup::MethodNotAllowed(_)
        ));
        assert!(matches!(lookup(&Method::GET, "/v1/nope"), Lookup::NotFound));
    }
}
