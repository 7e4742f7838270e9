//! Durable, atomic file writes, shared by every crate that keeps state on disk (vault, enroll,
//! audit head, daemon state, plugin cache and signing keys).
//!
//! [`write_atomic`] writes a temp file in the same directory with the exact mode, fsyncs it,
//! renames it over the target and fsyncs the directory: a reader, or a restart after `kill -9`
//! or power loss, sees the old or the new content, never a mix. [`create_exclusive`] does the
//! same but links instead of renaming, so an existing file is never replaced. On any failure the
//! target is unchanged and the temp file is removed. [`journal`] is the append-only
//! alternative for state that changes often: one fsynced, self-checking line per change,
//! replayed over a snapshot written with [`write_atomic`] now and then.
#![forbid(unsafe_code)]

pub mod journal;

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// A durable write failed: which step, on which path, and the OS error. The target is unchanged.
///
/// One struct rather than an enum: every failure has this one shape, and `step` names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
#[error("cannot {step} {}: {source}", path.display())]
pub struct Error {
    /// The step that failed: `create`, `chmod`, `write`, `fsync`, `rename into place`,
    /// `link into place`, `fsync directory`, `create directory`; for journals `open`,
    /// `append to`, `truncate`, `cut the torn tail of`, `replay journal` (corruption: the
    /// message names the file and line).
    pub step: &'static str,
    /// The file or directory it failed on.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Result of this crate.
pub type Result<T> = std::result::Result<T, Error>;

fn err(step: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error { step, path, source }
}

/// The directory `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A fresh temp name beside `path`: `.NAME.tmp.PID.RANDOM`.
fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce = getrandom::u64().unwrap_or(0);
    path.with_file_name(format!(".{name}.tmp.{}.{nonce:016x}", std::process::id()))
}

/// Creates the new file `tmp` with exactly `mode`, writes `bytes` and fsyncs it.
fn write_synced_temp(tmp: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(err("create", tmp))?;
    // The umask may have removed bits, never added them; make the mode exact anyway.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(err("chmod", tmp))?;
    f.write_all(bytes).map_err(err("write", tmp))?;
    f.sync_all().map_err(err("fsync", tmp))
}

/// fsyncs a directory so that a create, rename or unlink in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("fsync directory", dir))
}

/// Creates `dir` and its missing parents with mode 0700.
pub fn ensure_private_dir(dir: &Path) -> Result<()> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(err("create directory", dir))
}

/// Atomically replaces (or creates) `path` with `bytes`, mode `mode`, durably.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = tmp_path(path);
    let result = write_synced_temp(&tmp, bytes, mode)
        .and_then(|()| std::fs::rename(&tmp, path).map_err(err("rename into place", path)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    sync_dir(parent(path))
}

/// Creates `path` with `bytes` and `mode` only if it does not exist yet (a hard link of a synced
/// temp file, so a concurrent creator or a crash never leaves a partial file). Returns `false`,
/// writing nothing, when `path` already existed.
pub fn create_exclusive(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    let tmp = tmp_path(path);
    let result =
        write_synced_temp(&tmp, bytes, mode).and_then(|()| match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(err("link into place", path)(e)),
        });
    let _ = std::fs::remove_file(&tmp);
    if result? {
        sync_dir(parent(path))?;
        return Ok(true);
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn leftovers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".tmp."))
            .collect()
    }

    #[test]
    fn write_atomic_creates_and_replaces_with_the_exact_mode() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("state.json");
        write_atomic(&p, b"one", 0o600).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"one");
        assert_eq!(mode(&p), 0o600);
        write_atomic(&p, b"two", 0o640).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(mode(&p), 0o640);
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn a_failed_write_leaves_the_target_and_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("target");
        write_atomic(&p, b"old", 0o600).unwrap();
        // Renaming a file over a non-empty directory fails: the old content must survive.
        let dir_target = d.path().join("sub");
        std::fs::create_dir(&dir_target).unwrap();
        std::fs::write(dir_target.join("x"), b"x").unwrap();
        let e = write_atomic(&dir_target, b"new", 0o600).unwrap_err();
        assert_eq!(e.step, "rename into place");
        assert!(
            e.to_string().starts_with("cannot rename into place "),
            "{e}"
        );
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
        assert!(leftovers(d.path()).is_empty());
        let missing = d.path().join("no/such/dir/file");
        assert_eq!(
            write_atomic(&missing, b"x", 0o600).unwrap_err().step,
            "create"
        );
    }

    #[test]
    fn create_exclusive_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("key");
        assert!(create_exclusive(&p, b"first", 0o400).unwrap());
        assert!(!create_exclusive(&p, b"second", 0o400).unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(mode(&p), 0o400);
        assert!(leftovers(d.path()).is_empty());
    }

    #[test]
    fn ensure_private_dir_is_0700_and_idempotent() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a/b");
        ensure_private_dir(&p).unwrap();
        ensure_private_dir(&p).unwrap();
        assert_eq!(mode(&p), 0o700);
    }
}
