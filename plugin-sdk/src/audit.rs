//! The `audit-sink` world: deliver batches of audit records (SIEMs).

use crate::bindings::types as wit;

pub use crate::export_audit_sink;

/// An audit sink plugin. Called with batches of records, in log order.
pub trait AuditSink {
    /// Delivers `events`. An `Err` is counted and handled per the manifest's `on_error`.
    fn deliver_batch(events: Vec<AuditEvent>) -> Result<(), String>;
}

/// One audit record, as written in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// The record's sequence number.
    pub seq: u64,
    /// RFC 3339 UTC timestamp.
    pub ts: String,
    /// The record type, e.g. `exec.result`.
    pub kind: String,
    /// The actor's Unix uid.
    pub actor_uid: u32,
    /// The actor's user name.
    pub actor_user: String,
    /// The actor's role, if any.
    pub actor_role: Option<String>,
    /// How the actor came in (e.g. `cli`, `ssh`, `mcp`).
    pub via: String,
    /// The target host, if any.
    pub host: Option<String>,
    /// The record's `data` as canonical JSON.
    pub data_json: String,
}

impl From<wit::AuditEvent> for AuditEvent {
    fn from(e: wit::AuditEvent) -> Self {
        AuditEvent {
            seq: e.seq,
            ts: e.ts,
            kind: e.kind,
            actor_uid: e.actor_uid,
            actor_user: e.actor_user,
            actor_role: e.actor_role,
            via: e.via,
            host: e.host,
            data_json: e.data_json,
        }
    }
}

#[doc(hidden)]
pub fn __adapt<T: AuditSink>(events: Vec<wit::AuditEvent>) -> Result<(), String> {
    T::deliver_batch(events.into_iter().map(AuditEvent::from).collect())
}

/// Exports an [`AuditSink`] implementation as the plugin's `deliver-batch` function.
#[macro_export]
macro_rules! export_audit_sink {
    ($ty:ty) => {
        const _: () = {
            struct __TetherAuditSink;
            impl $crate::__private::bindings::audit::Guest for __TetherAuditSink {
                fn deliver_batch(
                    events: ::std::vec::Vec<$crate::__private::bindings::types::AuditEvent>,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::audit_adapt::<$ty>(events)
                }
            }
            $crate::__private::bindings::audit::__tether_export_audit_sink!(
                __TetherAuditSink with_types_in $crate::__private::bindings::audit
            );
        };
    };
}
