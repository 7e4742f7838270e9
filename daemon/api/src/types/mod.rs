//! Request and response types, one file per area, each with its [`Endpoint`](crate::Endpoint)s.

/// Declares one endpoint: a unit struct implementing [`Endpoint`](crate::Endpoint).
macro_rules! endpoint {
    (
        #[doc = $summary:literal]
        $name:ident: $method:ident $path:literal, $req:ty => $resp:ty
        $(, response = $enc:ident $(($proto:literal))?)? $(, raw_body = $raw:literal)? $(, streamed_body = $streamed:literal)?;
    ) => {
        #[doc = $summary]
        #[derive(Debug, Clone, Copy)]
        pub struct $name;

        impl crate::Endpoint for $name {
            const METHOD: crate::Method = crate::Method::$method;
            const PATH: &'static str = $path;
            const SUMMARY: &'static str = $summary.trim_ascii();
            $(const RESPONSE: crate::Encoding = crate::Encoding::$enc $(($proto))?;)?
            $(const RAW_BODY: bool = $raw;)?
            $(const RAW_BODY: bool = $streamed;
            const STREAMED_BODY: bool = $streamed;)?
            type Request = $req;
            type Response = $resp;
        }
    };
}

mod alerts;
mod approvals;
mod audit;
mod exec;
mod fs;
mod hosts;
mod plugins;
mod policy;
mod secrets;
mod session;
mod sessions;
mod status;
mod vpn;

pub use alerts::*;
pub use approvals::*;
pub use audit::*;
pub use exec::*;
pub use fs::*;
pub use hosts::*;
pub use plugins::*;
pub use policy::*;
pub use secrets::*;
pub use session::*;
pub use sessions::*;
pub use status::*;
pub use vpn::*;

use serde::{Deserialize, Serialize};

/// A request with nothing to say: `{}` (a body with any field is refused).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}
