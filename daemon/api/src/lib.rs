//! The control API's contract: every `/v1` request and response as a serde type, the
//! [`Endpoint`] table that ties each one to its method and path, and the typed Unix-socket
//! [`Client`] the `tether` CLI (and later MCP) uses.
//!
//! The server (`tether-control`) decodes requests and encodes responses with the same types and
//! generates `openapi.yaml` from them, so a field renamed on one side fails to compile on the
//! other instead of failing at run time. This crate depends on `tether-model` and the HTTP client
//! pieces only: the CLI links it without the tunnel, the vault or the audit chain.
#![forbid(unsafe_code)]

pub mod client;
pub mod de;
mod endpoint;
mod error;
pub mod frame;
pub mod types;

pub use client::{Client, ClientError};
pub use endpoint::{DecodeError, EncodeError, Encoded, Encoding, Endpoint, Method};
pub use endpoint::{decode, encode, path_params, percent_decode, segment};
pub use error::{ApiError, ErrorBody};
pub use types::*;

/// Largest request body the API accepts (1 MiB); larger bodies get `413`.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Header the CLI (`cli`) and the MCP server (`mcp`) send so records say how a caller came in.
pub const VIA_HEADER: &str = "x-tether-via";
