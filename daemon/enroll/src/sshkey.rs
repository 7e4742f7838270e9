//! OpenSSH public keys as exchanged at enrollment (`ssh-ed25519 AAAA... comment`).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};

use crate::error::{EnrollError, Result};

/// Longest OpenSSH public key line accepted (an RSA-16384 key is about 2.8 KB).
pub const MAX_SSH_KEY_LEN: usize = 8192;

/// Key types accepted (the hardened set of DESIGN §1 plus RSA for `sshd` forward mode).
const KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
];

/// A checked OpenSSH public key: type and decoded wire blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshPublicKey {
    /// Key type, e.g. `ssh-ed25519`.
    pub key_type: String,
    /// The SSH wire-format key blob.
    pub blob: Vec<u8>,
}

impl SshPublicKey {
    /// Parses `TYPE BASE64 [COMMENT]`, checking that the blob names the same type.
    pub fn parse(line: &str) -> Result<SshPublicKey> {
        let bad = |what: &str| EnrollError::Malformed {
            what: format!("SSH public key: {what}"),
        };
        if line.len() > MAX_SSH_KEY_LEN {
            return Err(bad("longer than 8192 bytes"));
        }
        // The line ends up in known_hosts: a newline, CR, tab or any other control character
        // (in the comment too) could add or change entries there.
        if line.chars().any(char::is_control) {
            return Err(bad("contains a control character (newline, tab, ...)"));
        }
        let mut parts = line.split_ascii_whitespace();
        let key_type = parts.next().ok_or_else(|| bad("empty"))?;
        if !KEY_TYPES.contains(&key_type) {
            return Err(bad("unsupported key type"));
        }
        let b64 = parts.next().ok_or_else(|| bad("no key data"))?;
        let blob = STANDARD
            .decode(b64)
            .map_err(|_| bad("key data is not base64"))?;
        // The blob starts with string(type): u32 length + bytes. RSA keys say `ssh-rsa` inside.
        let inner = blob
            .get(..4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .and_then(|n| blob.get(4..4 + n))
            .ok_or_else(|| bad("key data is truncated"))?;
        let expect = if key_type.starts_with("rsa-sha2") {
            "ssh-rsa"
        } else {
            key_type
        };
        if inner != expect.as_bytes() {
            return Err(bad("key data does not match its type"));
        }
        Ok(SshPublicKey {
            key_type: key_type.to_string(),
            blob,
        })
    }

    /// The key as stored and written to `known_hosts`: `TYPE BASE64`, no comment.
    pub fn canonical(&self) -> String {
        format!("{} {}", self.key_type, STANDARD.encode(&self.blob))
    }

    /// The OpenSSH fingerprint, `SHA256:` + unpadded base64 of SHA-256(blob) (as `ssh-keygen -l`).
    pub fn fingerprint(&self) -> String {
        format!(
            "SHA256:{}",
            STANDARD_NO_PAD.encode(crate::util::sha256(&self.blob))
        )
    }
}

/// Fingerprint of an OpenSSH public key line.
pub fn ssh_fingerprint(line: &str) -> Result<String> {
    Ok(SshPublicKey::parse(line)?.fingerprint())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    // `ssh-keygen -t ed25519` output and its `ssh-keygen -lf` fingerprint.
    pub(crate) const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHSiLAhIitvRcOWt6XdNo4ie+uPb05kkFXj8cXyl7xQr test";

    #[test]
    fn parses_and_fingerprints() {
        let k = SshPublicKey::parse(KEY).unwrap();
        assert_eq!(k.key_type, "ssh-ed25519");
        assert_eq!(
            k.fingerprint(),
            "SHA256:5uogOVtLtdcI4q5hO2GWI/x3vTgU4kSGajLSZ7d7w0E"
        );
    }

    #[test]
    fn control_characters_are_refused_anywhere() {
        for evil in [
            format!("{KEY}\nevil.example ssh-ed25519 AAAA"),
            format!("{KEY}\r"),
            format!("{KEY} comment\twith tab"),
            KEY.replacen(' ', "\t", 1),
            format!("{KEY}\u{1b}[2J"),
            format!("{KEY}\u{85}"),
            format!("{KEY}\0"),
        ] {
            assert!(SshPublicKey::parse(&evil).is_err(), "{evil:?}");
        }
        let k = SshPublicKey::parse(KEY).unwrap();
        assert!(!k.canonical().contains("test"));
        assert_eq!(SshPublicKey::parse(&k.canonical()).unwrap(), k);
    }

    #[test]
    fn rejects_mismatch_and_junk() {
        assert!(
            SshPublicKey::parse(
                "ssh-rsa AAAAC3NzaC1lZDI1NTE5AAAAIHSiLAhIitvRcOWt6XdNo4ie+uPb05kkFXj8cXyl7xQr"
            )
            .is_err()
        );
        assert!(SshPublicKey::parse("ssh-ed25519 !!!").is_err());
        assert!(SshPublicKey::parse("ssh-dss AAAA").is_err());
        assert!(SshPublicKey::parse("").is_err());
        assert!(SshPublicKey::parse("ssh-ed25519 AAAA").is_err());
    }
}
