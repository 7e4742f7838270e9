//! The file backends' common part: a JSON snapshot (`hosts.json`, `invites.json`) plus an
//! append-only journal beside it (`hosts.journal`, `invites.journal`, see
//! [`tether_durable::journal`]), compacted into a new snapshot when the journal outgrows it.
//!
//! A commit appends one fsynced line per change: O(change) bytes instead of rewriting the whole
//! file (which made enrolling a fleet O(N²)). Compaction is crash-safe at every step: the new
//! snapshot (written atomically) records the last sequence number it holds, so a crash after it
//! is in place but before the journal is truncated replays nothing twice; a crash before leaves
//! the old snapshot and the whole journal.

use std::path::{Path, PathBuf};

use serde::Serialize;
use serde::de::DeserializeOwned;
use tether_durable::journal::{Entry, Journal, Replay};

use crate::error::{EnrollError, Result};
use crate::util::{atomic_write, open_state};

/// The journal is compacted once it is at least this long and longer than the snapshot.
#[cfg(not(test))]
pub(crate) const MIN_COMPACT_BYTES: u64 = 64 * 1024;
/// Small in tests, so that random operation sequences cross several compactions.
#[cfg(test)]
pub(crate) const MIN_COMPACT_BYTES: u64 = 4 * 1024;

/// A snapshot file's sequence number: the last journal line it includes (0 for a file from
/// before journals).
pub(crate) trait Snapshot: DeserializeOwned {
    fn last_seq(&self) -> u64;
}

/// Where a test stops a compaction, as a crash would.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CrashPoint {
    /// The new snapshot's temp file is written, not renamed into place.
    BeforeRename,
    /// The new snapshot is in place, the journal not yet truncated.
    BeforeTruncate,
}

/// A snapshot and its journal.
#[derive(Debug)]
pub(crate) struct Journaled {
    snapshot: PathBuf,
    snapshot_len: u64,
    /// The last journal sequence number the snapshot on disk holds.
    snapshot_seq: u64,
    journal: Journal,
    #[cfg(test)]
    pub(crate) crash: Option<CrashPoint>,
}

/// Maps a durable-layer error: corruption found at replay is [`EnrollError::CorruptState`]
/// naming the journal and line, anything else an I/O error naming the step and file.
pub(crate) fn map_err(e: tether_durable::Error) -> EnrollError {
    if e.source.kind() == std::io::ErrorKind::InvalidData {
        EnrollError::CorruptState {
            what: e.source.to_string(),
            path: e.path,
        }
    } else {
        EnrollError::Io {
            what: e.step,
            path: e.path,
            source: e.source,
        }
    }
}

fn warn_torn(path: &Path, replay: &Replay) {
    if let Some(t) = &replay.torn {
        tracing::warn!(
            file = %path.display(),
            line = t.line,
            bytes = t.bytes,
            "discarded the torn tail of a journal (an append was interrupted, e.g. by a crash); \
             the change it held was never acknowledged"
        );
    }
}

/// Reads `state_dir/snapshot_file` and the journal lines past it without changing anything.
pub(crate) fn read<S: Snapshot>(
    state_dir: &Path,
    snapshot_file: &str,
    journal_file: &str,
) -> Result<(Option<S>, Vec<Entry>)> {
    let (_, snap) = open_state::<S>(state_dir, snapshot_file)?;
    let after = snap.as_ref().map_or(0, Snapshot::last_seq);
    let replay =
        tether_durable::journal::read(&state_dir.join(journal_file), after).map_err(map_err)?;
    Ok((snap, replay.entries))
}

/// Decodes a journal line's JSON payload; one that does not decode is corruption naming the
/// file and line.
pub(crate) fn decode<T: DeserializeOwned>(journal: &Path, e: &Entry) -> Result<T> {
    serde_json::from_slice(&e.payload).map_err(|x| EnrollError::CorruptState {
        path: journal.to_path_buf(),
        what: format!("line {}: not a change this version knows: {x}", e.line),
    })
}

/// A replayed line that does not apply to the state (e.g. consuming an unknown invite).
pub(crate) fn inapplicable(journal: &Path, e: &Entry, why: String) -> EnrollError {
    EnrollError::CorruptState {
        path: journal.to_path_buf(),
        what: format!("line {}: {why}", e.line),
    }
}

impl Journaled {
    /// Opens `state_dir/snapshot_file` and `state_dir/journal_file` (creating the directory if
    /// missing, neither file): the snapshot if any and the lines to replay over it. A torn tail
    /// is cut off with a warning; corruption is an error and changes nothing.
    pub(crate) fn open<S: Snapshot>(
        state_dir: &Path,
        snapshot_file: &str,
        journal_file: &str,
    ) -> Result<(Journaled, Option<S>, Vec<Entry>)> {
        let (snapshot, snap) = open_state::<S>(state_dir, snapshot_file)?;
        let after = snap.as_ref().map_or(0, Snapshot::last_seq);
        let jpath = state_dir.join(journal_file);
        let (journal, replay) = Journal::open(&jpath, 0o600, after).map_err(map_err)?;
        warn_torn(&jpath, &replay);
        let snapshot_len = std::fs::metadata(&snapshot).map_or(0, |m| m.len());
        Ok((
            Journaled {
                snapshot,
                snapshot_len,
                snapshot_seq: after,
                journal,
                #[cfg(test)]
                crash: None,
            },
            snap,
            replay.entries,
        ))
    }

    /// The snapshot file.
    pub(crate) fn snapshot_path(&self) -> &Path {
        &self.snapshot
    }

    /// The journal file.
    pub(crate) fn journal_path(&self) -> &Path {
        self.journal.path()
    }

    /// Appends one line per change (JSON) and fsyncs; on error nothing was written.
    pub(crate) fn append<T: Serialize>(&mut self, changes: &[T]) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let lines = changes
            .iter()
            .map(serde_json::to_vec)
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| EnrollError::Internal {
                what: format!("encode a journal line: {e}"),
            })?;
        let refs: Vec<&[u8]> = lines.iter().map(Vec::as_slice).collect();
        self.journal.append(&refs).map_err(map_err)?;
        Ok(())
    }

    /// Whether the snapshot on disk holds every change (e.g. after a compaction whose journal
    /// truncate failed).
    pub(crate) fn snapshot_is_current(&self) -> bool {
        self.snapshot_seq == self.journal.last_seq()
    }

    /// Whether the journal has outgrown the snapshot.
    pub(crate) fn wants_compaction(&self) -> bool {
        let len = self.journal.len();
        len >= MIN_COMPACT_BYTES && len > self.snapshot_len
    }

    /// Writes `snapshot(last_seq)` atomically as the new snapshot, then empties the journal.
    /// The journal's changes are durable already, so a failure here loses nothing: it is
    /// returned for the caller to log, and compaction is tried again at a later commit.
    pub(crate) fn compact(&mut self, snapshot: impl FnOnce(u64) -> Result<Vec<u8>>) -> Result<()> {
        let bytes = snapshot(self.journal.last_seq())?;
        #[cfg(test)]
        if self.crash == Some(CrashPoint::BeforeRename) {
            let name = self
                .snapshot
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tmp = self
                .snapshot
                .with_file_name(format!(".{name}.tmp.{}.0", std::process::id()));
            let _ = std::fs::write(tmp, &bytes[..bytes.len() / 2]);
            return Err(EnrollError::Internal {
                what: "simulated crash before the snapshot rename".into(),
            });
        }
        atomic_write(&self.snapshot, &bytes)?;
        self.snapshot_len = bytes.len() as u64;
        self.snapshot_seq = self.journal.last_seq();
        #[cfg(test)]
        if self.crash == Some(CrashPoint::BeforeTruncate) {
            return Err(EnrollError::Internal {
                what: "simulated crash before the journal truncate".into(),
            });
        }
        self.journal.truncate().map_err(map_err)
    }
}

#[cfg(test)]
#[path = "journal_tests.rs"]
mod tests;
