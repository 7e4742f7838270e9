//! The hub's invite keys, by epoch. Epoch 0 is the original key (vault entry
//! `tetherd.invite-key`); each `tether vpn rotate-invite-key` adds epoch N as
//! `tetherd.invite-key.eN` and never removes an older one. New invites are MACed with the newest
//! key and name its epoch ([`crate::InvitePayload::key_epoch`]); a token of a retired key still
//! verifies until it expires, and a token naming an epoch the ring does not hold is refused as
//! tampered.

use std::collections::BTreeMap;
use std::fmt;

use tether_vault::{SecretBox, Vault};

use crate::error::{EnrollError, Result};
use crate::util::sha256;

/// Vault entry of the epoch-0 invite key.
pub const INVITE_KEY: &str = "tetherd.invite-key";
/// Length of a generated invite key, bytes.
pub const INVITE_KEY_LEN: usize = 32;
/// Shortest invite key accepted.
pub const MIN_INVITE_KEY_LEN: usize = 16;

/// The vault entry of the invite key of `epoch` (`tetherd.invite-key`, then `...eN`).
pub fn epoch_name(epoch: u32) -> String {
    if epoch == 0 {
        INVITE_KEY.to_owned()
    } else {
        format!("{INVITE_KEY}.e{epoch}")
    }
}

/// Public id of an invite key, safe to audit and print: the first 8 bytes of
/// SHA-256("tether-invite-key-id-v1" || key), hex. It names the key without revealing it.
pub fn key_id(key: &SecretBox) -> String {
    let h = key.expose(|k| sha256(&[b"tether-invite-key-id-v1".as_slice(), k].concat()));
    hex::encode(&h[..8])
}

/// Every invite key the hub holds, by epoch; the newest signs new invites. `Debug` shows the
/// epochs and key ids, never a key.
pub struct InviteKeyRing {
    /// Epoch 0, always present.
    first: SecretBox,
    /// Epochs 1 and up, made by rotations.
    later: BTreeMap<u32, SecretBox>,
}

impl fmt::Debug for InviteKeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.iter().map(|(e, k)| (e, key_id(k))))
            .finish()
    }
}

impl From<SecretBox> for InviteKeyRing {
    /// A ring holding only `key`, as epoch 0.
    fn from(key: SecretBox) -> Self {
        InviteKeyRing {
            first: key,
            later: BTreeMap::new(),
        }
    }
}

impl InviteKeyRing {
    /// Adds the key of `epoch`. Refuses a key shorter than 16 bytes and an epoch the ring
    /// already holds (a rotation never replaces a key).
    pub fn insert(&mut self, epoch: u32, key: SecretBox) -> Result<()> {
        if key.len() < MIN_INVITE_KEY_LEN {
            return Err(EnrollError::Internal {
                what: format!(
                    "the invite key of epoch {epoch} ({}) is shorter than 16 bytes; restore it from backup",
                    epoch_name(epoch)
                ),
            });
        }
        if epoch == 0 || self.later.contains_key(&epoch) {
            return Err(EnrollError::Internal {
                what: format!(
                    "the hub already holds invite key epoch {epoch}; a rotation never replaces a key"
                ),
            });
        }
        self.later.insert(epoch, key);
        Ok(())
    }

    /// The newest epoch and its key: what new invites are MACed with.
    pub fn current(&self) -> (u32, &SecretBox) {
        self.later
            .iter()
            .next_back()
            .map_or((0, &self.first), |(e, k)| (*e, k))
    }

    fn iter(&self) -> impl Iterator<Item = (u32, &SecretBox)> {
        std::iter::once((0, &self.first)).chain(self.later.iter().map(|(e, k)| (*e, k)))
    }

    /// The key of `epoch`, or [`EnrollError::Tampered`] when the ring does not hold it (a token
    /// naming an epoch this hub never had, or whose key was lost, cannot be authenticated).
    pub fn key(&self, epoch: u32) -> Result<&SecretBox> {
        if epoch == 0 {
            return Ok(&self.first);
        }
        self.later.get(&epoch).ok_or(EnrollError::Tampered)
    }

    /// The epochs held, oldest first.
    pub fn epochs(&self) -> Vec<u32> {
        self.iter().map(|(e, _)| e).collect()
    }

    /// Loads every invite key from the vault: epoch 0 (generated on first start), then
    /// `tetherd.invite-key.e1`, `.e2`, ... up to the first epoch the vault lacks.
    pub fn load(vault: &Vault) -> Result<InviteKeyRing> {
        let vault_err = |name: &str, e: tether_vault::VaultError| EnrollError::Internal {
            what: format!("cannot read the invite key {name} from the vault: {e}"),
        };
        let first = vault
            .get_or_generate(INVITE_KEY, INVITE_KEY_LEN)
            .map_err(|e| vault_err(INVITE_KEY, e))?;
        if first.len() < MIN_INVITE_KEY_LEN {
            return Err(EnrollError::Internal {
                what: format!(
                    "the invite key {INVITE_KEY} is shorter than 16 bytes; restore it from backup"
                ),
            });
        }
        let mut ring = InviteKeyRing::from(first);
        for epoch in 1..u32::MAX {
            let name = epoch_name(epoch);
            match vault.get(&name).map_err(|e| vault_err(&name, e))? {
                Some(key) => ring.insert(epoch, key)?,
                None => break,
            }
        }
        Ok(ring)
    }
}

/// Rotation outcome: the new epoch and the public id of its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RotatedInviteKey {
    /// The new epoch (new invites name it).
    pub epoch: u32,
    /// [`key_id`] of the new key.
    pub key_id: String,
    /// The epoch that signed invites until now (its tokens stay valid until they expire).
    pub previous_epoch: u32,
}
