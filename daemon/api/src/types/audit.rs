//! `/v1/audit/...`: verify, read, follow, export and checkpoint the audit chain.

use serde::{Deserialize, Serialize};
use tether_model::Role;
pub use tether_model::audit::{Break, BreakKind, VerifyReport, VerifyVerdict};

use super::Empty;

/// Body of `POST /v1/audit/verify`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyRequest {
    /// Only verify day files from this UTC date on (`YYYY-MM-DD`).
    #[serde(default)]
    pub from: Option<String>,
    /// The text of an exported checkpoint (`tether audit checkpoint --export`) the log must
    /// still contain.
    #[serde(default)]
    pub against: Option<String>,
}

/// Answer of `POST /v1/audit/verify`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyResponse {
    /// True when no break was found and the log reaches the head counter kept outside
    /// `state_dir` (`report.verdict` is `ok`); false when broken or unanchored.
    pub ok: bool,
    /// Read throughput in MB/s (10^6 bytes).
    pub mb_per_s: f64,
    /// The details.
    pub report: VerifyReport,
}

/// How the caller reached the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The `tether` CLI over the control socket.
    Cli,
    /// An AI agent through `tether mcp serve`.
    Mcp,
    /// A direct control API client (e.g. `curl --unix-socket`).
    Api,
    /// The daemon itself (timers, reloads, enrollment listener...).
    Daemon,
}

/// Who caused an audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditActor {
    /// Unix uid of the caller (from SO_PEERCRED); the daemon's own uid for `daemon`.
    pub uid: u32,
    /// User name of the caller, as resolved when the event was raised.
    pub user: String,
    /// The role the caller acted with; null for callers refused for having no role.
    pub role: Option<Role>,
    /// How the caller reached the daemon.
    pub via: Via,
}

/// One audit record, exactly as stored (one line of `audit/YYYY-MM-DD.jsonl`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Sequence number, 1 for the first record of the log, +1 per record across day files.
    pub seq: u64,
    /// RFC 3339 UTC timestamp with microseconds.
    pub ts: String,
    /// Event type, e.g. `exec.result`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Who caused it.
    pub actor: AuditActor,
    /// The host it concerns, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Event details (a JSON object).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
    /// The key epoch whose HMAC key made `hmac` (absent: 0); it changes only right after a
    /// `key.rotated` record.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub key_epoch: u32,
    /// Hex SHA-256 of the previous record.
    pub prev: String,
    /// Hex SHA-256 of `prev || canonical JSON without hash/hmac`.
    pub hash: String,
    /// Hex HMAC-SHA256 of the raw hash.
    pub hmac: String,
}

/// Query of `GET /v1/audit/records`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditRecordsQuery {
    /// Only these event types (repeatable; `enroll.*` matches a prefix).
    #[serde(
        rename = "type",
        default,
        deserialize_with = "crate::de::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub types: Vec<String>,
    /// Only records about this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Only day files from this UTC date on (`YYYY-MM-DD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// How many of the newest matching records (default 20, at most 100000).
    #[serde(
        default,
        deserialize_with = "crate::de::opt_number",
        skip_serializing_if = "Option::is_none"
    )]
    pub limit: Option<usize>,
}

/// Query of `GET /v1/audit/follow`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditFollowQuery {
    /// Only these event types (repeatable; `enroll.*` matches a prefix).
    #[serde(
        rename = "type",
        default,
        deserialize_with = "crate::de::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub types: Vec<String>,
    /// Only records about this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Query of `GET /v1/audit/export`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditExportQuery {
    /// `jsonl` (the default; the records byte for byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    /// Only these event types (repeatable; `enroll.*` matches a prefix).
    #[serde(
        rename = "type",
        default,
        deserialize_with = "crate::de::one_or_many",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub types: Vec<String>,
    /// Only records about this host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Only day files from this UTC date on (`YYYY-MM-DD`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Body of `POST /v1/audit/rotate-key`. With neither flag set, both keys rotate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    /// Rotate the HMAC key that MACs every record.
    #[serde(default)]
    pub hmac: bool,
    /// Rotate the Ed25519 key that signs the head.
    #[serde(default)]
    pub signing: bool,
}

/// Answer of `POST /v1/audit/rotate-key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RotateKeyResponse {
    /// The new key epoch.
    pub epoch: u32,
    /// Seq of the `key.rotated` record (MACed with the old key); later records use the new one.
    pub seq: u64,
    /// Hex id of the new HMAC key (SHA-256 over a domain tag and the key; never the key).
    pub hmac_key_id: String,
    /// Hex Ed25519 public key that verifies heads from now on.
    pub signing_key: String,
    /// Which keys are new: `hmac`, `signing`, or both.
    pub rotated: Vec<String>,
}

endpoint! {
    /// rotate the audit HMAC and/or signing key (a new key epoch; the chain stays verifiable)
    AuditRotateKey: Post "/v1/audit/rotate-key", RotateKeyRequest => RotateKeyResponse;
}
endpoint! {
    /// verify the audit chain (optionally against an exported checkpoint)
    AuditVerify: Post "/v1/audit/verify", VerifyRequest => VerifyResponse;
}
endpoint! {
    /// the last N audit records (NDJSON), filtered by type, host, date
    AuditRecords: Get "/v1/audit/records", AuditRecordsQuery => AuditRecord, response = NdJson;
}
endpoint! {
    /// new audit records as they are written (NDJSON stream; a read failure ends it with one error-body line)
    AuditFollow: Get "/v1/audit/follow", AuditFollowQuery => AuditRecord, response = NdJson;
}
endpoint! {
    /// export the audit log (format=jsonl), byte for byte
    AuditExport: Get "/v1/audit/export", AuditExportQuery => AuditRecord, response = NdJson;
}
endpoint! {
    /// a signed head checkpoint for off-box storage
    AuditCheckpoint: Get "/v1/audit/checkpoint", Empty => String, response = Text;
}
