//! The hub's invite store: the [`InviteStore`] trait the hub's enrollment core uses, and its
//! embedded backend [`FileInviteStore`], `STATE_DIR/invites.json`, holding only SHA-256 of each
//! nonce.
//!
//! The trait's operations are the ones whose atomicity matters: [`InviteStore::consume`] marks
//! a pending invite used exactly once. In the file backend the hub's lock makes check + mark
//! atomic; a store shared by several hubs does it in the store (PostgreSQL:
//! `UPDATE invites SET state = 'used', used_at = $2 WHERE nonce_hash = $1 AND state = 'pending'
//! AND expires_at > $2 RETURNING *`, see `docs/scale.md`), so two hubs racing with one token
//! cannot both win.
//!
//! Used invites are kept until their expiry (so a replay is reported as *already used* rather
//! than *unknown*); after expiry every record is pruned, since an expired token fails as expired
//! before the store is consulted.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{EnrollError, Result};
use crate::token::{InviteRecord, InviteState};
use crate::util::{atomic_write, open_state};

/// File name of the invite store inside the state directory.
pub const INVITES_FILE: &str = "invites.json";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    invites: Vec<InviteRecord>,
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

/// The embedded backend: pending, used and revoked invites in `invites.json`, persisted
/// atomically on every change.
#[derive(Debug)]
pub struct FileInviteStore {
    path: PathBuf,
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
    /// Opens (or starts empty) `state_dir/invites.json`.
    pub fn open(state_dir: &Path) -> Result<FileInviteStore> {
        let (path, file) = open_state::<File>(state_dir, INVITES_FILE)?;
        let invites = file.map(|f| f.invites).unwrap_or_default();
        Ok(FileInviteStore { path, invites })
    }

    /// Every record.
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
        self.invites.push(record);
        self.save(now)
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
        self.check_pending(nonce_hash)?;
        let mut old = None;
        for r in &mut self.invites {
            if r.nonce_hash == nonce_hash {
                old = Some(r.clone());
                r.state = InviteState::Used { at: now };
            }
        }
        let old = old.ok_or(EnrollError::UnknownInvite)?;
        if let Err(e) = self.save(now) {
            // Not durable: undo, so memory matches the file.
            for r in &mut self.invites {
                if r.nonce_hash == nonce_hash {
                    r.state = InviteState::Pending;
                }
            }
            return Err(e);
        }
        Ok(old)
    }

    /// Revokes every pending invite for `name`; returns how many.
    pub fn revoke_name(&mut self, name: &str, now: u64) -> Result<usize> {
        let mut n = 0;
        for r in &mut self.invites {
            if r.name == name && r.state == InviteState::Pending {
                r.state = InviteState::Revoked { at: now };
                n += 1;
            }
        }
        if n > 0 {
            self.save(now)?;
        }
        Ok(n)
    }

    /// Drops expired records and writes the file atomically.
    fn save(&mut self, now: u64) -> Result<()> {
        self.invites.retain(|r| r.expires_at > now);
        let bytes = serde_json::to_vec_pretty(&File {
            version: 1,
            invites: self.invites.clone(),
        })
        .map_err(|e| EnrollError::Internal {
            what: format!("encode invites: {e}"),
        })?;
        atomic_write(&self.path, &bytes)
    }
}
