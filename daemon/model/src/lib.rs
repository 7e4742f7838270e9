//! Plain data shared by every Tether crate. No IO lives here.
//!
//! The types in this crate are part of the control API's wire contract (`/v1/...` JSON) and of the
//! CLI's `--json` output, so renaming a field is a breaking change.
#![forbid(unsafe_code)]

mod alert;
pub mod audit;
pub mod policy;
pub mod relay;
mod role;
mod secret_name;
pub mod selector;
pub mod session;

pub use alert::{Alert, AlertSink, NoAlerts, Severity};
pub use role::{DaemonRole, ParseRoleError, Role};
pub use secret_name::{
    MAX_SECRET_NAME_LEN, RESERVED_SECRET_HINT, RESERVED_SECRET_PREFIX, check_secret_name,
    is_reserved_secret_name,
};

/// The version of this build, reported by `tether status` and `GET /v1/status`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
