//! X25519 keys with redacted `Debug` and base64 text form (the same as `wg genkey`/`wg pubkey`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use boringtun::x25519;

use crate::TunnelError;

/// A WireGuard private key. Never printed: `Debug` shows only the public half.
#[derive(Clone)]
pub struct SecretKey(x25519::StaticSecret);

impl SecretKey {
    /// Generates a fresh key from the OS random generator.
    pub fn generate() -> Result<Self, TunnelError> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| TunnelError::Random(e.to_string()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// Wraps 32 raw bytes (clamped as X25519 requires).
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        SecretKey(x25519::StaticSecret::from(bytes))
    }

    /// Parses the base64 text form printed by `wg genkey`.
    pub fn from_base64(text: &str) -> Result<Self, TunnelError> {
        Ok(Self::from_bytes(decode32(text)?))
    }

    /// The base64 text form (as `wg genkey` prints it). Handle it as a secret.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.to_bytes())
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.0).to_bytes())
    }

    /// X25519 with `peer_public` (the enrollment's proof of possession). Handle the result as
    /// a secret.
    pub fn diffie_hellman(&self, peer_public: &[u8; 32]) -> [u8; 32] {
        self.0
            .diffie_hellman(&x25519::PublicKey::from(*peer_public))
            .to_bytes()
    }

    pub(crate) fn inner(&self) -> &x25519::StaticSecret {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey(<redacted>, public {})", self.public_key())
    }
}

/// A WireGuard public key (32 bytes), shown as base64.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    /// Parses the base64 text form printed by `wg pubkey`.
    pub fn from_base64(text: &str) -> Result<Self, TunnelError> {
        Ok(PublicKey(decode32(text)?))
    }

    /// The base64 text form.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub(crate) fn to_x25519(self) -> x25519::PublicKey {
        x25519::PublicKey::from(self.0)
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

fn decode32(text: &str) -> Result<[u8; 32], TunnelError> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| TunnelError::BadKey("not valid base64"))?;
    bytes
        .try_into()
        .map_err(|_| TunnelError::BadKey("not 32 bytes"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip_and_debug_redacts() {
        let k = SecretKey::generate().unwrap();
        let k2 = SecretKey::from_base64(&k.to_base64()).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let dbg = format!("{k:?}");
        assert!(!dbg.contains(&k.to_base64()), "secret leaked in Debug");
        assert!(PublicKey::from_base64("AAAA").is_err());
        assert!(SecretKey::from_base64("not base64 !!").is_err());
    }
}
