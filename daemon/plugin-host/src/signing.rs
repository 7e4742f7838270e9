//! Ed25519 signatures over a component's SHA-256 (`tether plugin keygen|sign|verify`).
//!
//! Private key file (mode 0600): `tether-plugin-key v1\n<base64 32-byte seed>\n`.
//! Public key file (`<key>.pub`): the base64 32-byte public key, the form `trusted_keys` uses.
//! Signature file `<component>.sig`:
//! ```text
//! tether-plugin-signature v1
//! key-id: <16 hex: first 8 bytes of SHA-256(public key)>
//! sha256: <64 hex: SHA-256 of the component>
//! signature: <base64 Ed25519 signature over "tether-plugin-sig-v1\0" || sha256 bytes>
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::{Error, Result};

const KEY_HEADER: &str = "tether-plugin-key v1";
const SIG_HEADER: &str = "tether-plugin-signature v1";
const DOMAIN: &[u8] = b"tether-plugin-sig-v1\0";

/// A freshly generated signing key, as written by [`keygen`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    /// The private key file (0600).
    pub private_key: PathBuf,
    /// The public key file (`<private>.pub`).
    pub public_key_file: PathBuf,
    /// The base64 public key, to paste into `trusted_keys`.
    pub public_key: String,
    /// Its key id.
    pub key_id: String,
}

/// Who signed a verified component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// SHA-256 of the component bytes.
    pub sha256: [u8; 32],
    /// Key id of the trusted signer, or `None` when unsigned and `allow_unsigned` let it through.
    pub signer: Option<String>,
}

/// The key id of a public key: first 8 bytes of its SHA-256, hex.
pub fn key_id(public_key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// Parses a base64 Ed25519 public key (as in `trusted_keys`).
pub fn parse_public_key(text: &str) -> Result<[u8; 32]> {
    let bytes = B64.decode(text.trim()).map_err(|e| Error::Key {
        what: "public key".into(),
        message: format!("not base64: {e}"),
    })?;
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| Error::Key {
        what: "public key".into(),
        message: format!("expected 32 bytes, got {}", bytes.len()),
    })?;
    VerifyingKey::from_bytes(&key).map_err(|_| Error::Key {
        what: "public key".into(),
        message: "not a valid Ed25519 point".into(),
    })?;
    Ok(key)
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Generates an Ed25519 key pair: `path` (private, created 0600, refused if it exists) and `path.pub`.
pub fn keygen(path: &Path) -> Result<KeyInfo> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| Error::Key {
        what: path.display().to_string(),
        message: format!("no randomness from the OS: {e}"),
    })?;
    let sk = SigningKey::from_bytes(&seed);
    let public = sk.verifying_key().to_bytes();
    let text = Zeroizing::new(format!("{KEY_HEADER}\n{}\n", B64.encode(seed.as_ref())));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io("private key", path))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io("private key", path))?;
    let pub_path = pub_path(path);
    let public_b64 = B64.encode(public);
    std::fs::write(&pub_path, format!("{public_b64}\n")).map_err(io("public key", &pub_path))?;
    Ok(KeyInfo {
        private_key: path.to_path_buf(),
        public_key_file: pub_path,
        public_key: public_b64,
        key_id: key_id(&public),
    })
}

fn pub_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".pub");
    PathBuf::from(s)
}

/// The signature file of a component: `<path>.sig`.
pub fn sig_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".sig");
    PathBuf::from(s)
}

fn load_signing_key(key: &Path) -> Result<SigningKey> {
    let text = Zeroizing::new(std::fs::read_to_string(key).map_err(io("private key", key))?);
    let bad = |message: &str| Error::Key {
        what: key.display().to_string(),
        message: message.into(),
    };
    let mut lines = text.lines();
    if lines.next() != Some(KEY_HEADER) {
        return Err(bad("not a tether plugin private key (bad header)"));
    }
    let seed = Zeroizing::new(
        B64.decode(lines.next().unwrap_or("").trim())
            .map_err(|_| bad("private key is not base64"))?,
    );
    let seed: &[u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| bad("private key is not 32 bytes"))?;
    Ok(SigningKey::from_bytes(seed))
}

/// Signs `file` with the private key at `key`, writing `<file>.sig`; returns the signature path.
pub fn sign(file: &Path, key: &Path) -> Result<PathBuf> {
    let sk = load_signing_key(key)?;
    let bytes = std::fs::read(file).map_err(io("plugin component", file))?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let sig = sk.sign(&message(&digest));
    let text = format!(
        "{SIG_HEADER}\nkey-id: {}\nsha256: {}\nsignature: {}\n",
        key_id(&sk.verifying_key().to_bytes()),
        hex::encode(digest),
        B64.encode(sig.to_bytes())
    );
    let out = sig_path(file);
    std::fs::write(&out, text).map_err(io("signature", &out))?;
    Ok(out)
}

fn message(digest: &[u8; 32]) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(digest);
    m
}

/// Verifies the component file against `<file>.sig` and the trusted keys.
pub fn verify(file: &Path, trusted_keys: &[[u8; 32]], allow_unsigned: bool) -> Result<Verified> {
    let bytes = std::fs::read(file).map_err(io("plugin component", file))?;
    verify_bytes(file, &bytes, trusted_keys, allow_unsigned)
}

/// Verifies component `bytes` (already read from `file`, so what is checked is what gets compiled).
pub fn verify_bytes(
    file: &Path,
    bytes: &[u8],
    trusted_keys: &[[u8; 32]],
    allow_unsigned: bool,
) -> Result<Verified> {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let sp = sig_path(file);
    let text = match std::fs::read_to_string(&sp) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if allow_unsigned {
                Ok(Verified {
                    sha256: digest,
                    signer: None,
                })
            } else {
                Err(Error::Unsigned {
                    path: file.to_path_buf(),
                })
            };
        }
        Err(source) => {
            return Err(Error::Io {
                what: "signature",
                path: sp,
                source,
            });
        }
    };
    let malformed = |message: &str| Error::SignatureMalformed {
        path: sp.clone(),
        message: message.into(),
    };
    let mut lines = text.lines();
    if lines.next() != Some(SIG_HEADER) {
        return Err(malformed("missing header 'tether-plugin-signature v1'"));
    }
    let mut field = |name: &str| -> Result<String> {
        lines
            .next()
            .and_then(|l| l.strip_prefix(name))
            .and_then(|l| l.strip_prefix(": "))
            .map(|v| v.trim().to_string())
            .ok_or_else(|| malformed(&format!("missing line '{name}: ...'")))
    };
    let kid = field("key-id")?;
    let signed_hex = field("sha256")?;
    let sig_b64 = field("signature")?;
    let signed: [u8; 32] = hex::decode(&signed_hex)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| malformed("sha256 is not 64 hex digits"))?;
    let sig_bytes: [u8; 64] = B64
        .decode(&sig_b64)
        .ok()
        .and_then(|v| v.try_into().ok())
        .ok_or_else(|| malformed("signature is not 64 bytes of base64"))?;
    let Some(key) = trusted_keys.iter().find(|k| key_id(k) == kid) else {
        return Err(Error::UntrustedKey {
            path: file.to_path_buf(),
            key_id: kid,
        });
    };
    let vk = VerifyingKey::from_bytes(key).map_err(|_| Error::Key {
        what: format!("trusted key {kid}"),
        message: "not a valid Ed25519 point".into(),
    })?;
    // The signature must cover the digest it names, whatever the file says now...
    vk.verify_strict(&message(&signed), &Signature::from_bytes(&sig_bytes))
        .map_err(|_| Error::BadSignature {
            path: file.to_path_buf(),
            key_id: kid.clone(),
        })?;
    // ...and the file must still be what was signed.
    if signed != digest {
        return Err(Error::Tampered {
            path: file.to_path_buf(),
            signed: signed_hex,
            actual: hex::encode(digest),
        });
    }
    Ok(Verified {
        sha256: digest,
        signer: Some(kid),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn keygen_sign_verify_tamper() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("k");
        let info = keygen(&key).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(keygen(&key).is_err(), "never overwrites a key");
        let trusted = [parse_public_key(&info.public_key).unwrap()];
        let f = d.path().join("p.wasm");
        std::fs::write(&f, b"component bytes").unwrap();
        assert!(matches!(
            verify(&f, &trusted, false),
            Err(Error::Unsigned { .. })
        ));
        assert_eq!(verify(&f, &trusted, true).unwrap().signer, None);
        sign(&f, &key).unwrap();
        assert_eq!(
            verify(&f, &trusted, false).unwrap().signer,
            Some(info.key_id.clone())
        );
        // another key is not trusted
        let other = keygen(&d.path().join("o")).unwrap();
        let other_key = [parse_public_key(&other.public_key).unwrap()];
        assert!(matches!(
            verify(&f, &other_key, false),
            Err(Error::UntrustedKey { .. })
        ));
        // tampered after signing
        std::fs::write(&f, b"component bytez").unwrap();
        let e = verify(&f, &trusted, true).unwrap_err();
        assert!(matches!(e, Error::Tampered { .. }), "{e}");
        // forged: sig file edited to the new digest
        let sig = std::fs::read_to_string(sig_path(&f)).unwrap();
        let new = hex::encode(Sha256::digest(b"component bytez"));
        let forged: String = sig
            .lines()
            .map(|l| {
                if l.starts_with("sha256:") {
                    format!("sha256: {new}\n")
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(sig_path(&f), forged).unwrap();
        assert!(matches!(
            verify(&f, &trusted, false),
            Err(Error::BadSignature { .. })
        ));
        std::fs::write(sig_path(&f), "garbage").unwrap();
        assert!(matches!(
            verify(&f, &trusted, false),
            Err(Error::SignatureMalformed { .. })
        ));
    }
}
