//! [`ApprovalStore`]: where records live between restarts. The file backend ([`FileStore`]) is
//! the default; a database backend (issue #21) implements the same trait.

use std::path::{Path, PathBuf};

use crate::record::valid_id;
use crate::{ApprovalError, Record};

/// Largest record file read back, bytes (a record is well under 16 KiB).
pub const MAX_RECORD_BYTES: u64 = 64 * 1024;

/// Durable storage of approval records. Each call is durable when it returns `Ok`.
pub trait ApprovalStore: Send + Sync {
    /// Every stored record, plus a note for each one that could not be read (skipped: an
    /// unreadable approval grants nothing).
    fn load(&self) -> Result<(Vec<Record>, Vec<String>), ApprovalError>;
    /// Creates or replaces one record.
    fn put(&self, record: &Record) -> Result<(), ApprovalError>;
    /// Forgets one record (absent is fine).
    fn remove(&self, id: &str) -> Result<(), ApprovalError>;
}

/// One JSON file per record (`DIR/apr-….json`, mode 0600, in a 0700 directory), each written
/// with `tether-durable` (synced temp file renamed into place, directory synced).
#[derive(Debug, Clone)]
pub struct FileStore {
    dir: PathBuf,
}

fn store_err(path: &Path, reason: impl ToString) -> ApprovalError {
    ApprovalError::Store {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

impl FileStore {
    /// A store in `dir` (usually `state_dir/approvals`), created 0700 if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore, ApprovalError> {
        let dir = dir.into();
        tether_durable::ensure_private_dir(&dir).map_err(|e| store_err(&dir, e))?;
        Ok(FileStore { dir })
    }

    fn path(&self, id: &str) -> Result<PathBuf, ApprovalError> {
        if !valid_id(id) {
            return Err(ApprovalError::BadId { id: id.to_owned() });
        }
        Ok(self.dir.join(format!("{id}.json")))
    }
}

impl ApprovalStore for FileStore {
    fn load(&self) -> Result<(Vec<Record>, Vec<String>), ApprovalError> {
        use std::io::Read as _;
        let mut records = Vec::new();
        let mut skipped = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| store_err(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| store_err(&self.dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue; // temp files of an interrupted write, anything else
            };
            let path = entry.path();
            if !valid_id(id) {
                skipped.push(format!("{}: not an approval file name", path.display()));
                continue;
            }
            let mut bytes = Vec::new();
            let read = std::fs::File::open(&path)
                .and_then(|f| f.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes));
            if let Err(e) = read {
                skipped.push(format!("{}: {e}", path.display()));
                continue;
            }
            if bytes.len() as u64 > MAX_RECORD_BYTES {
                skipped.push(format!(
                    "{}: larger than {MAX_RECORD_BYTES} bytes",
                    path.display()
                ));
                continue;
            }
            match serde_json::from_slice::<Record>(&bytes) {
                Ok(r) if r.id == id => records.push(r),
                Ok(_) => skipped.push(format!(
                    "{}: the id inside differs from the file name",
                    path.display()
                )),
                Err(e) => skipped.push(format!("{}: {e}", path.display())),
            }
        }
        records.sort_by(|a, b| a.id.cmp(&b.id));
        Ok((records, skipped))
    }

    fn put(&self, record: &Record) -> Result<(), ApprovalError> {
        let path = self.path(&record.id)?;
        let bytes = serde_json::to_vec_pretty(record).map_err(|e| store_err(&path, e))?;
        tether_durable::write_atomic(&path, &bytes, 0o600).map_err(|e| store_err(&path, e))
    }

    fn remove(&self, id: &str) -> Result<(), ApprovalError> {
        let path = self.path(id)?;
        match std::fs::remove_file(&path) {
            Ok(()) => tether_durable::sync_dir(&self.dir).map_err(|e| store_err(&self.dir, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(store_err(&path, e)),
        }
    }
}
