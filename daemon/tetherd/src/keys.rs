//! The audit chain's keys, kept in the vault (never beside the log): an HMAC key for record
//! MACs and an Ed25519 seed for the signed head. Generated on first start.

use std::sync::Mutex;

use tether_audit::{Anchor, AuditError, HeadAnchor, KeySource};
use tether_vault::{Vault, key_len};
use zeroize::Zeroizing;

/// Vault entry holding the audit HMAC key.
pub const AUDIT_HMAC: &str = "tetherd.audit-hmac";
/// Vault entry holding the audit head signing seed.
pub const AUDIT_SIGNING: &str = "tetherd.audit-signing";

/// [`KeySource`] backed by the vault.
pub struct VaultKeys {
    vault: Vault,
}

impl VaultKeys {
    /// Wraps a vault.
    pub fn new(vault: Vault) -> Self {
        VaultKeys { vault }
    }

    fn key(
        &self,
        name: &str,
        which: &'static str,
        len: usize,
    ) -> Result<Zeroizing<Vec<u8>>, AuditError> {
        let secret =
            self.vault
                .get_or_generate(name, len)
                .map_err(|e| AuditError::KeyUnavailable {
                    which,
                    reason: format!("{e}; the audit key lives in the vault entry {name}"),
                })?;
        Ok(secret.expose(|bytes| Zeroizing::new(bytes.to_vec())))
    }
}

/// The vault entry of epoch `epoch`'s copy of `base` (epoch 0 is `base` itself): epoch entries
/// are made by a rotation and never removed (the reserved `tetherd.` namespace keeps them out of
/// `tether secret`).
pub fn epoch_name(base: &str, epoch: u32) -> String {
    if epoch == 0 {
        base.to_owned()
    } else {
        format!("{base}.e{epoch}")
    }
}

impl VaultKeys {
    fn get(
        &self,
        name: &str,
        which: &'static str,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, AuditError> {
        let found = self
            .vault
            .get(name)
            .map_err(|e| AuditError::KeyUnavailable {
                which,
                reason: format!("{e}; the audit key lives in the vault entry {name}"),
            })?;
        Ok(found.map(|s| s.expose(|b| Zeroizing::new(b.to_vec()))))
    }
}

fn seed32(name: &str, v: &[u8]) -> Result<Zeroizing<[u8; 32]>, AuditError> {
    if v.len() != 32 {
        return Err(AuditError::KeyUnavailable {
            which: "signing",
            reason: format!("vault entry {name} holds {} bytes, expected 32", v.len()),
        });
    }
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(v);
    Ok(out)
}

impl KeySource for VaultKeys {
    fn epoch_keys(&self, epoch: u32) -> Result<Option<tether_audit::EpochKeys>, AuditError> {
        if epoch == 0 {
            return Ok(Some((self.hmac_key()?, self.signing_key()?)));
        }
        let (hn, sn) = (
            epoch_name(AUDIT_HMAC, epoch),
            epoch_name(AUDIT_SIGNING, epoch),
        );
        match (self.get(&hn, "hmac")?, self.get(&sn, "signing")?) {
            (None, None) => Ok(None),
            (Some(h), Some(s)) => Ok(Some((h, seed32(&sn, &s)?))),
            _ => Err(AuditError::KeyUnavailable {
                which: "rotation",
                reason: format!(
                    "the vault holds only one of {hn} and {sn}; restore the other from backup"
                ),
            }),
        }
    }

    fn create_epoch(&self, epoch: u32, hmac: bool, signing: bool) -> Result<(), AuditError> {
        let prev = self.epoch_keys(epoch.saturating_sub(1))?.ok_or_else(|| {
            AuditError::KeyUnavailable {
                which: "rotation",
                reason: format!(
                    "the vault has no audit keys for epoch {}",
                    epoch.saturating_sub(1)
                ),
            }
        })?;
        let fail = |name: &str, e: tether_vault::VaultError| AuditError::KeyUnavailable {
            which: "rotation",
            reason: format!("cannot store the new audit key {name}: {e}"),
        };
        for (base, fresh, old) in [
            (AUDIT_HMAC, hmac, prev.0.to_vec()),
            (AUDIT_SIGNING, signing, prev.1.to_vec()),
        ] {
            let name = epoch_name(base, epoch);
            let old = Zeroizing::new(old);
            // Keys left by an interrupted rotation are kept: no record names them yet.
            if self.get(&name, "rotation")?.is_some() {
                continue;
            }
            if fresh {
                self.vault
                    .get_or_generate(&name, old.len())
                    .map_err(|e| fail(&name, e))?;
            } else {
                let copy = tether_vault::SecretBox::from_slice(&old).map_err(|e| fail(&name, e))?;
                self.vault.set(&name, copy).map_err(|e| fail(&name, e))?;
            }
        }
        Ok(())
    }

    fn hmac_key(&self) -> Result<Zeroizing<Vec<u8>>, AuditError> {
        self.key(AUDIT_HMAC, "hmac", key_len::HMAC_SHA256)
    }

    fn signing_key(&self) -> Result<Zeroizing<[u8; 32]>, AuditError> {
        let seed = self.key(AUDIT_SIGNING, "signing", key_len::ED25519_SEED)?;
        let mut out = Zeroizing::new([0u8; 32]);
        if seed.len() != 32 {
            return Err(AuditError::KeyUnavailable {
                which: "signing",
                reason: format!(
                    "vault entry {AUDIT_SIGNING} holds {} bytes, expected 32",
                    seed.len()
                ),
            });
        }
        out.copy_from_slice(&seed);
        Ok(out)
    }
}

/// Where the audit head counter is kept outside `state_dir` (see [`VaultAnchor`]).
pub const AUDIT_ANCHOR: &str = "tetherd.audit-anchor";

/// [`HeadAnchor`] kept by the vault outside `state_dir`: a keyring entry, or a sealed file
/// beside the file backend's key. Unavailable with the read-only credentials backend or a key
/// left inside `state_dir` (verify then says `unanchored`, and why).
pub struct VaultAnchor {
    vault: Vault,
    /// The highest seq stored by this process, so a raise needs no read first.
    stored: Mutex<Option<u64>>,
}

impl VaultAnchor {
    /// Wraps a vault.
    pub fn new(vault: Vault) -> Self {
        VaultAnchor {
            vault,
            stored: Mutex::new(None),
        }
    }

    fn unavailable(e: impl std::fmt::Display) -> AuditError {
        AuditError::AnchorUnavailable {
            reason: e.to_string(),
        }
    }
}

impl HeadAnchor for VaultAnchor {
    fn location(&self) -> String {
        self.vault
            .outside_location(AUDIT_ANCHOR)
            .unwrap_or_else(|why| format!("nowhere: {why}"))
    }

    fn load(&self) -> Result<Option<Anchor>, AuditError> {
        let Some(value) = self
            .vault
            .outside_get(AUDIT_ANCHOR)
            .map_err(Self::unavailable)?
        else {
            return Ok(None);
        };
        let location = self.location();
        value.expose(|b| Anchor::parse(b, &location)).map(Some)
    }

    fn store(&self, anchor: &Anchor) -> Result<(), AuditError> {
        let mut stored = self.stored.lock().unwrap_or_else(|p| p.into_inner());
        let current = match *stored {
            Some(seq) => Some(seq),
            None => self.load()?.map(|a| a.seq),
        };
        if current.is_some_and(|seq| seq >= anchor.seq) {
            *stored = current;
            return Ok(());
        }
        let value =
            tether_vault::SecretBox::from_slice(&anchor.to_bytes()).map_err(Self::unavailable)?;
        self.vault
            .outside_set(AUDIT_ANCHOR, &value)
            .map_err(Self::unavailable)?;
        *stored = Some(anchor.seq);
        Ok(())
    }
}
