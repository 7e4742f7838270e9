//! Guest SDK for Tether WASM plugins (ABI `tether:plugin@0.2.0`, see `plugin-sdk/wit/`; the
//! host still loads components built against 0.1.0).
//!
//! New in 0.2.0: policy hooks get the host's parse of the command, [`policy::Request::commands`]
//! (each simple command as argv after quote removal, its redirections and paths, and what runs
//! it), and sinks may open TCP connections through the host ([`host::tcp`]).
//!
//! A plugin is a `cdylib` built with `cargo build --release --target wasm32-wasip2`. It implements
//! one trait and invokes the matching export macro:
//!
//! | world             | trait                     | macro                      |
//! |-------------------|---------------------------|----------------------------|
//! | `policy-hook`     | [`policy::PolicyHook`]    | [`export_policy!`]         |
//! | `alert-sink`      | [`alerts::AlertSink`]     | [`export_alert_sink!`]     |
//! | `audit-sink`      | [`audit::AuditSink`]      | [`export_audit_sink!`]     |
//! | `enrollment-hook` | [`enroll::EnrollmentHook`]| [`export_enrollment_hook!`]|
//!
//! ```ignore
//! use tether_plugin_sdk::policy::{export_policy, PolicyHook, Request, Verdict};
//! use tether_plugin_sdk::time::Weekday;
//!
//! struct NoFridayDeploys;
//!
//! impl PolicyHook for NoFridayDeploys {
//!     fn evaluate(req: Request) -> Verdict {
//!         if req.command().contains("deploy") && req.now().weekday() == Weekday::Fri {
//!             return Verdict::require_approval("deploys on Friday need a second pair of eyes");
//!         }
//!         Verdict::Abstain
//!     }
//! }
//!
//! export_policy!(NoFridayDeploys);
//! ```
//!
//! Sink plugins share the delivery contract's helpers in [`sink`] (failure texts, HTTP status
//! mapping, batching, signatures) and the SIEM renderers in [`siem`].
//!
//! What the host lets a plugin do is in [`host`]: log, read the clock, read its own config, read
//! granted secrets, and send HTTP requests or open TCP connections (sinks) through the host
//! (which checks the destination).
//! There is no filesystem, socket, environment or other clock.
//!
//! On targets other than `wasm32` the crate compiles (so pure helpers can be unit-tested with
//! `cargo test`), but calling a [`host`] function there panics: there is no host.
#![deny(unsafe_code)]
#![warn(missing_docs)]

use __private::bindings;

pub mod alerts;
pub mod audit;
pub mod enroll;
pub mod host;
pub mod policy;
pub mod sink;
pub mod time;

/// The SIEM renderers (OCSF, ECS, CEF, RFC 5424, Splunk HEC) the daemon's `audit export` uses,
/// so a sink plugin sends exactly what an export would contain. See [`audit::AuditEvent::record`].
pub use tether_siem as siem;

/// Glue used by the export macros. Not part of the public API; may change in any release.
#[doc(hidden)]
pub mod __private {
    pub mod bindings;
    pub use crate::alerts::__adapt as alert_adapt;
    pub use crate::audit::__adapt as audit_adapt;
    pub use crate::enroll::__adapt as enroll_adapt;
    pub use crate::policy::__adapt as policy_adapt;
}
