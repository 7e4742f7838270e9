//! Day files and directory helpers.

use std::path::{Path, PathBuf};

use time::Date;

use crate::error::{AuditError, Result};
use crate::record::{format_date, parse_date};

/// Name of the signed head checkpoint file inside the audit directory.
pub const HEAD_FILE: &str = "head";

/// `dir/YYYY-MM-DD.jsonl`.
pub fn day_path(dir: &Path, date: Date) -> PathBuf {
    dir.join(format!("{}.jsonl", format_date(date)))
}

/// The day files in `dir`, oldest first. Other files are ignored.
pub fn list_day_files(dir: &Path) -> Result<Vec<(Date, PathBuf)>> {
    let rd = std::fs::read_dir(dir).map_err(|source| AuditError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for ent in rd {
        let ent = ent.map_err(|source| AuditError::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let name = ent.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(stem) = name.strip_suffix(".jsonl") else {
            continue;
        };
        if stem.len() != 10 {
            continue;
        }
        if let Some(d) = parse_date(stem) {
            out.push((d, ent.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// fsyncs a directory so that a create/rename/unlink in it is durable.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}
