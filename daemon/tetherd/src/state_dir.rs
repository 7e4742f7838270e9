//! The state directory belongs to one daemon and is never silently replaced: an exclusive lock
//! for the daemon's life, and a check that a non-empty directory is complete before anything
//! in it is used (a lost `vault/index.json` would otherwise lead to fresh keys over old ones).

use std::fs::File;
use std::io::{Read as _, Seek as _, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::error::DaemonError;

/// Name of the lock file inside `state_dir`; it holds the pid of the daemon owning the directory.
pub const LOCK_FILE: &str = "tetherd.lock";

/// The exclusive lock on a state directory; released when dropped (or when the process dies).
pub struct StateLock {
    lock: Flock<File>,
    path: PathBuf,
}

/// Takes the exclusive lock on `dir` (non-blocking); see [`StateLock::record_pid`]. A
/// second daemon on the same directory gets [`DaemonError::StateDirInUse`] with the first's pid.
pub fn lock(dir: &Path) -> Result<StateLock, DaemonError> {
    let path = dir.join(LOCK_FILE);
    let err = |source| DaemonError::StateDir {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(err)?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let pid = text.trim().parse::<u32>().ok();
            return Err(DaemonError::StateDirInUse {
                path: dir.to_path_buf(),
                pid,
            });
        }
        Err((_, e)) => return Err(err(std::io::Error::from(e))),
    };
    Ok(StateLock { lock, path })
}

impl StateLock {
    /// Records this process's pid in the lock file, for a second daemon's error message. Called
    /// once the state directory was found usable, so a refused start changes nothing.
    pub fn record_pid(&mut self) -> Result<(), DaemonError> {
        let lock = &mut self.lock;
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .and_then(|()| lock.sync_all())
            .map_err(|source| DaemonError::StateDir {
                path: self.path.clone(),
                source,
            })
    }
}

/// What a used state directory must hold, relative to it: the vault index (which records the
/// daemon's keys), unless the keys come from read-only systemd credentials (no index then).
fn required(config: &tether_config::Config) -> &'static [&'static str] {
    match config.vault.backend {
        tether_config::BackendChoice::Credentials => &[],
        _ => &["vault/index.json"],
    }
}

/// Checks that `config.state_dir` is either empty (a first start) or complete: a used state
/// directory must still hold its vault index. Otherwise [`DaemonError::StateDirIncomplete`]
/// names what is missing and what is there, and nothing is changed.
pub fn check_complete(config: &tether_config::Config) -> Result<(), DaemonError> {
    let dir = config.state_dir.as_path();
    let err = |source| DaemonError::StateDir {
        path: dir.to_path_buf(),
        source,
    };
    let mut present = Vec::new();
    collect(dir, dir, &mut present, 0).map_err(err)?;
    present.retain(|p| p.as_os_str() != LOCK_FILE);
    if present.is_empty() {
        return Ok(());
    }
    let missing: Vec<String> = required(config)
        .iter()
        .filter(|r| !dir.join(r).is_file())
        .map(|r| (*r).to_owned())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // Only directories left (e.g. an empty vault/ from an interrupted first start) are empty.
    if present.iter().all(|p| dir.join(p).is_dir()) {
        return Ok(());
    }
    present.sort();
    present.truncate(8);
    Err(DaemonError::StateDirIncomplete {
        path: dir.to_path_buf(),
        missing,
        present: present.iter().map(|p| p.display().to_string()).collect(),
    })
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<PathBuf>, depth: u32) -> std::io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for ent in rd {
        let ent = ent?;
        let path = ent.path();
        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
        if ent.file_type()?.is_dir() && depth < 2 {
            collect(root, &path, out, depth + 1)?;
        }
        out.push(rel);
    }
    Ok(())
}
