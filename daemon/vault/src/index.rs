//! The non-secret index: which secrets exist, where, since when. `list` reads only this.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::config::BackendKind;
use crate::error::{Result, VaultError};
use crate::fsutil::atomic_write;

/// What `list` reports for one secret (never its value).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretInfo {
    /// The secret's name.
    pub name: String,
    /// Where it is stored.
    pub backend: BackendKind,
    /// Write counter, starting at 1; bumped by every `set` and `rotate`.
    pub version: u64,
    /// True for keys tetherd generated (`get_or_generate`); only those can be rotated.
    pub generated: bool,
    /// When it was first stored.
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    /// When it was last replaced (`set` over an existing value, or `rotate`).
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub rotated: Option<OffsetDateTime>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entry {
    pub(crate) backend: BackendKind,
    pub(crate) version: u64,
    /// Length of a generated key (so `rotate` makes one of the same size); `None` if set by hand.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) generated_len: Option<usize>,
    #[serde(with = "time::serde::rfc3339")]
    pub(crate) created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub(crate) rotated: Option<OffsetDateTime>,
}

impl Entry {
    pub(crate) fn info(&self, name: &str) -> SecretInfo {
        SecretInfo {
            name: name.to_owned(),
            backend: self.backend,
            version: self.version,
            generated: self.generated_len.is_some(),
            created: self.created,
            rotated: self.rotated,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IndexFile {
    format: u32,
    secrets: BTreeMap<String, Entry>,
}

/// The index file and its in-memory copy.
#[derive(Debug)]
pub(crate) struct Index {
    path: PathBuf,
    pub(crate) secrets: BTreeMap<String, Entry>,
}

impl Index {
    pub(crate) fn load(path: &Path) -> Result<Index> {
        let secrets = match std::fs::read(path) {
            Ok(bytes) => {
                let f: IndexFile =
                    serde_json::from_slice(&bytes).map_err(|e| VaultError::Index {
                        path: path.to_owned(),
                        detail: e.to_string(),
                    })?;
                if f.format != 1 {
                    return Err(VaultError::Index {
                        path: path.to_owned(),
                        detail: format!(
                            "format {} is not supported (this tetherd reads format 1)",
                            f.format
                        ),
                    });
                }
                f.secrets
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(VaultError::io("read", path, e)),
        };
        Ok(Index {
            path: path.to_owned(),
            secrets,
        })
    }

    pub(crate) fn save(&self) -> Result<()> {
        #[derive(Serialize)]
        struct Out<'a> {
            format: u32,
            secrets: &'a BTreeMap<String, Entry>,
        }
        let bytes = serde_json::to_vec_pretty(&Out {
            format: 1,
            secrets: &self.secrets,
        })
        .map_err(|e| VaultError::Index {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        atomic_write(&self.path, &bytes, 0o600)
    }
}
