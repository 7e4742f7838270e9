//! Durable, private file writes: [`tether_durable`] with errors as [`VaultError`]s.

use std::path::Path;

use crate::error::{Result, VaultError};

fn vault_err(e: tether_durable::Error) -> VaultError {
    VaultError::io(e.step, &e.path, e.source)
}

/// Creates `dir` (mode 0700) if missing.
pub(crate) fn ensure_private_dir(dir: &Path) -> Result<()> {
    tether_durable::ensure_private_dir(dir).map_err(vault_err)
}

/// fsyncs a directory so a rename/creation in it is durable.
pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    tether_durable::sync_dir(dir).map_err(vault_err)
}

/// Atomically replaces `path` with `bytes`: write a temp file (`mode`) in the same directory,
/// fsync it, rename it over `path`, fsync the directory. On failure `path` is unchanged.
pub(crate) fn atomic_write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    tether_durable::write_atomic(path, bytes, mode).map_err(vault_err)
}

/// Creates `path` with `bytes` and `mode` only if it does not exist. Returns false if `path`
/// already existed (nothing written).
pub(crate) fn create_exclusive(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    tether_durable::create_exclusive(path, bytes, mode).map_err(vault_err)
}
