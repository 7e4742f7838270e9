//! Ed25519 signatures over a WASM plugin component's SHA-256: key generation, signing and
//! verification (`tether plugin keygen|sign|verify`, and the host's load-time check).
//!
//! This crate has no WASM runtime in it, so the `tether` CLI can sign and verify without linking
//! wasmtime; `tether-plugin-host` re-exports it as `tether_plugin_host::signing`.
//!
//! Private key file (mode 0600): `tether-plugin-key v1\n<base64 32-byte seed>\n`.
//! Public key file (`<key>.pub`): the base64 32-byte public key, the form `trusted_keys` uses.
//! Signature file (`<component>.sig` by default):
//! ```text
//! tether-plugin-signature v1
//! key-id: <16 hex: first 8 bytes of SHA-256(public key)>
//! sha256: <64 hex: SHA-256 of the component>
//! signature: <base64 Ed25519 signature over "tether-plugin-sig-v1\0" || sha256 bytes>
//! public-key: <base64 32-byte public key of the signer>
//! ```
//! The `public-key` line is optional (older signatures lack it; readers ignore lines after
//! `signature`). It lets [`Trust::AnySigner`] check a signature without knowing the key in
//! advance; trust never comes from it: with [`Trust::Keys`] only the listed keys count.
#![forbid(unsafe_code)]

mod error;

use std::io::Write;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use error::{Result, SignError};

const KEY_HEADER: &str = "tether-plugin-key v1";
const SIG_HEADER: &str = "tether-plugin-signature v1";
const DOMAIN: &[u8] = b"tether-plugin-sig-v1\0";

/// A freshly generated signing key, as written by [`keygen`]. Holds no private key material.
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

/// What [`sign`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// The signature file.
    pub signature_file: PathBuf,
    /// SHA-256 of the component bytes that were signed.
    pub sha256: [u8; 32],
    /// Key id of the signing key.
    pub key_id: String,
}

/// Who signed a verified component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// SHA-256 of the component bytes.
    pub sha256: [u8; 32],
    /// Key id of the signer, or `None` when unsigned and `allow_unsigned` let it through.
    pub signer: Option<String>,
}

/// Which signers [`verify_signature`] accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust<'a> {
    /// Only these Ed25519 public keys (an empty list trusts nobody).
    Keys(&'a [[u8; 32]]),
    /// Whoever signed, checked with the public key the signature file carries: proves the
    /// component is intact and names its signer, but not that the signer is trusted.
    AnySigner,
}

/// Whether [`keygen_with`] may replace existing key files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Refuse with [`SignError::KeyExists`] if the private key or its `.pub` exists.
    Refuse,
    /// Replace them atomically (the old key is gone afterwards).
    Replace,
}

/// SHA-256 of component bytes (what a signature covers).
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The key id of a public key: first 8 bytes of its SHA-256, hex.
pub fn key_id(public_key: &[u8; 32]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// Parses a base64 Ed25519 public key (as in `trusted_keys`).
pub fn parse_public_key(text: &str) -> Result<[u8; 32]> {
    let bad = |message: String| SignError::Key {
        what: "public key".into(),
        message,
    };
    let bytes = B64
        .decode(text.trim())
        .map_err(|e| bad(format!("not base64: {e}")))?;
    let key: [u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| bad(format!("expected 32 bytes, got {}", bytes.len())))?;
    VerifyingKey::from_bytes(&key).map_err(|_| bad("not a valid Ed25519 point".into()))?;
    Ok(key)
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SignError + 'a {
    move |source| SignError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// `path` + `suffix` (`key` → `key.pub`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The public key file of a private key: `<path>.pub`.
pub fn public_key_path(private_key: &Path) -> PathBuf {
    with_suffix(private_key, ".pub")
}

/// The default signature file of a component: `<path>.sig`.
pub fn sig_path(path: &Path) -> PathBuf {
    with_suffix(path, ".sig")
}

/// Writes `bytes` to `path` atomically and durably with `mode` (see [`tether_durable`]).
fn write_atomic(what: &'static str, path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    tether_durable::write_atomic(path, bytes, mode).map_err(|e| SignError::Io {
        what,
        path: e.path,
        source: e.source,
    })
}

/// Generates an Ed25519 key pair: `path` (private, created 0600, refused if it exists) and
/// `path.pub` (refused if it exists).
pub fn keygen(path: &Path) -> Result<KeyInfo> {
    keygen_with(path, Overwrite::Refuse)
}

/// Like [`keygen`], replacing existing key files when `overwrite` is [`Overwrite::Replace`].
pub fn keygen_with(path: &Path, overwrite: Overwrite) -> Result<KeyInfo> {
    use std::os::unix::fs::OpenOptionsExt;
    let pub_path = public_key_path(path);
    if overwrite == Overwrite::Refuse {
        for p in [path, pub_path.as_path()] {
            if p.symlink_metadata().is_ok() {
                return Err(SignError::KeyExists {
                    path: p.to_path_buf(),
                });
            }
        }
    }
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| SignError::Key {
        what: format!("private key {}", path.display()),
        message: format!("no randomness from the OS: {e}"),
    })?;
    let sk = SigningKey::from_bytes(&seed);
    let public = sk.verifying_key().to_bytes();
    let text = Zeroizing::new(format!("{KEY_HEADER}\n{}\n", B64.encode(seed.as_ref())));
    let public_b64 = B64.encode(public);
    match overwrite {
        Overwrite::Replace => {
            write_atomic("private key", path, text.as_bytes(), 0o600)?;
            write_atomic(
                "public key",
                &pub_path,
                format!("{public_b64}\n").as_bytes(),
                0o644,
            )?;
        }
        Overwrite::Refuse => {
            let create = |p: &Path, mode: u32| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(p)
                    .map_err(|e| match e.kind() {
                        std::io::ErrorKind::AlreadyExists => SignError::KeyExists {
                            path: p.to_path_buf(),
                        },
                        _ => SignError::Io {
                            what: "key file",
                            path: p.to_path_buf(),
                            source: e,
                        },
                    })
            };
            let mut f = create(path, 0o600)?;
            f.write_all(text.as_bytes())
                .and_then(|()| f.sync_all())
                .map_err(io("private key", path))?;
            let written = create(&pub_path, 0o644).and_then(|mut f| {
                f.write_all(format!("{public_b64}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io("public key", &pub_path))
            });
            if let Err(e) = written {
                // Leave no private key behind whose public half nobody has.
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        }
    }
    Ok(KeyInfo {
        private_key: path.to_path_buf(),
        public_key_file: pub_path,
        public_key: public_b64,
        key_id: key_id(&public),
    })
}

fn load_signing_key(key: &Path) -> Result<SigningKey> {
    let text = Zeroizing::new(std::fs::read_to_string(key).map_err(io("private key", key))?);
    let bad = |message: &str| SignError::Key {
        what: format!("private key {}", key.display()),
        message: message.into(),
    };
    let mut lines = text.lines();
    if lines.next() != Some(KEY_HEADER) {
        return Err(bad(
            "not a tether plugin private key (bad header; create one with `tether plugin keygen`)",
        ));
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

/// Signs `file` with the private key at `key`, writing `<file>.sig`.
pub fn sign(file: &Path, key: &Path) -> Result<Signed> {
    sign_to(file, key, &sig_path(file))
}

/// Signs `file` with the private key at `key`, writing the signature to `out` (replacing it).
pub fn sign_to(file: &Path, key: &Path, out: &Path) -> Result<Signed> {
    let sk = load_signing_key(key)?;
    let bytes = std::fs::read(file).map_err(io("plugin component", file))?;
    let digest: [u8; 32] = Sha256::digest(&bytes).into();
    let sig = sk.sign(&message(&digest));
    let public = sk.verifying_key().to_bytes();
    let kid = key_id(&public);
    let text = format!(
        "{SIG_HEADER}\nkey-id: {kid}\nsha256: {}\nsignature: {}\npublic-key: {}\n",
        hex::encode(digest),
        B64.encode(sig.to_bytes()),
        B64.encode(public),
    );
    write_atomic("signature", out, text.as_bytes(), 0o644)?;
    Ok(Signed {
        signature_file: out.to_path_buf(),
        sha256: digest,
        key_id: kid,
    })
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

/// Verifies component `bytes` (already read from `file`, so what is checked is what gets compiled)
/// against `<file>.sig` and the trusted keys. Without a `.sig`, `allow_unsigned` decides.
pub fn verify_bytes(
    file: &Path,
    bytes: &[u8],
    trusted_keys: &[[u8; 32]],
    allow_unsigned: bool,
) -> Result<Verified> {
    match verify_signature(file, bytes, &sig_path(file), Trust::Keys(trusted_keys)) {
        Err(SignError::Unsigned { .. }) if allow_unsigned => Ok(Verified {
            sha256: Sha256::digest(bytes).into(),
            signer: None,
        }),
        other => other,
    }
}

/// Verifies component `bytes` (read from `file`) against the signature file `sig`, accepting the
/// signers `trust` names. A missing `sig` is [`SignError::Unsigned`].
///
/// Checks, in order: the signature file parses; its signer is trusted; the signature is valid
/// for the digest it names; the component still has that digest.
pub fn verify_signature(file: &Path, bytes: &[u8], sig: &Path, trust: Trust) -> Result<Verified> {
    let digest: [u8; 32] = Sha256::digest(bytes).into();
    let text = match std::fs::read_to_string(sig) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SignError::Unsigned {
                path: file.to_path_buf(),
                sig: sig.to_path_buf(),
            });
        }
        Err(source) => {
            return Err(SignError::Io {
                what: "signature",
                path: sig.to_path_buf(),
                source,
            });
        }
    };
    let parsed = SigFile::parse(&text, sig)?;
    let kid = parsed.key_id;
    let key: [u8; 32] = match trust {
        Trust::Keys(keys) => match keys.iter().find(|k| key_id(k) == kid) {
            Some(k) => *k,
            None => {
                return Err(SignError::UntrustedKey {
                    path: file.to_path_buf(),
                    key_id: kid,
                });
            }
        },
        Trust::AnySigner => match parsed.public_key {
            Some(k) if key_id(&k) == kid => k,
            Some(_) => {
                return Err(SignError::SignatureMalformed {
                    path: sig.to_path_buf(),
                    message: format!("public-key does not match key-id {kid}"),
                });
            }
            None => {
                return Err(SignError::NoPublicKey {
                    path: sig.to_path_buf(),
                    key_id: kid,
                });
            }
        },
    };
    let vk = VerifyingKey::from_bytes(&key).map_err(|_| SignError::Key {
        what: format!("trusted key {kid}"),
        message: "not a valid Ed25519 point".into(),
    })?;
    // The signature must cover the digest it names, whatever the file says now...
    vk.verify_strict(&message(&parsed.sha256), &parsed.signature)
        .map_err(|_| SignError::BadSignature {
            path: file.to_path_buf(),
            key_id: kid.clone(),
        })?;
    // ...and the file must still be what was signed.
    if parsed.sha256 != digest {
        return Err(SignError::Tampered {
            path: file.to_path_buf(),
            signed: hex::encode(parsed.sha256),
            actual: hex::encode(digest),
        });
    }
    Ok(Verified {
        sha256: digest,
        signer: Some(kid),
    })
}

/// A parsed signature file.
struct SigFile {
    key_id: String,
    sha256: [u8; 32],
    signature: Signature,
    public_key: Option<[u8; 32]>,
}

impl SigFile {
    /// Parses the text of the signature file `sig`; a format fault is
    /// [`SignError::SignatureMalformed`] naming `sig` and what is wrong.
    fn parse(text: &str, sig: &Path) -> Result<SigFile> {
        let malformed = |message: String| SignError::SignatureMalformed {
            path: sig.to_path_buf(),
            message,
        };
        let mut lines = text.lines();
        if lines.next() != Some(SIG_HEADER) {
            return Err(malformed(format!("missing header '{SIG_HEADER}'")));
        }
        let mut field = |name: &str| -> Result<String> {
            lines
                .next()
                .and_then(|l| l.strip_prefix(name))
                .and_then(|l| l.strip_prefix(": "))
                .map(|v| v.trim().to_string())
                .ok_or_else(|| malformed(format!("missing line '{name}: ...'")))
        };
        let key_id = field("key-id")?;
        let sha256 = hex::decode(field("sha256")?)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| malformed("sha256 is not 64 hex digits".into()))?;
        let signature: [u8; 64] = B64
            .decode(field("signature")?)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| malformed("signature is not 64 bytes of base64".into()))?;
        let public_key = match field("public-key") {
            Err(_) => None,
            Ok(k) => Some(parse_public_key(&k).map_err(|e| malformed(format!("public-key: {e}")))?),
        };
        Ok(SigFile {
            key_id,
            sha256,
            signature: Signature::from_bytes(&signature),
            public_key,
        })
    }
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
        assert!(
            matches!(keygen(&key), Err(SignError::KeyExists { .. })),
            "never overwrites a key"
        );
        let trusted = [parse_public_key(&info.public_key).unwrap()];
        let f = d.path().join("p.wasm");
        std::fs::write(&f, b"component bytes").unwrap();
        assert!(matches!(
            verify(&f, &trusted, false),
            Err(SignError::Unsigned { .. })
        ));
        assert_eq!(verify(&f, &trusted, true).unwrap().signer, None);
        let signed = sign(&f, &key).unwrap();
        assert_eq!(signed.key_id, info.key_id);
        assert_eq!(signed.signature_file, sig_path(&f));
        assert_eq!(
            verify(&f, &trusted, false).unwrap().signer,
            Some(info.key_id.clone())
        );
        // another key is not trusted
        let other = keygen(&d.path().join("o")).unwrap();
        let other_key = [parse_public_key(&other.public_key).unwrap()];
        assert!(matches!(
            verify(&f, &other_key, false),
            Err(SignError::UntrustedKey { .. })
        ));
        // tampered after signing
        std::fs::write(&f, b"component bytez").unwrap();
        let e = verify(&f, &trusted, true).unwrap_err();
        assert!(matches!(e, SignError::Tampered { .. }), "{e}");
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
            Err(SignError::BadSignature { .. })
        ));
        std::fs::write(sig_path(&f), "garbage").unwrap();
        assert!(matches!(
            verify(&f, &trusted, false),
            Err(SignError::SignatureMalformed { .. })
        ));
    }

    #[test]
    fn any_signer_checks_the_embedded_key_and_trust_never_comes_from_it() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("k");
        let info = keygen(&key).unwrap();
        let f = d.path().join("p.wasm");
        std::fs::write(&f, b"component").unwrap();
        let out = d.path().join("elsewhere.sig");
        sign_to(&f, &key, &out).unwrap();
        let bytes = std::fs::read(&f).unwrap();
        let v = verify_signature(&f, &bytes, &out, Trust::AnySigner).unwrap();
        assert_eq!(v.signer.as_deref(), Some(info.key_id.as_str()));
        // the embedded key does not make a signer trusted
        let e = verify_signature(&f, &bytes, &out, Trust::Keys(&[])).unwrap_err();
        assert!(matches!(e, SignError::UntrustedKey { .. }), "{e}");
        // tampering is found without trusted keys too
        let e = verify_signature(&f, b"componenT", &out, Trust::AnySigner).unwrap_err();
        assert!(matches!(e, SignError::Tampered { .. }), "{e}");
        assert!(e.is_verification_failure());
        // a swapped embedded key (not matching key-id) is malformed
        let other = keygen(&d.path().join("o")).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        let (head, _) = text.split_once("public-key: ").unwrap();
        std::fs::write(&out, format!("{head}public-key: {}\n", other.public_key)).unwrap();
        let e = verify_signature(&f, &bytes, &out, Trust::AnySigner).unwrap_err();
        assert!(matches!(e, SignError::SignatureMalformed { .. }), "{e}");
        // an old-style signature (no public-key line) still verifies against trusted keys
        std::fs::write(&out, head).unwrap();
        let trusted = [parse_public_key(&info.public_key).unwrap()];
        assert!(verify_signature(&f, &bytes, &out, Trust::Keys(&trusted)).is_ok());
        let e = verify_signature(&f, &bytes, &out, Trust::AnySigner).unwrap_err();
        assert!(matches!(e, SignError::NoPublicKey { .. }), "{e}");
        // missing signature file
        let e =
            verify_signature(&f, &bytes, &d.path().join("none.sig"), Trust::AnySigner).unwrap_err();
        assert!(matches!(e, SignError::Unsigned { .. }), "{e}");
    }

    #[test]
    fn replace_swaps_both_key_files_and_keeps_0600() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("k");
        let first = keygen(&key).unwrap();
        // a stray .pub alone also blocks a plain keygen
        let lone = d.path().join("lone");
        std::fs::write(public_key_path(&lone), "x").unwrap();
        assert!(matches!(keygen(&lone), Err(SignError::KeyExists { .. })));
        assert!(!lone.exists());
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let second = keygen_with(&key, Overwrite::Replace).unwrap();
        assert_ne!(first.key_id, second.key_id);
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let on_disk = std::fs::read_to_string(public_key_path(&key)).unwrap();
        assert_eq!(on_disk.trim(), second.public_key);
        let f = d.path().join("p.wasm");
        std::fs::write(&f, b"c").unwrap();
        assert_eq!(sign(&f, &key).unwrap().key_id, second.key_id);
    }

    #[test]
    fn key_info_and_errors_never_show_the_private_key() {
        let d = tempfile::tempdir().unwrap();
        let key = d.path().join("k");
        let info = keygen(&key).unwrap();
        let text = std::fs::read_to_string(&key).unwrap();
        let seed = text.lines().nth(1).unwrap();
        assert!(!format!("{info:?}").contains(seed));
        let f = d.path().join("p.wasm");
        std::fs::write(&f, b"c").unwrap();
        let signed = sign(&f, &key).unwrap();
        assert!(!format!("{signed:?}").contains(seed));
        assert!(
            !std::fs::read_to_string(sig_path(&f))
                .unwrap()
                .contains(seed)
        );
        // a key file with a broken seed: the message names the file, not its content
        std::fs::write(&key, format!("{KEY_HEADER}\n{seed}AAAA\n")).unwrap();
        let e = sign(&f, &key).unwrap_err();
        assert!(!e.to_string().contains(seed) && !format!("{e:?}").contains(seed));
    }
}

/// Fuzz harness for `.sig` files (they sit next to components anyone with write access to the
/// plugin directory may replace). `TETHER_FUZZ_CASES` sets the number of cases.
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn cases() -> u32 {
        std::env::var("TETHER_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(256)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(cases()))]

        #[test]
        fn fuzz_sig_file(text in "(.|\n){0,600}", key in any::<[u8; 32]>()) {
            let _ = SigFile::parse(&text, Path::new("fuzz.wasm.sig"));
            let d = tempfile::tempdir().unwrap();
            let sig = d.path().join("c.wasm.sig");
            std::fs::write(&sig, text.as_bytes()).unwrap();
            let keys = [key];
            let r = verify_signature(Path::new("c.wasm"), b"component", &sig, Trust::Keys(&keys));
            prop_assert!(r.is_err(), "random text never verifies");
        }

        #[test]
        fn fuzz_public_key(text in ".{0,200}") {
            let _ = parse_public_key(&text);
        }
    }
}
