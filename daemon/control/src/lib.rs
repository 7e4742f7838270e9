//! The control API: HTTP/1.1 + JSON over a Unix socket.
//!
//! [`server`] binds the socket (0660, stale-socket replacement, "already running" detection), maps
//! each connection's SO_PEERCRED to a [`Role`](tether_model::Role) through `[control.roles]`,
//! enforces body limits and timeouts, and dispatches to one file per route under `routes/`.
//! [`client`] is the typed client the `tether` CLI uses.
#![forbid(unsafe_code)]

pub mod audit;
pub mod client;
mod error;
mod http;
mod metrics;
mod peer;
mod routes;
pub mod server;
pub mod state;
mod stream;

pub use error::ControlError;
pub use metrics::ControlMetrics;
pub use peer::{Caller, RoleMap};
pub use routes::{ROUTES, RouteInfo};
pub use state::AppState;

/// Largest request body the API accepts (1 MiB); larger bodies get `413`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
