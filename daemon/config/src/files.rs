//! `[files]`: what `tether fs` may touch on a target.

use serde::{Deserialize, Serialize};

/// Default `max_file_size`: 100 MiB.
pub const DEFAULT_MAX_FILE_SIZE: u64 = 100 * 1024 * 1024;

/// `[files]` (target): file transfer over SFTP is confined below `allowed_roots`; with none,
/// it is off (the default).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesSection {
    /// Directories `tether fs` may read and write below (absolute, existing). Empty: off.
    pub allowed_roots: Vec<String>,
    /// Regexes (like `[policy] deny_paths`) of paths refused even below a root, matched against
    /// the path as asked and as resolved on disk.
    pub deny_paths: Vec<String>,
    /// Largest file an upload may write, bytes (default 100 MiB); enforced while streaming.
    pub max_file_size: u64,
}

impl Default for FilesSection {
    fn default() -> Self {
        FilesSection {
            allowed_roots: Vec::new(),
            deny_paths: Vec::new(),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
        }
    }
}

impl FilesSection {
    /// Checks the section; each problem names its key.
    pub fn validate(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for r in &self.allowed_roots {
            if !r.starts_with('/') || r.split('/').any(|c| c == "..") {
                out.push((
                    "files.allowed_roots",
                    format!("{r:?} is not an absolute path without `..`"),
                ));
            }
        }
        for p in &self.deny_paths {
            if let Err(e) = regex::Regex::new(p) {
                out.push((
                    "files.deny_paths",
                    format!("{p:?} is not a valid regex: {e}"),
                ));
            }
        }
        if self.max_file_size == 0 {
            out.push((
                "files.max_file_size",
                "must be more than 0 (bytes)".to_owned(),
            ));
        }
        out
    }
}
