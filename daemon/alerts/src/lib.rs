//! Alerts and SIEM streaming: everything between "a subsystem raised an alert / the audit log
//! grew" and "a sink plugin delivered it", with nothing dropped silently.
//!
//! * Sans-IO cores, driven with an injected `now`:
//!   [`Router`] (which sinks get an alert, by category and minimum severity; cool-down per
//!   (category, host) that counts the suppressed repeats), [`SinkQueue`] (one bounded queue per
//!   sink; [`RetryPolicy`]: retries with exponential backoff and jitter, honouring a sink's
//!   `retry-after=SECS`; then a [`DropReason`]).
//!   [`Presence`] (`host_online` / `host_offline` from tunnel handshake ages, without doubling
//!   the tunnel's `vpn_peer_unhealthy`).
//! * Thin tokio drivers: [`AlertService`] (the daemon's [`tether_model::AlertSink`]: one task per
//!   sink, dead letters through [`DeadLetter`], `tether_alerts_*` metrics, recent alerts for
//!   `tether alerts list`) and [`AuditStreamer`] (one task per audit sink: reads the log from
//!   disk after the sink's durable acknowledged cursor, delivers batches carrying their seq range
//!   and the chain hash of their last record, and advances the cursor only on success).
//!
//! Sinks report failures as text ([`Failure::parse`]): `retry-after=SECS` anywhere asks for that
//! delay before the next attempt; a message starting with `permanent:` says retrying cannot help.
#![forbid(unsafe_code)]

mod backoff;
mod cursor;
mod error;
mod presence;
mod queue;
mod route;
mod service;
mod stream;

pub use backoff::{Failure, RetryPolicy};
pub use cursor::Cursor;
pub use error::{AlertsError, Result};
pub use presence::Presence;
pub use queue::{Completed, DropReason, Next, SinkQueue};
pub use route::{Admission, Route, Router};
pub use service::{
    AlertDeliver, AlertEntry, AlertService, AlertsSettings, DeadLetter, SinkProgress, SinkState,
    TEST_KIND,
};
pub use stream::{AuditStreamer, Batch, BatchDeliver, StreamSettings, StreamStatus};
