//! One file per route. [`routes`] is the table the server dispatches on and `openapi.yaml` is
//! generated from: each entry ties an [`Endpoint`] of `tether-api` (method, path, request and
//! response types) to the roles allowed to call it, the error statuses its handler may answer
//! with, and a handler `async fn(Ctx, Request) -> Result<Response, Fail>`. One adapter per
//! answer encoding does the decoding, JSON, errors and content types.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use tether_api::{Encoding, Endpoint};
use tether_audit::{Actor, Via};
use tether_model::Role;

use crate::http::{self, Body, Fail};
use crate::{AppState, Caller};

mod access;
mod alerts;
mod approvals;
mod audit;
mod audit_keys;
mod config;
mod exec;
mod fs;
mod health;
mod hosts;
mod interactive;
mod invite_key;
mod metrics;
mod plugins;
mod policy;
mod proxy;
mod reload;
mod secrets;
mod session;
mod sessions;
mod ssh_config;
mod status;
mod vpn;

pub use interactive::{ProxySession, REFUSED_STATUS, Refusal, SftpRelay, UNREACHABLE_STATUS};

/// What a handler gets besides its typed request.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub state: Arc<AppState>,
    /// Who called.
    pub caller: Arc<Caller>,
    /// The role the caller was granted.
    pub role: Role,
    /// How the request arrived.
    pub via: Via,
}

impl Ctx {
    /// The audit actor for this request.
    pub fn actor(&self) -> Actor {
        crate::audit::actor(&self.caller, Some(self.role), self.via)
    }
}

pub(crate) type HandlerFuture = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
type Handler = Box<dyn Fn(Request<Incoming>, Ctx, Vec<String>) -> HandlerFuture + Send + Sync>;

/// One route of the control API.
pub struct RouteInfo {
    /// HTTP method.
    pub method: Method,
    /// Path template (`{param}` segments).
    pub path: &'static str,
    /// Roles allowed to call it.
    pub roles: &'static [Role],
    /// One line for docs and `tether` help.
    pub summary: &'static str,
    /// Every status the route can answer with: `200`, the adapter's own (`400` bad input, `403`
    /// role, `408`/`413` for routes with a body) and those its handler returns.
    pub statuses: Vec<u16>,
    /// How a successful answer is encoded.
    pub encoding: Encoding,
    /// The body is raw bytes rather than JSON.
    pub raw_body: bool,
    /// The raw body is streamed to the handler, exempt from the 1 MiB limit (the handler
    /// bounds it).
    pub streamed_body: bool,
    /// The request and response schemas (for the OpenAPI document).
    pub(crate) schemas: fn() -> crate::openapi::RouteSchemas,
    pub(crate) handler: Handler,
}

const ANY: &[Role] = &Role::ALL;
const ADMIN: &[Role] = &[Role::Admin];
const OPERATORS: &[Role] = &[Role::Admin, Role::Operator];
pub(crate) const AUDIT_READERS: &[Role] = &[Role::Admin, Role::Auditor];

/// `409` a hub-only route on a target.
const HUB: u16 = 409;
/// `503` the audit record could not be written (or a subsystem is missing).
const AUDITED: u16 = 503;

/// Every route the daemon serves.
pub fn routes() -> &'static [RouteInfo] {
    &ROUTES
}

static ROUTES: LazyLock<Vec<RouteInfo>> = LazyLock::new(|| {
    use tether_api as a;
    vec![
        json::<a::Healthz, _, _>(ANY, &[], health::healthz),
        json::<a::Readyz, _, _>(ANY, &[503], health::readyz),
        json::<a::Metrics, _, _>(ANY, &[500], metrics::handle),
        json::<a::Status, _, _>(ANY, &[], status::handle),
        json::<a::ConfigShow, _, _>(ANY, &[], config::handle),
        json::<a::Reload, _, _>(ADMIN, &[422, AUDITED], reload::handle),
        json::<a::AuditVerify, _, _>(AUDIT_READERS, &[500, AUDITED], audit::verify),
        stream::<a::AuditRecords, _, _>(AUDIT_READERS, &[500, AUDITED], audit::tail),
        stream::<a::AuditFollow, _, _>(AUDIT_READERS, &[500, AUDITED], audit::follow),
        stream::<a::AuditExport, _, _>(AUDIT_READERS, &[500, AUDITED], audit::export),
        json::<a::AuditCheckpoint, _, _>(AUDIT_READERS, &[500, AUDITED], audit::checkpoint),
        json::<a::SessionsList, _, _>(AUDIT_READERS, &[404, 500], sessions::list),
        json::<a::SessionsShow, _, _>(AUDIT_READERS, &[404, 500, AUDITED], sessions::show),
        stream::<a::SessionsRecording, _, _>(AUDIT_READERS, &[404, AUDITED], sessions::recording),
        json::<a::AuditRotateKey, _, _>(ADMIN, &[409, 500, AUDITED], audit_keys::rotate),
        json::<a::PolicyGet, _, _>(ANY, &[503], policy::show),
        json::<a::PolicyCheck, _, _>(ANY, &[500, 503], policy::check),
        json::<a::PolicyTest, _, _>(ANY, &[500, 503], policy::test),
        json::<a::PolicyReload, _, _>(ADMIN, &[422, AUDITED], policy::reload),
        json::<a::VpnInvite, _, _>(ADMIN, &[HUB, 500, AUDITED], vpn::invite),
        json::<a::VpnReinvite, _, _>(ADMIN, &[404, HUB, 500, AUDITED], vpn::reinvite),
        json::<a::VpnRevoke, _, _>(ADMIN, &[404, HUB, 500, AUDITED], vpn::revoke),
        json::<a::VpnRotateKeys, _, _>(ADMIN, &[404, HUB, AUDITED], vpn::rotate_keys),
        json::<a::VpnRotateInviteKey, _, _>(ADMIN, &[HUB, 500, AUDITED], invite_key::rotate),
        json::<a::VpnStatusGet, _, _>(ANY, &[], vpn::status),
        stream::<a::Exec, _, _>(OPERATORS, &[404, HUB, 409, 429, 500, AUDITED], exec::exec),
        upgrade::<a::Proxy, _, _>(OPERATORS, &[404, HUB, AUDITED], proxy::handle),
        upgrade::<a::Session, _, _>(OPERATORS, &[404, HUB, AUDITED], session::handle),
        json::<a::SshConfig, _, _>(ANY, &[HUB, AUDITED], ssh_config::handle),
        json::<a::ApprovalsList, _, _>(ANY, &[503], approvals::list),
        json::<a::ApprovalsShow, _, _>(ANY, &[404, 503], approvals::show),
        json::<a::ApprovalsApprove, _, _>(ANY, &[404, HUB, 500, AUDITED], approvals::approve),
        json::<a::ApprovalsDeny, _, _>(ANY, &[404, 409, 500, AUDITED], approvals::deny),
        json::<a::AccessRequest, _, _>(ANY, &[409, 429, 500, AUDITED], access::request),
        json::<a::AccessList, _, _>(ANY, &[503], access::list),
        json::<a::AccessRevoke, _, _>(ANY, &[404, 409, 500, AUDITED], access::revoke),
        stream::<a::FsGet, _, _>(OPERATORS, &[404, HUB, 502, AUDITED], fs::get),
        streamed::<a::FsPut, _, _>(OPERATORS, &[404, HUB, AUDITED], fs::put),
        json::<a::FsListDir, _, _>(OPERATORS, &[404, HUB, 502, AUDITED], fs::list),
        json::<a::FsStatPath, _, _>(OPERATORS, &[404, HUB, 502, AUDITED], fs::stat),
        json::<a::HostsList, _, _>(ANY, &[HUB], hosts::list),
        json::<a::HostsShow, _, _>(ANY, &[404, HUB], hosts::show),
        json::<a::HostsRemove, _, _>(ADMIN, &[404, HUB, 500, AUDITED], hosts::remove),
        json::<a::PluginsList, _, _>(ANY, &[], plugins::list),
        json::<a::AlertsList, _, _>(ANY, &[503], alerts::list),
        json::<a::AlertsTest, _, _>(ADMIN, &[404, AUDITED], alerts::test),
        json::<a::PluginsReload, _, _>(ADMIN, &[409, 422, AUDITED], plugins::reload),
        json::<a::SecretsList, _, _>(ADMIN, &[500, 503], secrets::list),
        raw::<a::SecretsSet, _, _>(ADMIN, &[409, 500, AUDITED], secrets::set),
        json::<a::SecretsRemove, _, _>(ADMIN, &[404, 409, 500, AUDITED], secrets::remove),
        json::<a::SecretsRotate, _, _>(ADMIN, &[404, 409, 500, AUDITED], secrets::rotate),
    ]
});

/// The statuses every route of endpoint `E` can answer with, before its handler's own: `200`
/// (`101` and `426` for an upgrade), `400`, `403`, and for a body `408`/`413`.
fn statuses<E: Endpoint>(handler: &[u16]) -> Vec<u16> {
    let mut s = match E::RESPONSE {
        Encoding::Upgrade(_) => vec![101, 400, 403, 426],
        _ => vec![200, 400, 403],
    };
    if !E::METHOD.uses_query() {
        s.extend([408, 413]);
    }
    s.extend_from_slice(handler);
    s.sort_unstable();
    s.dedup();
    s
}

fn method<E: Endpoint>() -> Method {
    match E::METHOD {
        tether_api::Method::Get => Method::GET,
        tether_api::Method::Post => Method::POST,
        tether_api::Method::Put => Method::PUT,
        tether_api::Method::Delete => Method::DELETE,
    }
}

fn info<E: Endpoint + 'static>(
    roles: &'static [Role],
    errors: &[u16],
    handler: Handler,
) -> RouteInfo {
    RouteInfo {
        method: method::<E>(),
        path: E::PATH,
        roles,
        summary: E::SUMMARY,
        statuses: statuses::<E>(errors),
        encoding: E::RESPONSE,
        raw_body: E::RAW_BODY,
        streamed_body: E::STREAMED_BODY,
        schemas: crate::openapi::route_schemas::<E>,
        handler,
    }
}

/// Reads and decodes the request of endpoint `E` (query or JSON body), or the `400`/`408`/`413`.
async fn decode<E: Endpoint>(
    req: Request<Incoming>,
    ctx: &Ctx,
    params: &[String],
) -> Result<E::Request, Fail> {
    let query = req.uri().query().map(str::to_owned);
    let body = if E::METHOD.uses_query() {
        Bytes::new()
    } else {
        http::read_body(req, ctx.state.idle_timeout()).await?
    };
    tether_api::decode::<E>(params, query.as_deref(), &body).map_err(|e| {
        Fail::bad_request(
            e.code(),
            e.to_string(),
            "see daemon/control/openapi.yaml for the expected shape",
        )
    })
}

/// The answer for a handler's result: JSON (or text) with `200`, or the refusal.
fn answer<E: Endpoint>(result: Result<E::Response, Fail>) -> Response<Body> {
    let value = match result {
        Ok(v) => v,
        Err(fail) => return fail.into_response(),
    };
    let encoded = match E::RESPONSE {
        Encoding::Text => match serde_json::to_value(&value) {
            Ok(serde_json::Value::String(s)) => Ok(s.into_bytes()),
            Ok(_) => Err("a text answer is not a string".to_owned()),
            Err(e) => Err(e.to_string()),
        },
        Encoding::Json | Encoding::NdJson | Encoding::Upgrade(_) => serde_json::to_vec(&value)
            .map(|mut b| {
                b.push(b'\n');
                b
            })
            .map_err(|e| e.to_string()),
    };
    match encoded {
        Ok(bytes) => http::with_type(
            StatusCode::OK,
            http::full(bytes),
            E::RESPONSE.content_type(),
        ),
        Err(e) => Fail::internal(format!("could not encode the answer: {e}")).into_response(),
    }
}

/// A route answering with one JSON document (or one text for [`Encoding::Text`] endpoints).
fn json<E, F, Fut>(roles: &'static [Role], errors: &[u16], f: F) -> RouteInfo
where
    E: Endpoint + 'static,
    F: Fn(Ctx, E::Request) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<E::Response, Fail>> + Send + 'static,
{
    let handler: Handler = Box::new(move |req, ctx, params| {
        Box::pin(async move {
            match decode::<E>(req, &ctx, &params).await {
                Ok(r) => answer::<E>(f(ctx, r).await),
                Err(fail) => fail.into_response(),
            }
        })
    });
    info::<E>(roles, errors, handler)
}

/// A route answering with a stream of NDJSON lines, each an `E::Response`; the handler returns
/// the body (fed from a channel, see [`crate::stream`]).
fn stream<E, F, Fut>(roles: &'static [Role], errors: &[u16], f: F) -> RouteInfo
where
    E: Endpoint + 'static,
    F: Fn(Ctx, E::Request) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<Body, Fail>> + Send + 'static,
{
    let handler: Handler = Box::new(move |req, ctx, params| {
        Box::pin(async move {
            let result = match decode::<E>(req, &ctx, &params).await {
                Ok(r) => f(ctx, r).await,
                Err(fail) => Err(fail),
            };
            match result {
                Ok(body) => http::with_type(StatusCode::OK, body, E::RESPONSE.content_type()),
                Err(fail) => fail.into_response(),
            }
        })
    });
    info::<E>(roles, errors, handler)
}

/// A route whose body is raw bytes (`application/octet-stream`); the request type carries the
/// path and query fields.
fn raw<E, F, Fut>(roles: &'static [Role], errors: &[u16], f: F) -> RouteInfo
where
    E: Endpoint + 'static,
    F: Fn(Ctx, E::Request, Bytes) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<E::Response, Fail>> + Send + 'static,
{
    let handler: Handler = Box::new(move |req, ctx, params| {
        Box::pin(async move {
            let query = req.uri().query().map(str::to_owned);
            let request = tether_api::decode::<E>(&params, query.as_deref(), b"").map_err(|e| {
                Fail::bad_request(e.code(), e.to_string(), "see daemon/control/openapi.yaml")
            });
            let request = match request {
                Ok(r) => r,
                Err(fail) => return fail.into_response(),
            };
            match http::read_body(req, ctx.state.idle_timeout()).await {
                Ok(body) => answer::<E>(f(ctx, request, body).await),
                Err(fail) => fail.into_response(),
            }
        })
    });
    info::<E>(roles, errors, handler)
}

/// What an upgrade route does with the connection once the `101` has gone out.
pub(crate) type Takeover = Box<
    dyn FnOnce(Box<dyn crate::state::UpgradedIo>) -> crate::state::BoxFuture<'static, ()> + Send,
>;

/// A route that switches the connection to another protocol ([`Encoding::Upgrade`]): the
/// request must say `Connection: upgrade` and `Upgrade: <protocol>` (else `426`); its JSON body
/// (or path) is decoded as usual and the handler decides; on success the answer is `101` and
/// the handler's [`Takeover`] gets the connection.
fn upgrade<E, F, Fut>(roles: &'static [Role], errors: &[u16], f: F) -> RouteInfo
where
    E: Endpoint + 'static,
    F: Fn(Ctx, E::Request) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<Takeover, Fail>> + Send + 'static,
{
    let handler: Handler = Box::new(move |mut req, ctx, params| {
        Box::pin(async move {
            let Encoding::Upgrade(protocol) = E::RESPONSE else {
                return Fail::internal(format!("{} is not an upgrade endpoint", E::PATH))
                    .into_response();
            };
            let asked = req
                .headers()
                .get(hyper::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.eq_ignore_ascii_case(protocol));
            if !asked {
                // Read (a bounded part of) the body first, as for the router's refusals
                // ([`crate::http::discard_body`]), so the answer is not lost.
                let (_, body) = req.into_parts();
                crate::http::discard_body(
                    body,
                    ctx.state
                        .idle_timeout()
                        .min(std::time::Duration::from_secs(1)),
                )
                .await;
                return Fail::new(
                    StatusCode::UPGRADE_REQUIRED,
                    "upgrade_required",
                    format!(
                        "this route switches the connection to {protocol}; send `Connection: upgrade` and `Upgrade: {protocol}`"
                    ),
                    "use `tether proxy HOST` (for ssh's ProxyCommand) or `tether ssh HOST`",
                )
                .into_response();
            }
            let on = hyper::upgrade::on(&mut req);
            // The connection's place under the caps, held for as long as the session runs.
            let slot = req
                .extensions()
                .get::<Arc<crate::connlimit::Slot>>()
                .cloned();
            let request = match decode::<E>(req, &ctx, &params).await {
                Ok(r) => r,
                Err(fail) => return fail.into_response(),
            };
            match f(ctx, request).await {
                Ok(takeover) => {
                    tokio::spawn(async move {
                        match on.await {
                            Ok(up) => takeover(Box::new(hyper_util::rt::TokioIo::new(up))).await,
                            Err(e) => tracing::debug!("a control connection upgrade failed: {e}"),
                        }
                        drop(slot);
                    });
                    let mut resp = Response::new(http::full(Bytes::new()));
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    resp.headers_mut().insert(
                        hyper::header::CONNECTION,
                        hyper::header::HeaderValue::from_static("upgrade"),
                    );
                    resp.headers_mut().insert(
                        hyper::header::UPGRADE,
                        hyper::header::HeaderValue::from_static(protocol),
                    );
                    resp
                }
                Err(fail) => fail.into_response(),
            }
        })
    });
    info::<E>(roles, errors, handler)
}

/// A route whose raw body is streamed to the handler as it arrives (not read whole, not bound
/// by the 1 MiB limit: the handler bounds it); the request type carries the path and query
/// fields.
fn streamed<E, F, Fut>(roles: &'static [Role], errors: &[u16], f: F) -> RouteInfo
where
    E: Endpoint + 'static,
    F: Fn(Ctx, E::Request, Incoming) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<E::Response, Fail>> + Send + 'static,
{
    let handler: Handler = Box::new(move |req, ctx, params| {
        Box::pin(async move {
            let query = req.uri().query().map(str::to_owned);
            let request = tether_api::decode::<E>(&params, query.as_deref(), b"").map_err(|e| {
                Fail::bad_request(e.code(), e.to_string(), "see daemon/control/openapi.yaml")
            });
            match request {
                Ok(r) => answer::<E>(f(ctx, r, req.into_body()).await),
                Err(fail) => fail.into_response(),
            }
        })
    });
    info::<E>(roles, errors, handler)
}

/// Runs a blocking call off the async workers; a panic becomes a `500`.
pub(crate) async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Fail> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Fail::internal(format!("{what} panicked")))
}

/// The result of looking a request up in the route table.
pub(crate) enum Lookup {
    Found(&'static RouteInfo, Vec<String>),
    MethodNotAllowed(Vec<Method>),
    NotFound,
}

pub(crate) fn lookup(method: &Method, path: &str) -> Lookup {
    let same_path: Vec<(&'static RouteInfo, Vec<String>)> = routes()
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

/// Matches `/v1/secrets/{name}` against `/v1/secrets/db`, returning `["db"]` (percent-decoded).
/// A parameter is one non-empty path segment.
fn match_path(pattern: &str, path: &str) -> Option<Vec<String>> {
    let mut params = Vec::new();
    let mut want = pattern.split('/');
    let mut got = path.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return Some(params),
            (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {
                params.push(tether_api::percent_decode(g));
            }
            (Some(w), Some(g)) if w == g => {}
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn every_route_is_unique_and_documents_its_base_statuses() {
        let mut seen = std::collections::BTreeSet::new();
        for r in routes() {
            assert!(
                seen.insert((r.method.to_string(), r.path)),
                "{} twice",
                r.path
            );
            let ok = if matches!(r.encoding, Encoding::Upgrade(_)) {
                101
            } else {
                200
            };
            for s in [ok, 400, 403] {
                assert!(r.statuses.contains(&s), "{} {} lacks {s}", r.method, r.path);
            }
        }
    }
}
