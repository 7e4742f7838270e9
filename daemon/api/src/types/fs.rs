//! `/v1/fs`: files on targets over SFTP, confined below each target's `[files] allowed_roots`.
//! The hub checks the policy (`file_read` / `file_write` requests against `deny_paths` and
//! `allowed_roots`) and audits `fs.get|put|ls|stat` before anything is sent.

use serde::{Deserialize, Serialize};

/// Query of `GET /v1/fs/list` and `GET /v1/fs/stat`, body of `POST /v1/fs/get`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FsPathRequest {
    /// The target's inventory name.
    pub host: String,
    /// Absolute path on the target.
    pub path: String,
}

/// One file's metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FsEntry {
    /// Its name (in a listing) or the path asked (stat).
    pub name: String,
    /// `file`, `dir`, `symlink` or `other`.
    pub kind: String,
    /// Size in bytes.
    pub size: u64,
    /// Permission bits, octal (`"644"`).
    pub mode: String,
    /// Owner uid.
    pub uid: u32,
    /// Owner gid.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime: u64,
}

/// Answer of `GET /v1/fs/list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FsList {
    /// The host.
    pub host: String,
    /// The directory.
    pub path: String,
    /// Its entries, by name (entries matching the target's deny_paths are left out).
    pub entries: Vec<FsEntry>,
}

/// Answer of `GET /v1/fs/stat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FsStat {
    /// The host.
    pub host: String,
    /// What is at the path (symlinks inside the root followed).
    pub entry: FsEntry,
}

/// One line of the `POST /v1/fs/get` stream: `started`, then `data` chunks in order, then
/// `done` (size and SHA-256 of all the data, verified against the target's digest) or `error`.
/// A stream that ends without `done` is a failed download.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum FsGetEvent {
    /// The target opened the file.
    Started {
        /// The host.
        host: String,
        /// The path.
        path: String,
        /// Its size when opened.
        size: u64,
    },
    /// The next bytes of the file.
    Data {
        /// Standard base64 (RFC 4648, with padding).
        data: String,
    },
    /// Every byte was sent, and the target's digest matched.
    Done {
        /// Bytes sent.
        size: u64,
        /// SHA-256 of the bytes, hex.
        sha256: String,
    },
    /// The download failed part-way; what was sent must be discarded.
    Error {
        /// `hash_mismatch`, `io`, `connect`, ...
        code: String,
        /// What happened.
        message: String,
    },
}

/// Query of `POST /v1/fs/put` (the body is the file's bytes, streamed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FsPutQuery {
    /// Which hosts (`web1`, `group:web`, `tag:env=prod`, `all`, ...), at most 100; the body
    /// is streamed to all of them at once.
    pub selector: String,
    /// Absolute destination path on each target.
    pub path: String,
    /// SHA-256 of the body, hex: the hub and every target check it before the file replaces
    /// the old one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Permission bits for the file, octal (`"755"`); default: the old file's, or 644.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// How an upload went on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FsPutHost {
    /// The host.
    pub host: String,
    /// Whether the file is in place.
    pub ok: bool,
    /// Bytes written (when ok).
    pub size: u64,
    /// SHA-256 of the bytes written, hex (when ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Why not (`too_large`, `escape`, `no_space`, `hash_mismatch`, `connect`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// Answer of `POST /v1/fs/put`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FsPutResponse {
    /// The destination path.
    pub path: String,
    /// Bytes received from the caller.
    pub size: u64,
    /// SHA-256 of the bytes received, hex.
    pub sha256: String,
    /// One result per host, in selector order.
    pub hosts: Vec<FsPutHost>,
}

endpoint! {
    /// download a file from a target (policy-checked and audited first); NDJSON: started, data chunks (base64), done with size and SHA-256
    FsGet: Post "/v1/fs/get", FsPathRequest => FsGetEvent, response = NdJson;
}
endpoint! {
    /// upload the body (streamed, not bound by the 1 MiB body limit but by the hub's 100 MiB max_file_size) to the selected hosts, atomically and hash-verified; one result per host
    FsPut: Post "/v1/fs/put", FsPutQuery => FsPutResponse, streamed_body = true;
}
endpoint! {
    /// list a directory on a target
    FsListDir: Get "/v1/fs/list", FsPathRequest => FsList;
}
endpoint! {
    /// metadata of a path on a target
    FsStatPath: Get "/v1/fs/stat", FsPathRequest => FsStat;
}
