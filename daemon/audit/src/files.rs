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
    tether_durable::sync_dir(dir).map_err(|e| e.source)
}

/// Where the records of a day file's bytes end: the first NUL byte, or the end.
///
/// The writer keeps the day file it appends to preallocated with zero bytes ahead of the last
/// record (so that `fdatasync` only flushes data, not the file size through the journal), and
/// trims them when the file is finished. Records never contain a NUL byte (JSON escapes control
/// characters), so the first NUL marks the end of the log in that file.
pub fn logical_len(data: &[u8]) -> usize {
    data.iter().position(|&b| b == 0).unwrap_or(data.len())
}

/// Reads `file` from `offset` up to its logical end (the first NUL byte, see [`logical_len`]),
/// appending to `out`. Stops reading at the first block that holds a NUL, so a preallocated tail
/// is not read in full. Returns the number of bytes appended.
pub fn read_logical(
    file: &std::fs::File,
    offset: u64,
    out: &mut Vec<u8>,
) -> std::io::Result<usize> {
    use std::os::unix::fs::FileExt as _;
    const BLOCK: usize = 64 << 10;
    let start = out.len();
    let mut off = offset;
    loop {
        let old = out.len();
        out.resize(old + BLOCK, 0);
        let got = loop {
            match file.read_at(&mut out[old..], off) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let got = match got {
            Ok(g) => g,
            Err(e) => {
                out.truncate(old);
                return Err(e);
            }
        };
        out.truncate(old + got);
        let n = logical_len(&out[old..]);
        if n < got {
            out.truncate(old + n);
            return Ok(out.len() - start);
        }
        if got == 0 {
            return Ok(out.len() - start);
        }
        off += got as u64;
    }
}
