//! Durable, private file writes.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::{Result, VaultError};

/// Creates `dir` (mode 0700) if missing.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    match DirBuilder::new().recursive(true).mode(0o700).create(dir) {
        Ok(()) => Ok(()),
        Err(e) => Err(VaultError::io("create directory", dir, e)),
    }
}

/// fsyncs a directory so a rename/creation in it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| VaultError::io("fsync directory", dir, e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nonce = getrandom::u64().unwrap_or(0);
    path.with_file_name(format!(".{name}.tmp.{}.{nonce:016x}", std::process::id()))
}

/// Creates the new temp file `tmp` with exactly `mode`, writes `bytes` and fsyncs it.
fn write_synced_temp(tmp: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(tmp)
        .map_err(|e| VaultError::io("create", tmp, e))?;
    // The umask may have removed bits, never added them; make the mode exact anyway.
    f.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|e| VaultError::io("chmod", tmp, e))?;
    f.write_all(bytes)
        .map_err(|e| VaultError::io("write", tmp, e))?;
    f.sync_all().map_err(|e| VaultError::io("fsync", tmp, e))
}

/// Atomically replaces `path` with `bytes`: write a temp file (`mode`) in the same directory,
/// fsync it, rename it over `path`, fsync the directory. On failure `path` is unchanged.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let tmp = tmp_path(path);
    let result = (|| {
        write_synced_temp(&tmp, bytes, mode)?;
        std::fs::rename(&tmp, path).map_err(|e| VaultError::io("rename into place", path, e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        return result;
    }
    fsync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Creates `path` with `bytes` and `mode` only if it does not exist (hard link of a fsynced temp
/// file, so a concurrent creator or a crash never leaves a partial file). Returns false if
/// `path` already existed (nothing written).
pub(crate) fn create_exclusive(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    let tmp = tmp_path(path);
    let result = (|| {
        write_synced_temp(&tmp, bytes, mode)?;
        match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(VaultError::io("link into place", path, e)),
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    let created = result?;
    if created {
        fsync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(created)
}
