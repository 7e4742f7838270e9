//! The daemon's long-lived keys, all generated into the vault on first use: the WireGuard key,
//! the SSH key (client key on the hub, host key on a target) and the hub's invite keys (see
//! [`tether_enroll::InviteKeyRing`]).

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use tether_tunnel::SecretKey;
use tether_vault::{Vault, VaultError, key_len};

/// Vault entry of this daemon's WireGuard private key.
pub const WIREGUARD: &str = "tetherd.wireguard";
/// Vault entry of this daemon's SSH key seed (Ed25519).
pub const SSH_KEY: &str = "tetherd.ssh-ed25519";
/// Vault entry of the hub's operator-facing SSH host key seed (Ed25519): the key `tether proxy`
/// clients see, published by `tether ssh-config`. Created on the hub's first start.
pub const OPERATOR_SSH_KEY: &str = "tetherd.operator-ssh-ed25519";

/// Suffix of staged keys: made by `tetherd enroll --force`, promoted only once the hub accepted
/// them, so a failed re-enrollment leaves the working identity alone.
pub const STAGED: &str = ".next";

/// This daemon's WireGuard key.
pub fn wireguard_key(vault: &Vault) -> Result<SecretKey, VaultError> {
    wireguard_key_named(vault, WIREGUARD)
}

/// The WireGuard key as the X25519 secret the relay protocol proves possession of (the hub's
/// enrollment listener on a relay authenticates with it).
pub fn wireguard_static(vault: &Vault) -> Result<x25519_dalek::StaticSecret, VaultError> {
    let secret = vault.get_or_generate(WIREGUARD, key_len::WIREGUARD_PRIVATE)?;
    Ok(secret.expose(|b| {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&b[..32.min(b.len())]);
        let key = x25519_dalek::StaticSecret::from(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        key
    }))
}

/// The WireGuard key stored under `name` (generated if missing).
pub fn wireguard_key_named(vault: &Vault, name: &str) -> Result<SecretKey, VaultError> {
    let secret = vault.get_or_generate(name, key_len::WIREGUARD_PRIVATE)?;
    Ok(secret.expose(|b| {
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(&b[..32.min(b.len())]);
        let key = SecretKey::from_bytes(bytes);
        zeroize::Zeroize::zeroize(&mut bytes);
        key
    }))
}

/// This daemon's SSH public key in OpenSSH format (`ssh-ed25519 AAAA... tetherd@HOST`).
pub fn ssh_public_key(vault: &Vault) -> Result<String, VaultError> {
    ssh_public_key_named(vault, SSH_KEY)
}

/// The SSH public key of the seed stored under `name` (generated if missing).
pub fn ssh_public_key_named(vault: &Vault, name: &str) -> Result<String, VaultError> {
    let seed = vault.get_or_generate(name, key_len::ED25519_SEED)?;
    let public = seed.expose(|b| {
        let mut s = [0u8; 32];
        s.copy_from_slice(&b[..32.min(b.len())]);
        let pk = ed25519_dalek::SigningKey::from_bytes(&s)
            .verifying_key()
            .to_bytes();
        zeroize::Zeroize::zeroize(&mut s);
        pk
    });
    Ok(openssh_ed25519(&public, &format!("tetherd@{}", hostname())))
}

/// Makes the staged key `name + STAGED` the live `name` (after a successful re-enrollment).
pub fn promote_staged(vault: &Vault, name: &str) -> Result<(), VaultError> {
    let staged = format!("{name}{STAGED}");
    if let Some(value) = vault.get(&staged)? {
        vault.set(name, value)?;
        vault.remove(&staged)?;
    }
    Ok(())
}

/// `ssh-ed25519 <base64 of the SSH wire encoding> <comment>`.
pub fn openssh_ed25519(public: &[u8; 32], comment: &str) -> String {
    let mut blob = Vec::with_capacity(51);
    for part in [b"ssh-ed25519".as_slice(), public.as_slice()] {
        blob.extend_from_slice(&(part.len() as u32).to_be_bytes());
        blob.extend_from_slice(part);
    }
    format!("ssh-ed25519 {} {comment}", STANDARD.encode(blob))
}

/// This machine's host name (for enrollment records; informational).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// This machine's WireGuard private key for the enrollment's proof of possession (X25519 with
/// the other side's public key; the key itself never leaves the process).
pub struct WgAgreement(pub tether_tunnel::SecretKey);

impl tether_enroll::WgKeyAgreement for WgAgreement {
    fn agree(&self, peer_public: &[u8; 32]) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        Some(zeroize::Zeroizing::new(self.0.diffie_hellman(peer_public)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn openssh_encoding_parses_back() {
        let line = super::openssh_ed25519(&[7u8; 32], "t@h");
        let parsed = tether_enroll::SshPublicKey::parse(&line).expect("valid OpenSSH key line");
        assert!(parsed.fingerprint().starts_with("SHA256:"));
    }
}
