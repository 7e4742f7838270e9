//! The hub's invite store: the [`InviteStore`] trait the hub's enrollment core uses, and its
//! embedded backend [`FileInviteStore`], the snapshot `STATE_DIR/invites.json` plus the journal
//! `STATE_DIR/invites.journal` (one fsynced line per add, consume or revoke), holding only
//! SHA-256 of each nonce.
//!
//! The trait's operations are the ones whose atomicity matters: [`InviteStore::consume`] marks
//! a pending invite used exactly once. In the file backend the hub's lock makes check + mark
//! atomic; a store shared by several hubs does it in the store (PostgreSQL:
//! `UPDATE invites SET state = 'used', used_at = $2 WHERE nonce_hash = $1 AND state = 'pending'
//! AND expires_at > $2 RETURNING *`, see `docs/scale.md`), so two hubs racing with one token
//! cannot both win.
//!
//! Used invites are kept until their expiry (so a replay is reported as *already used* rather
//! than *unknown*); expired records are pruned when the journal is compacted into a new
//! snapshot, since an expired token fails as expired before the store is consulted.

use std::net::Ipv4Addr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{EnrollError, Result};
use crate::journaled::{self, Journaled, Snapshot};
use crate::token::{InviteRecord, InviteState};

/// File name of the invite store's snapshot inside the state directory.
pub const INVITES_FILE: &str = "invites.json";

/// File name of the invite store's journal (changes since the snapshot).
pub const INVITES_JOURNAL: &str = "invites.journal";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// 1: no journal; 2: `last_seq` names the last journal line included.
    version: u32,
    #[serde(default)]
    last_seq: u64,
    invites: Vec<InviteRecord>,
}

impl Snapshot for File {
    fn last_seq(&self) -> u64 {
        self.last_seq
    }
}

/// One line of `invites.journal`.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Line {
    /// A new invite.
    Add(InviteRecord),
    /// The pending invite with this nonce hash was used.
    Consume { nonce_hash: String, at: u64 },
    /// Every pending invite for this host name was revoked.
    Revoke { name: String, at: u64 },
}

/// Applies one change to `invites`; `Err(why)` if it does not apply (corruption at replay).
fn apply(invites: &mut Vec<InviteRecord>, line: Line) -> std::result::Result<usize, String> {
    match line {
        Line::Add(r) => {
            invites.push(r);
            Ok(1)
        }
        Line::Consume { nonce_hash, at } => {
            let r = invites
                .iter_mut()
                .find(|r| r.nonce_hash == nonce_hash && r.state == InviteState::Pending)
                .ok_or_else(|| format!("it consumes invite {nonce_hash}, which is not pending"))?;
            r.state = InviteState::Used { at };
            Ok(1)
        }
        Line::Revoke { name, at } => {
            let mut n = 0;
            for r in invites.iter_mut() {
                if r.name == name && r.state == InviteState::Pending {
                    r.state = InviteState::Revoked { at };
                    n += 1;
                }
            }
            Ok(n)
        }
    }
}

/// Where the hub keeps its invites (only SHA-256 of each nonce, never a token). The hub's
/// enrollment core ([`crate::Hub`]) calls it under its invite lock; every mutating operation
/// returns only once the change is durable, and changes nothing on error.
///
/// Backends: [`FileInviteStore`] (`invites.json`, the embedded default); a store shared by
/// several hubs (PostgreSQL, `docs/scale.md`) implements the same operations as single
/// statements, `consume` as a conditional update.
pub trait InviteStore: Send + std::fmt::Debug {
    /// Records still usable at `now` (for listings).
    fn pending(&self, now: u64) -> Vec<InviteRecord>;
    /// Whether a pending invite at `now` is for host `name`.
    fn has_pending_name(&self, name: &str, now: u64) -> bool;
    /// Overlay addresses held by pending invites at `now`.
    fn pending_ips(&self, now: u64) -> Vec<Ipv4Addr>;
    /// The record for a nonce hash, if the store knows it.
    fn get(&self, nonce_hash: &str) -> Option<InviteRecord>;
    /// Adds a record (durably).
    fn add(&mut self, record: InviteRecord, now: u64) -> Result<()>;
    /// Fails with the matching error (unknown, already used, revoked) unless the invite is
    /// pending.
    fn check_pending(&self, nonce_hash: &str) -> Result<InviteRecord>;
    /// Marks a pending invite used at `now`, exactly once across everyone sharing the store,
    /// and returns it as it was; fails as [`InviteStore::check_pending`] otherwise.
    fn consume(&mut self, nonce_hash: &str, now: u64) -> Result<InviteRecord>;
    /// Revokes every pending invite for `name`; returns how many.
    fn revoke_name(&mut self, name: &str, now: u64) -> Result<usize>;
}

/// The embedded backend: pending, used and revoked invites in the snapshot `invites.json` and
/// the journal `invites.journal`; every change is an fsynced journal line before it is visible.
/// A state directory with only `invites.json` (from before journals) opens unchanged; the first
/// change starts the journal.
#[derive(Debug)]
pub struct FileInviteStore {
    journal: Journaled,
    invites: Vec<InviteRecord>,
}

impl InviteStore for FileInviteStore {
    fn pending(&self, now: u64) -> Vec<InviteRecord> {
        self.pending_iter(now).cloned().collect()
    }
    fn has_pending_name(&self, name: &str, now: u64) -> bool {
        self.pending_iter(now).any(|r| r.name == name)
    }
    fn pending_ips(&self, now: u64) -> Vec<Ipv4Addr> {
        self.pending_iter(now).map(|r| r.overlay_ip).collect()
    }
    fn get(&self, nonce_hash: &str) -> Option<InviteRecord> {
        FileInviteStore::get(self, nonce_hash).cloned()
    }
    fn add(&mut self, record: InviteRecord, now: u64) -> Result<()> {
        FileInviteStore::add(self, record, now)
    }
    fn check_pending(&self, nonce_hash: &str) -> Result<InviteRecord> {
        FileInviteStore::check_pending(self, nonce_hash).cloned()
    }
    fn consume(&mut self, nonce_hash: &str, now: u64) -> Result<InviteRecord> {
        FileInviteStore::consume(self, nonce_hash, now)
    }
    fn revoke_name(&mut self, name: &str, now: u64) -> Result<usize> {
        FileInviteStore::revoke_name(self, name, now)
    }
}

impl FileInviteStore {
    /// Opens (or starts empty) `state_dir/invites.json` and replays `state_dir/invites.journal`
    /// over it. A file that does not parse, or a journal line that is corrupt with valid lines
    /// after it, is an error naming the file (and line); a torn last line (a crash in the middle
    /// of an append) is discarded with a warning.
    pub fn open(state_dir: &Path) -> Result<FileInviteStore> {
        let (journal, snap, entries) =
            Journaled::open::<File>(state_dir, INVITES_FILE, INVITES_JOURNAL)?;
        let mut invites = snap.map(|f| f.invites).unwrap_or_default();
        for e in &entries {
            let line = journaled::decode::<Line>(journal.journal_path(), e)?;
            apply(&mut invites, line)
                .map_err(|why| journaled::inapplicable(journal.journal_path(), e, why))?;
        }
        Ok(FileInviteStore { journal, invites })
    }

    /// Every record (expired ones until the next compaction).
    pub fn all(&self) -> &[InviteRecord] {
        &self.invites
    }

    fn pending_iter(&self, now: u64) -> impl Iterator<Item = &InviteRecord> {
        self.invites
            .iter()
            .filter(move |r| r.state == InviteState::Pending && r.expires_at > now)
    }

    /// The record for a nonce hash.
    pub fn get(&self, nonce_hash: &str) -> Option<&InviteRecord> {
        self.invites.iter().find(|r| r.nonce_hash == nonce_hash)
    }

    /// Adds a record and persists.
    pub fn add(&mut self, record: InviteRecord, now: u64) -> Result<()> {
        self.commit(Line::Add(record), now).map(drop)
    }

    /// Fails with the matching error unless the invite is pending.
    pub fn check_pending(&self, nonce_hash: &str) -> Result<&InviteRecord> {
        let r = self.get(nonce_hash).ok_or(EnrollError::UnknownInvite)?;
        match r.state {
            InviteState::Pending => Ok(r),
            InviteState::Used { .. } => Err(EnrollError::AlreadyUsed {
                name: r.name.clone(),
            }),
            InviteState::Revoked { .. } => Err(EnrollError::Revoked {
                name: r.name.clone(),
            }),
        }
    }

    /// Marks a pending invite used and persists (the caller holds the store exclusively, so
    /// check + mark is atomic).
    pub fn consume(&mut self, nonce_hash: &str, now: u64) -> Result<InviteRecord> {
        let old = self.check_pending(nonce_hash)?.clone();
        self.commit(
            Line::Consume {
                nonce_hash: nonce_hash.to_owned(),
                at: now,
            },
            now,
        )?;
        Ok(old)
    }

    /// Revokes every pending invite for `name`; returns how many.
    pub fn revoke_name(&mut self, name: &str, now: u64) -> Result<usize> {
        if !self
            .invites
            .iter()
            .any(|r| r.name == name && r.state == InviteState::Pending)
        {
            return Ok(0);
        }
        self.commit(
            Line::Revoke {
                name: name.to_owned(),
                at: now,
            },
            now,
        )
    }

    /// Makes `line` durable in the journal, then applies it in memory (memory never runs ahead
    /// of the file; on error nothing changed), then compacts if the journal outgrew the
    /// snapshot (dropping records expired at `now`).
    fn commit(&mut self, line: Line, now: u64) -> Result<usize> {
        self.journal.append(std::slice::from_ref(&line))?;
        let n = apply(&mut self.invites, line).map_err(|what| EnrollError::Internal { what })?;
        if self.journal.wants_compaction() {
            let kept: Vec<InviteRecord> = self
                .invites
                .iter()
                .filter(|r| r.expires_at > now)
                .cloned()
                .collect();
            let compacted = self.journal.compact(|last_seq| {
                serde_json::to_vec_pretty(&File {
                    version: 2,
                    last_seq,
                    invites: kept.clone(),
                })
                .map_err(|e| EnrollError::Internal {
                    what: format!("encode invites: {e}"),
                })
            });
            match compacted {
                Ok(()) => self.invites = kept,
                // The snapshot may be in place (only the truncate failed): memory must match it.
                Err(e) if self.journal.snapshot_is_current() => {
                    self.invites = kept;
                    tracing::warn!(error = %e, "could not truncate the invite journal after compaction; will retry at the next change");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not compact the invite journal; will retry at the next change");
                }
            }
        }
        Ok(n)
    }
}
