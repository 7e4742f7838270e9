//! `/v1/secrets`: the vault's secrets, admin only. Values go in and never come out.

use serde::{Deserialize, Serialize};

use super::Empty;

/// A secret's name (path parameter).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// The secret's name.
    pub name: String,
}

/// What the vault knows about one secret (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretInfo {
    /// The secret's name.
    pub name: String,
    /// Where it is stored: `keyring`, `credentials` or `file`.
    pub backend: String,
    /// Write counter, starting at 1; bumped by every set and rotate.
    pub version: u64,
    /// True for keys tetherd generated; only those can be rotated.
    pub generated: bool,
    /// When it was first stored (RFC 3339).
    pub created: String,
    /// When it was last replaced (RFC 3339).
    #[serde(default)]
    pub rotated: Option<String>,
}

/// Answer of `GET /v1/secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretList {
    /// The backend new secrets go to.
    pub backend: String,
    /// Every secret, by name.
    pub secrets: Vec<SecretInfo>,
}

/// Answer of `DELETE /v1/secrets/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SecretRemoved {
    /// The secret removed.
    pub removed: String,
}

endpoint! {
    /// list secret names, backends and times (never values)
    SecretsList: Get "/v1/secrets", Empty => SecretList;
}
endpoint! {
    /// store a secret; the body is the raw value (application/octet-stream)
    SecretsSet: Put "/v1/secrets/{name}", SecretRef => SecretInfo, raw_body = true;
}
endpoint! {
    /// remove a secret
    SecretsRemove: Delete "/v1/secrets/{name}", SecretRef => SecretRemoved;
}
endpoint! {
    /// replace a generated key with a fresh random one
    SecretsRotate: Post "/v1/secrets/{name}/rotate", SecretRef => SecretInfo;
}
