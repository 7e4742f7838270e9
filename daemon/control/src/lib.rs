//! The control API: HTTP/1.1 + JSON over a Unix socket.
//!
//! [`server`] binds the socket (0660, stale-socket replacement, "already running" detection), maps
//! each connection's SO_PEERCRED to a [`Role`](tether_model::Role) through `[control.roles]`,
//! enforces body limits and timeouts, and dispatches to one file per route under `routes/`.
//! The request and response types, and the typed client the `tether` CLI uses, live in
//! `tether-api`; `openapi.yaml` is generated from them and [`routes`] (see [`openapi`]).
#![forbid(unsafe_code)]

pub mod approvals;
pub mod audit;
pub mod connlimit;
mod convert;
pub mod denials;
mod error;
mod http;
mod metrics;
pub mod metrics_http;
pub mod openapi;
mod peer;
mod routes;
pub mod server;
pub mod state;
mod stream;

pub use error::ControlError;
pub use metrics::ControlMetrics;
pub use peer::{CALLER_CACHE_CAP, CALLER_TTL, Caller, CallerCache, RoleMap};
pub use routes::{
    ProxySession, REFUSED_STATUS, Refusal, RouteInfo, SftpRelay, UNREACHABLE_STATUS, routes,
};
pub use state::AppState;

pub use tether_api::MAX_BODY_BYTES;
