//! The audit chain's keys, kept in the vault (never beside the log): an HMAC key for record
//! MACs and an Ed25519 seed for the signed head. Generated on first start.

use tether_audit::{AuditError, KeySource};
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

impl KeySource for VaultKeys {
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
