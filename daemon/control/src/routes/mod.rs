//! One file per route. [`ROUTES`] is the table the server dispatches on, the OpenAPI test checks
//! against, and `tether` documents.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use tether_model::Role;

use crate::http::Body;
use crate::{AppState, Caller};

mod config;
mod health;
mod metrics;
mod reload;
mod status;

/// What a handler gets besides the request.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub state: Arc<AppState>,
    /// The caller, for auditing in later routes.
    #[allow(dead_code)]
    pub caller: Arc<Caller>,
    pub role: Role,
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
];

/// The result of looking a request up in [`ROUTES`].
pub(crate) enum Lookup {
    Found(&'static RouteInfo),
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

pub(crate) fn lookup(method: &Method, path: &str) -> Lookup {
    let same_path: Vec<&'static RouteInfo> = ROUTES.iter().filter(|r| r.path == path).collect();
    match same_path.iter().find(|r| r.method == method) {
        Some(r) => Lookup::Found(r),
        None if same_path.is_empty() => Lookup::NotFound,
        None => Lookup::MethodNotAllowed(same_path.iter().map(|r| r.method.clone()).collect()),
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
            Lookup::Found(_)
        ));
        assert!(matches!(
            lookup(&Method::POST, "/v1/status"),
            Lookup::MethodNotAllowed(_)
        ));
        assert!(matches!(lookup(&Method::GET, "/v1/nope"), Lookup::NotFound));
    }
}
