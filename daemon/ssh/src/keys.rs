//! Keys: Ed25519 seeds from the vault become russh keys; pinned OpenSSH lines are parsed.

use russh::keys::HashAlg;
use russh::keys::ssh_key::private::Ed25519Keypair;
pub use russh::keys::{PrivateKey, PublicKey};
use zeroize::Zeroize;

use crate::SshError;

/// The private key of a 32-byte Ed25519 seed (the vault's `tetherd.ssh-ed25519`).
pub fn from_seed(seed: &[u8]) -> Result<PrivateKey, SshError> {
    let mut s: [u8; 32] = seed.try_into().map_err(|_| SshError::InvalidKey {
        what: "SSH key seed".to_owned(),
        reason: format!("{} bytes, expected 32", seed.len()),
    })?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&s));
    s.zeroize();
    Ok(key)
}

/// Parses an OpenSSH public key line (`ssh-ed25519 AAAA… comment`). Only Ed25519 keys are
/// accepted.
pub fn parse_public(line: &str, what: &str) -> Result<PublicKey, SshError> {
    let key = PublicKey::from_openssh(line.trim()).map_err(|e| SshError::InvalidKey {
        what: what.to_owned(),
        reason: e.to_string(),
    })?;
    if key.algorithm() != russh::keys::Algorithm::Ed25519 {
        return Err(SshError::InvalidKey {
            what: what.to_owned(),
            reason: format!(
                "{} keys are not accepted, only ssh-ed25519",
                key.algorithm()
            ),
        });
    }
    Ok(key)
}

/// `SHA256:…` fingerprint of a public key.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Whether two public keys are the same key (comments ignored).
pub fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}
