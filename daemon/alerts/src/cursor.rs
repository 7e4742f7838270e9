//! [`Cursor`]: an audit sink's acknowledged position, kept durably in `state_dir/audit-sinks/`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{AlertsError, Result};

/// The last record a sink acknowledged: its seq and chain hash. Written atomically and durably
/// (temp file, fsync, rename, directory fsync) after every acknowledged batch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// Seq of the last acknowledged record (0: none yet).
    pub seq: u64,
    /// Chain hash of that record (empty for seq 0).
    pub hash: String,
}

impl Cursor {
    /// The cursor file of `sink` under `dir`.
    pub fn path(dir: &Path, sink: &str) -> PathBuf {
        let safe: String = sink
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        dir.join(format!("{safe}.cursor.json"))
    }

    /// Loads the cursor at `path`; a missing file is the start (seq 0).
    pub fn load(path: &Path) -> Result<Cursor> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| AlertsError::Cursor {
                path: path.to_path_buf(),
                message: format!("not a cursor file: {e}"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Cursor::default()),
            Err(e) => Err(AlertsError::Cursor {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    /// Writes the cursor durably to `path` (creating its directory 0700).
    pub fn store(&self, path: &Path) -> Result<()> {
        let err = |message: String| AlertsError::Cursor {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent() {
            tether_durable::ensure_private_dir(dir).map_err(|e| err(e.to_string()))?;
        }
        let bytes = serde_json::to_vec(self).map_err(|e| err(e.to_string()))?;
        tether_durable::write_atomic(path, &bytes, 0o600).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_starts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let p = Cursor::path(&dir.path().join("audit-sinks"), "splunk/hec");
        assert!(p.ends_with("splunk_hec.cursor.json"));
        assert_eq!(Cursor::load(&p).unwrap(), Cursor::default());
        let c = Cursor {
            seq: 42,
            hash: "ab".repeat(32),
        };
        c.store(&p).unwrap();
        assert_eq!(Cursor::load(&p).unwrap(), c);
        std::fs::write(&p, b"garbage").unwrap();
        assert!(
            Cursor::load(&p)
                .unwrap_err()
                .to_string()
                .contains("not a cursor file")
        );
    }
}
