//! The only algorithms either side negotiates: curve25519-sha256 key exchange, Ed25519 host and
//! client keys, chacha20-poly1305@openssh.com or aes256-gcm@openssh.com. No SHA-1, no CBC, no
//! compression, and no MAC besides the AEAD ciphers' own (the MAC list keeps SHA-2 ETM entries
//! only because russh wants a non-empty list; AEAD ciphers never use it).

use std::borrow::Cow;

use russh::keys::Algorithm;
use russh::{Preferred, cipher, compression, kex, mac};

/// Key exchange: curve25519 (RFC 8731 and its libssh.org alias), plus the extension and
/// strict-kex markers (Terrapin mitigation).
pub const KEX_CLIENT: &[kex::Name] = &[
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_CLIENT,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT,
];

/// The server's key exchange list (same algorithms, server-side markers).
pub const KEX_SERVER: &[kex::Name] = &[
    kex::CURVE25519,
    kex::CURVE25519_PRE_RFC_8731,
    kex::EXTENSION_SUPPORT_AS_SERVER,
    kex::EXTENSION_OPENSSH_STRICT_KEX_AS_SERVER,
];

/// Ciphers: AEAD only. AES-256-GCM first: with AES-NI/PCLMUL (every x86-64 server CPU of the last
/// decade) russh's `ring` AES-GCM took 0.14× the CPU of its chacha20-poly1305@openssh.com per byte
/// (`cargo bench -p tether-ssh --bench ciphers`, BENCHMARKS.md); the client's order decides, and
/// ChaCha20 stays allowed for peers that prefer it.
pub const CIPHERS: &[cipher::Name] = &[cipher::AES_256_GCM, cipher::CHACHA20_POLY1305];

/// MACs (unused with AEAD ciphers): SHA-2 encrypt-then-MAC only.
pub const MACS: &[mac::Name] = &[mac::HMAC_SHA256_ETM, mac::HMAC_SHA512_ETM];

/// Host and user key algorithms.
pub const KEYS: &[Algorithm] = &[Algorithm::Ed25519];

/// The [`Preferred`] lists of the hub's client (`server = false`) or the target's server.
pub fn preferred(server: bool) -> Preferred {
    Preferred {
        kex: Cow::Borrowed(if server { KEX_SERVER } else { KEX_CLIENT }),
        key: Cow::Borrowed(KEYS),
        host_key_certificates: Cow::Borrowed(&[]),
        cipher: Cow::Borrowed(CIPHERS),
        mac: Cow::Borrowed(MACS),
        compression: Cow::Borrowed(&[compression::NONE]),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn aes_gcm_is_preferred_and_chacha_still_allowed() {
        for side in [true, false] {
            let p = super::preferred(side);
            assert_eq!(p.cipher.first(), Some(&russh::cipher::AES_256_GCM));
            assert!(p.cipher.contains(&russh::cipher::CHACHA20_POLY1305));
        }
    }

    #[test]
    fn no_sha1_no_cbc() {
        for side in [true, false] {
            let p = super::preferred(side);
            for k in p.kex.iter() {
                let name = k.as_ref();
                assert!(
                    !name.contains("sha1") && !name.starts_with("diffie-hellman"),
                    "{name}"
                );
            }
            for c in p.cipher.iter() {
                assert!(
                    !c.as_ref().contains("cbc") && !c.as_ref().contains("ctr"),
                    "{}",
                    c.as_ref()
                );
            }
            for m in p.mac.iter() {
                assert!(!m.as_ref().contains("sha1"), "{}", m.as_ref());
            }
        }
    }
}
