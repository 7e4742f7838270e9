//! `fs_read`, `fs_write`, `fs_list`, `fs_stat`: files on targets, inline in the tool call.
//!
//! The same routes as `tether fs` (SFTP confined below each target's `allowed_roots`, the
//! hub's policy on paths, audit before anything is sent). Inline content is limited to
//! [`INLINE_LIMIT`] bytes each way; bigger files go through `tether fs get|put`.

use base64::Engine as _;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::{Json, tool, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tether_api::{FsEntry, FsGet, FsGetEvent, FsListDir, FsPathRequest, FsPut, FsPutQuery};

use crate::tools::{TetherMcp, failed};

/// Most bytes of file content one `fs_read` returns or one `fs_write` takes (10 MiB).
pub const INLINE_LIMIT: u64 = 10 * 1024 * 1024;

/// Input of `fs_read`, `fs_list` and `fs_stat`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FsPathInput {
    /// The target's inventory name.
    pub host: String,
    /// Absolute path on the target (below its allowed roots).
    pub path: String,
}

/// Output of `fs_read`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FsReadOutput {
    /// The host.
    pub host: String,
    /// The path.
    pub path: String,
    /// Bytes in the file.
    pub size: u64,
    /// SHA-256 of the bytes, hex (checked against the target's own digest).
    pub sha256: String,
    /// True when `content` is standard base64 (the file is not valid UTF-8); false when it is
    /// the file's text as is.
    pub base64: bool,
    /// The file's content.
    pub content: String,
}

/// Input of `fs_write`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FsWriteInput {
    /// The target's inventory name.
    pub host: String,
    /// Absolute destination path on the target (below its allowed roots).
    pub path: String,
    /// The new content: UTF-8 text, or standard base64 when `base64` is true. At most 10 MiB
    /// once decoded.
    pub content: String,
    /// Whether `content` is base64 (for binary files). Default false.
    #[serde(default)]
    pub base64: bool,
    /// Permission bits, octal (`"644"`, `"755"`); default: the old file's, or 644.
    #[serde(default)]
    pub mode: Option<String>,
}

/// Output of `fs_write`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FsWriteOutput {
    /// The host.
    pub host: String,
    /// The path now holding the content.
    pub path: String,
    /// Bytes written.
    pub size: u64,
    /// SHA-256 of the bytes written, hex (the target checked it before replacing the file).
    pub sha256: String,
}

/// One directory entry or a path's metadata.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FsEntryOut {
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
    /// Modification time, unix seconds.
    pub mtime: u64,
}

impl From<FsEntry> for FsEntryOut {
    fn from(e: FsEntry) -> Self {
        FsEntryOut {
            name: e.name,
            kind: e.kind,
            size: e.size,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            mtime: e.mtime,
        }
    }
}

/// Output of `fs_list`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FsListOutput {
    /// The host.
    pub host: String,
    /// The directory.
    pub path: String,
    /// Its entries by name (entries matching the target's deny_paths are left out).
    pub entries: Vec<FsEntryOut>,
}

/// Output of `fs_stat`.
#[derive(Debug, Serialize, JsonSchema)]
pub struct FsStatOutput {
    /// The host.
    pub host: String,
    /// What is at the path.
    pub entry: FsEntryOut,
}

fn too_large(what: &str, size: u64) -> String {
    format!(
        "{what} is {size} bytes; inline file content is limited to {INLINE_LIMIT} bytes (10 MiB). Nothing was transferred; use `tether fs get|put` for bigger files"
    )
}

#[tool_router(router = fs_router, vis = "pub(crate)")]
impl TetherMcp {
    /// Reads a file on a target (at most 10 MiB), under the policy and audit of
    /// `tether fs get`. Text comes back as is; other bytes as base64 with `base64: true`.
    #[tool(annotations(read_only_hint = true))]
    pub(crate) async fn fs_read(
        &self,
        Parameters(input): Parameters<FsPathInput>,
    ) -> Result<Json<FsReadOutput>, String> {
        let engine = base64::engine::general_purpose::STANDARD;
        let mut data = Vec::new();
        let mut done = None;
        let mut stop = None;
        self.client
            .stream::<FsGet>(
                &FsPathRequest {
                    host: input.host.clone(),
                    path: input.path.clone(),
                },
                |ev| match ev {
                    FsGetEvent::Started { size, .. } if size > INLINE_LIMIT => {
                        stop = Some(too_large("the file", size));
                        false
                    }
                    FsGetEvent::Started { .. } => true,
                    FsGetEvent::Data { data: chunk } => match engine.decode(chunk) {
                        Ok(bytes) => {
                            data.extend_from_slice(&bytes);
                            if data.len() as u64 > INLINE_LIMIT {
                                stop = Some(too_large(
                                    "the file (it grew while read)",
                                    data.len() as u64,
                                ));
                                return false;
                            }
                            true
                        }
                        Err(e) => {
                            stop = Some(format!("the daemon sent invalid base64: {e}"));
                            false
                        }
                    },
                    FsGetEvent::Done { size, sha256 } => {
                        done = Some((size, sha256));
                        false
                    }
                    FsGetEvent::Error { code, message } => {
                        stop = Some(format!("reading {} failed ({code}): {message}", input.path));
                        false
                    }
                    #[allow(unreachable_patterns)]
                    _ => true,
                },
            )
            .await
            .map_err(failed)?;
        if let Some(why) = stop {
            return Err(why);
        }
        let Some((size, sha256)) = done else {
            return Err(format!(
                "the download of {} ended early; try again, and check the daemon log if it persists",
                input.path
            ));
        };
        let ours = hex::encode(Sha256::digest(&data));
        if size != data.len() as u64 || ours != sha256 {
            return Err(format!(
                "the bytes received ({} bytes, sha256 {ours}) differ from what the target sent ({size} bytes, sha256 {sha256}); try again",
                data.len()
            ));
        }
        let (base64, content) = match String::from_utf8(data) {
            Ok(text) => (false, text),
            Err(e) => (true, engine.encode(e.into_bytes())),
        };
        Ok(Json(FsReadOutput {
            host: input.host,
            path: input.path,
            size,
            sha256,
            base64,
            content,
        }))
    }

    /// Writes a file on a target (at most 10 MiB), atomically and hash-verified, under the
    /// policy and audit of `tether fs put`: the old file stays unless every byte arrived.
    #[tool(annotations(destructive_hint = true, open_world_hint = true))]
    pub(crate) async fn fs_write(
        &self,
        Parameters(input): Parameters<FsWriteInput>,
    ) -> Result<Json<FsWriteOutput>, String> {
        let bytes = if input.base64 {
            // 4 base64 characters per 3 bytes: refuse before decoding what can't fit.
            let most = INLINE_LIMIT.div_ceil(3) * 4;
            if input.content.len() as u64 > most + 4 {
                return Err(too_large("the content", input.content.len() as u64 / 4 * 3));
            }
            base64::engine::general_purpose::STANDARD
                .decode(input.content.trim())
                .map_err(|e| {
                    format!("content is not valid base64 ({e}); nothing was written. Send standard base64 with padding, or text with base64 false")
                })?
        } else {
            input.content.into_bytes()
        };
        if bytes.len() as u64 > INLINE_LIMIT {
            return Err(too_large("the content", bytes.len() as u64));
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        if !bytes.is_empty() {
            // The channel has room for this one chunk; dropping `tx` then ends the body.
            tx.try_send(bytes::Bytes::from(bytes))
                .map_err(|e| format!("could not queue the upload: {e}"))?;
        }
        drop(tx);
        let answer = self
            .client
            .call_streamed::<FsPut>(
                &FsPutQuery {
                    selector: format!("host:{}", input.host),
                    path: input.path.clone(),
                    sha256: Some(sha256.clone()),
                    mode: input.mode,
                },
                rx,
            )
            .await
            .map_err(failed)?;
        let Some(h) = answer.hosts.into_iter().next() else {
            return Err(format!("no host {} took the file", input.host));
        };
        if !h.ok {
            return Err(format!(
                "{}: writing {} failed ({}): {}; the old file is unchanged",
                h.host,
                answer.path,
                h.code.unwrap_or_default(),
                h.message.unwrap_or_default()
            ));
        }
        Ok(Json(FsWriteOutput {
            host: h.host,
            path: answer.path,
            size: h.size,
            sha256: h.sha256.unwrap_or(sha256),
        }))
    }

    /// Lists a directory on a target (entries matching its deny_paths are left out).
    #[tool(annotations(read_only_hint = true))]
    pub(crate) async fn fs_list(
        &self,
        Parameters(input): Parameters<FsPathInput>,
    ) -> Result<Json<FsListOutput>, String> {
        let l = self
            .client
            .call::<FsListDir>(&FsPathRequest {
                host: input.host,
                path: input.path,
            })
            .await
            .map_err(failed)?;
        Ok(Json(FsListOutput {
            host: l.host,
            path: l.path,
            entries: l.entries.into_iter().map(FsEntryOut::from).collect(),
        }))
    }

    /// Metadata of a path on a target: kind, size, mode, owner, modification time.
    #[tool(annotations(read_only_hint = true))]
    pub(crate) async fn fs_stat(
        &self,
        Parameters(input): Parameters<FsPathInput>,
    ) -> Result<Json<FsStatOutput>, String> {
        let s = self
            .client
            .call::<tether_api::FsStatPath>(&FsPathRequest {
                host: input.host,
                path: input.path,
            })
            .await
            .map_err(failed)?;
        Ok(Json(FsStatOutput {
            host: s.host,
            entry: FsEntryOut::from(s.entry),
        }))
    }
}
