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

impl AuditEvent {
    /// The record's `data` parsed (`Null` if the host sent invalid JSON, which it does not).
    pub fn data(&self) -> serde_json::Value {
        serde_json::from_str(&self.data_json).unwrap_or(serde_json::Value::Null)
    }

    /// This event as the SIEM renderers take it, borrowing `data` (from [`AuditEvent::data`]).
    /// The event carries no chain hash of its own: the batch's is in [`batch_proof`].
    pub fn record<'a>(&'a self, data: &'a serde_json::Value) -> crate::siem::Record<'a> {
        crate::siem::Record {
            seq: self.seq,
            ts: &self.ts,
            kind: &self.kind,
            actor: crate::siem::Actor {
                uid: self.actor_uid,
                user: &self.actor_user,
                role: self.actor_role.as_deref(),
                via: &self.via,
            },
            host: self.host.as_deref(),
            data,
            hash: None,
        }
    }
}

/// What proves a batch complete, as the host hands it over during `deliver_batch`: the seq
/// range and the chain hash of the batch's last record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchProof {
    /// Seq of the first record.
    pub first_seq: u64,
    /// Seq of the last record.
    pub last_seq: u64,
    /// Chain hash (hex) of the last record.
    pub last_hash: String,
}

impl BatchProof {
    /// The renderers' borrowed form.
    pub fn as_siem(&self) -> crate::siem::syslog::BatchProof<'_> {
        crate::siem::syslog::BatchProof {
            first_seq: self.first_seq,
            last_seq: self.last_seq,
            last_hash: &self.last_hash,
        }
    }
}

/// The current batch's proof (host-provided `tether.batch.*` values), or one computed from
/// `events` with an empty hash when the host did not provide it (older daemons).
pub fn batch_proof(events: &[AuditEvent]) -> BatchProof {
    let get = |k: &str| crate::host::config::get(k);
    let num = |k: &str| get(k).and_then(|v| v.parse::<u64>().ok());
    BatchProof {
        first_seq: num("tether.batch.first_seq")
            .unwrap_or_else(|| events.first().map_or(0, |e| e.seq)),
        last_seq: num("tether.batch.last_seq")
            .unwrap_or_else(|| events.last().map_or(0, |e| e.seq)),
        last_hash: get("tether.batch.last_hash").unwrap_or_default(),
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
