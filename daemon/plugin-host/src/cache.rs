//! The compiled-artifact cache: precompiled components are native code, so a cache entry is
//! loaded only when it carries a valid MAC made with a key the daemon keeps in its vault.
//!
//! Entry layout: `MAGIC (8) ‖ HMAC-SHA256 (32) ‖ artifact`, where the MAC covers a domain
//! separator, the SHA-256 of the *verified* component, the engine's compatibility hash and the
//! artifact. The whole file is read into memory and checked before wasmtime sees a byte, so a
//! file written or swapped in the cache directory (or changed after the check) never runs: a
//! missing, foreign, truncated or tampered entry is recompiled from the signed component and
//! rewritten. Without a key nothing is read from or written to the cache.

use std::io::Read as _;
use std::path::Path;

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;
use zeroize::Zeroizing;

/// Where the key that authenticates cache entries comes from (the daemon passes a vault key).
///
/// Implementations must never log or `Debug`-print the key.
pub trait CacheKey: Send + Sync {
    /// The MAC key (32 bytes or more), or `None` when it is unavailable: the host then compiles
    /// every component in memory and neither reads nor writes the cache.
    fn cache_key(&self) -> Option<Zeroizing<Vec<u8>>>;
}

/// A [`CacheKey`] with no key: the cache is never used.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoCacheKey;

impl CacheKey for NoCacheKey {
    fn cache_key(&self) -> Option<Zeroizing<Vec<u8>>> {
        None
    }
}

const MAGIC: &[u8; 8] = b"TCWASM01";
const DOMAIN: &[u8] = b"tether plugin-cache v1\0";
const MAC_LEN: usize = 32;
/// Largest cache entry read back (a compiled component is a few MiB; more is not ours).
pub(crate) const MAX_ENTRY: u64 = 256 * 1024 * 1024;

fn mac(
    key: &[u8],
    component_sha256: &[u8; 32],
    compat: &[u8],
    artifact: &[u8],
) -> Option<Hmac<Sha256>> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).ok()?;
    m.update(DOMAIN);
    m.update(component_sha256);
    m.update(&(compat.len() as u64).to_be_bytes());
    m.update(compat);
    m.update(artifact);
    Some(m)
}

/// The bytes of a cache entry for `artifact`. `None` if the key is unusable (shorter than 32 bytes).
pub(crate) fn seal(
    key: &[u8],
    component_sha256: &[u8; 32],
    compat: &[u8],
    artifact: &[u8],
) -> Option<Vec<u8>> {
    if key.len() < 32 {
        return None;
    }
    let tag = mac(key, component_sha256, compat, artifact)?
        .finalize()
        .into_bytes();
    let mut out = Vec::with_capacity(MAGIC.len() + MAC_LEN + artifact.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&tag);
    out.extend_from_slice(artifact);
    Some(out)
}

/// Why a cache entry is not used.
#[derive(Debug)]
pub(crate) enum Unusable {
    Missing,
    Io(std::io::Error),
    TooLarge,
    Format,
    BadMac,
}

impl std::fmt::Display for Unusable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unusable::Missing => f.write_str("not cached"),
            Unusable::Io(e) => write!(f, "unreadable: {e}"),
            Unusable::TooLarge => write!(f, "larger than {MAX_ENTRY} bytes"),
            Unusable::Format => f.write_str("not a tether cache entry"),
            Unusable::BadMac => f.write_str(
                "MAC does not verify (written by someone else, or for another component)",
            ),
        }
    }
}

/// Reads `file` and returns its artifact only if the MAC verifies (constant-time).
pub(crate) fn open(
    file: &Path,
    key: &[u8],
    component_sha256: &[u8; 32],
    compat: &[u8],
) -> Result<Vec<u8>, Unusable> {
    if key.len() < 32 {
        return Err(Unusable::BadMac);
    }
    // Never follow a symlink planted in the cache directory, never block on a FIFO.
    let mut f = {
        use nix::fcntl::OFlag;
        use std::os::unix::fs::OpenOptionsExt as _;
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK).bits())
            .open(file)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Unusable::Missing),
            Err(e) => return Err(Unusable::Io(e)),
        }
    };
    let meta = f.metadata().map_err(Unusable::Io)?;
    if !meta.is_file() {
        return Err(Unusable::Format);
    }
    if meta.len() > MAX_ENTRY {
        return Err(Unusable::TooLarge);
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    (&mut f)
        .take(MAX_ENTRY + 1)
        .read_to_end(&mut bytes)
        .map_err(Unusable::Io)?;
    if bytes.len() as u64 > MAX_ENTRY {
        return Err(Unusable::TooLarge);
    }
    if bytes.len() < MAGIC.len() + MAC_LEN || &bytes[..MAGIC.len()] != MAGIC {
        return Err(Unusable::Format);
    }
    let (tag, artifact) = bytes[MAGIC.len()..].split_at(MAC_LEN);
    let ok = mac(key, component_sha256, compat, artifact)
        .map(|m| m.verify_slice(tag).is_ok())
        .unwrap_or(false);
    if !ok {
        return Err(Unusable::BadMac);
    }
    Ok(bytes.split_off(MAGIC.len() + MAC_LEN))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_roundtrip_and_every_tamper_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x.cwasm");
        let key = [7u8; 32];
        let sha = [1u8; 32];
        let entry = seal(&key, &sha, b"compat", b"native code").unwrap();
        std::fs::write(&f, &entry).unwrap();
        assert_eq!(open(&f, &key, &sha, b"compat").unwrap(), b"native code");
        // another key, another component, another engine
        assert!(matches!(
            open(&f, &[8u8; 32], &sha, b"compat"),
            Err(Unusable::BadMac)
        ));
        assert!(matches!(
            open(&f, &key, &[2u8; 32], b"compat"),
            Err(Unusable::BadMac)
        ));
        assert!(matches!(
            open(&f, &key, &sha, b"other"),
            Err(Unusable::BadMac)
        ));
        // every single-byte flip
        for i in 0..entry.len() {
            let mut t = entry.clone();
            t[i] ^= 0x40;
            std::fs::write(&f, &t).unwrap();
            assert!(open(&f, &key, &sha, b"compat").is_err(), "flip at {i}");
        }
        // truncated, raw artifact without a header, a symlink
        std::fs::write(&f, &entry[..entry.len() - 1]).unwrap();
        assert!(open(&f, &key, &sha, b"compat").is_err());
        std::fs::write(&f, b"native code").unwrap();
        assert!(matches!(
            open(&f, &key, &sha, b"compat"),
            Err(Unusable::Format)
        ));
        let real = dir.path().join("real");
        std::fs::write(&real, &entry).unwrap();
        std::fs::remove_file(&f).unwrap();
        std::os::unix::fs::symlink(&real, &f).unwrap();
        assert!(matches!(
            open(&f, &key, &sha, b"compat"),
            Err(Unusable::Io(_))
        ));
        // a short key is never used
        assert!(seal(&[1u8; 16], &sha, b"compat", b"x").is_none());
    }
}
