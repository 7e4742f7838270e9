//! Where the HMAC and signing keys come from.

use std::io::Write as _;
use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use ed25519_dalek::{SigningKey, VerifyingKey};
use hmac::{Hmac, KeyInit as _};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::error::{AuditError, Result};

/// A source of the audit keys. The `0600` [`KeyFile`] implements it today; the vault will too.
///
/// Implementations must never log or `Debug`-print key material.
pub trait KeySource: Send + Sync {
    /// The HMAC-SHA256 key for record MACs (32 bytes or more).
    fn hmac_key(&self) -> Result<Zeroizing<Vec<u8>>>;
    /// The Ed25519 signing key seed for head checkpoints.
    fn signing_key(&self) -> Result<Zeroizing<[u8; 32]>>;
    /// The Ed25519 public key that verifies head checkpoints.
    fn verifying_key(&self) -> Result<[u8; 32]> {
        let seed = self.signing_key()?;
        Ok(SigningKey::from_bytes(&seed).verifying_key().to_bytes())
    }

    /// The (HMAC key, signing seed) of key epoch `epoch`, or `None` when that epoch has no keys.
    /// Epoch 0 is [`KeySource::hmac_key`] and [`KeySource::signing_key`]; later epochs are made
    /// by [`KeySource::create_epoch`] and must be kept for good (old records verify with them).
    fn epoch_keys(&self, epoch: u32) -> Result<Option<EpochKeys>> {
        if epoch == 0 {
            Ok(Some((self.hmac_key()?, self.signing_key()?)))
        } else {
            Ok(None)
        }
    }

    /// Makes the keys of `epoch` (one more than the log's current epoch): a fresh HMAC key if
    /// `hmac`, else a copy of epoch `epoch - 1`'s; likewise the signing seed. Keys an
    /// interrupted rotation left for `epoch` are kept as they are. The default cannot rotate.
    fn create_epoch(&self, epoch: u32, hmac: bool, signing: bool) -> Result<()> {
        let _ = (epoch, hmac, signing);
        Err(AuditError::KeyUnavailable {
            which: "rotation",
            reason: "this key source cannot make new key epochs; keep the keys in the vault".into(),
        })
    }
}

/// One epoch's (HMAC key, Ed25519 seed).
pub type EpochKeys = (Zeroizing<Vec<u8>>, Zeroizing<[u8; 32]>);

/// The most key epochs a log may have (a bound for loops over them).
pub(crate) const MAX_EPOCHS: u32 = 100_000;

/// The public id of an HMAC key: SHA-256 over a domain tag and the key (the key cannot be
/// recovered from it). A `key.rotated` record names the new key by it.
pub(crate) fn hmac_key_id(key: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    let mut h = Sha256::new();
    h.update(b"tether-audit-hmac-key-id-v1\n");
    h.update(key);
    h.finalize().into()
}

/// Every epoch's keys, loaded once: epoch `i` at index `i`.
#[derive(Clone, Debug)]
pub(crate) struct KeyRing {
    epochs: Vec<ChainKeys>,
}

impl KeyRing {
    /// Loads epoch 0 and every later epoch the source has, in order, stopping at the first gap.
    pub fn load(src: &dyn KeySource) -> Result<KeyRing> {
        let mut epochs = vec![ChainKeys::load(src)?];
        for e in 1..MAX_EPOCHS {
            match src.epoch_keys(e)? {
                Some(material) => epochs.push(ChainKeys::from_material(&material)?),
                None => break,
            }
        }
        Ok(KeyRing { epochs })
    }

    /// The keys of `epoch`, if the source has them.
    pub fn get(&self, epoch: u32) -> Option<&ChainKeys> {
        self.epochs.get(epoch as usize)
    }

    /// Every epoch's head-verifying key.
    pub fn verifying_keys(&self) -> Vec<[u8; 32]> {
        self.epochs.iter().map(|k| k.verifying.to_bytes()).collect()
    }
}

/// Keys loaded for use: a pre-keyed HMAC state and the Ed25519 pair. Debug shows nothing secret.
#[derive(Clone)]
pub(crate) struct ChainKeys {
    pub hmac: Hmac<Sha256>,
    /// [`hmac_key_id`] of the HMAC key.
    pub hmac_id: [u8; 32],
    pub signing: SigningKey,
    pub verifying: VerifyingKey,
}

impl std::fmt::Debug for ChainKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainKeys")
            .field("verifying", &hex::encode(self.verifying.to_bytes()))
            .finish_non_exhaustive()
    }
}

impl ChainKeys {
    pub fn load(src: &dyn KeySource) -> Result<ChainKeys> {
        Self::from_material(&(src.hmac_key()?, src.signing_key()?))
    }

    pub fn from_material(material: &EpochKeys) -> Result<ChainKeys> {
        let key = &material.0;
        if key.len() < 32 {
            return Err(AuditError::KeyUnavailable {
                which: "hmac",
                reason: format!(
                    "the key source returned {} bytes; at least 32 are required",
                    key.len()
                ),
            });
        }
        let hmac = Hmac::<Sha256>::new_from_slice(key).map_err(|_| AuditError::KeyUnavailable {
            which: "hmac",
            reason: "the key was rejected by HMAC-SHA256".into(),
        })?;
        let signing = SigningKey::from_bytes(&material.1);
        let verifying = signing.verifying_key();
        Ok(ChainKeys {
            hmac,
            hmac_id: hmac_key_id(key),
            signing,
            verifying,
        })
    }
}

/// (hmac key, ed25519 seed)
type KeyPair = (Zeroizing<[u8; 32]>, Zeroizing<[u8; 32]>);

/// Keys in a `0600` file outside the audit directory, generated on first use.
///
/// Format (text): a comment line, `hmac=<64 hex>`, `ed25519=<64 hex seed>`.
/// The file is re-read (and its mode re-checked) on every call.
#[derive(Debug, Clone)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    /// Opens the key file at `path`, creating it with fresh random keys (mode 0600, `O_EXCL`) if
    /// it does not exist. Refuses a path inside `audit_dir` and a file with a mode looser than 0600.
    pub fn open_or_create(path: impl Into<PathBuf>, audit_dir: &Path) -> Result<KeyFile> {
        let path = path.into();
        let abs_key = absolutize(&path);
        let abs_dir = absolutize(audit_dir);
        if abs_key.starts_with(&abs_dir) {
            return Err(AuditError::KeyFileInsideAuditDir {
                path,
                audit_dir: audit_dir.to_path_buf(),
            });
        }
        match std::fs::metadata(&path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => create_key_file(&path)?,
            Err(source) => return Err(AuditError::Read { path, source }),
        }
        let kf = KeyFile { path };
        kf.read()?; // validate now, not at the first append
        Ok(kf)
    }

    /// The path of the key file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read(&self) -> Result<KeyPair> {
        let path = &self.path;
        let meta = std::fs::metadata(path).map_err(|source| AuditError::Read {
            path: path.clone(),
            source,
        })?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(AuditError::KeyFilePermissions {
                path: path.clone(),
                mode,
            });
        }
        if !meta.is_file() {
            return Err(AuditError::KeyFileMalformed {
                path: path.clone(),
                reason: "not a regular file".into(),
            });
        }
        let text =
            Zeroizing::new(
                std::fs::read_to_string(path).map_err(|source| AuditError::Read {
                    path: path.clone(),
                    source,
                })?,
            );
        let malformed = |reason: &str| AuditError::KeyFileMalformed {
            path: path.clone(),
            reason: reason.into(),
        };
        let mut hmac = None;
        let mut sign = None;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (k, v) = line
                .split_once('=')
                .ok_or_else(|| malformed("a line is not `name=hex`"))?;
            let mut buf = Zeroizing::new([0u8; 32]);
            hex::decode_to_slice(v.trim(), &mut buf[..])
                .map_err(|_| malformed("a key is not 64 hex digits"))?;
            match k.trim() {
                "hmac" => hmac = Some(buf),
                "ed25519" => sign = Some(buf),
                _ => return Err(malformed("unknown key name (expected hmac, ed25519)")),
            }
        }
        match (hmac, sign) {
            (Some(h), Some(s)) => Ok((h, s)),
            _ => Err(malformed("both `hmac=` and `ed25519=` lines are required")),
        }
    }
}

impl KeySource for KeyFile {
    fn hmac_key(&self) -> Result<Zeroizing<Vec<u8>>> {
        let (h, _) = self.read()?;
        Ok(Zeroizing::new(h.to_vec()))
    }

    fn signing_key(&self) -> Result<Zeroizing<[u8; 32]>> {
        let (_, s) = self.read()?;
        Ok(s)
    }
}

fn create_key_file(path: &Path) -> Result<()> {
    let create_err = |source| AuditError::Create {
        path: path.to_path_buf(),
        source,
    };
    let mut seed = Zeroizing::new([0u8; 64]);
    getrandom::fill(&mut seed[..]).map_err(|e| AuditError::Random(e.to_string()))?;
    let mut text = Zeroizing::new(String::with_capacity(200));
    text.push_str("# tether audit keys v1: keep secret (0600), back up off-box, never inside the audit directory\nhmac=");
    text.push_str(&hex::encode(&seed[..32]));
    text.push_str("\ned25519=");
    text.push_str(&hex::encode(&seed[32..]));
    text.push('\n');
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(create_err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(create_err)?;
    f.write_all(text.as_bytes()).map_err(create_err)?;
    f.sync_all().map_err(create_err)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        crate::files::sync_dir(parent).map_err(create_err)?;
    }
    Ok(())
}

/// Best-effort absolute, symlink-resolved form of a path that may not exist yet.
fn absolutize(p: &Path) -> PathBuf {
    if let Ok(c) = p.canonicalize() {
        return c;
    }
    match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            absolutize(parent).join(name)
        }
        (_, Some(name)) => std::env::current_dir()
            .map(|d| d.join(name))
            .unwrap_or_else(|_| p.to_path_buf()),
        _ => p.to_path_buf(),
    }
}

/// Keys held in memory; for tests, tools and the vault adapter.
pub struct StaticKeys {
    hmac: Zeroizing<Vec<u8>>,
    signing: Zeroizing<[u8; 32]>,
    /// Epochs 1.. made by [`KeySource::create_epoch`].
    later: std::sync::Mutex<Vec<EpochKeys>>,
}

impl StaticKeys {
    /// Keys from raw material.
    pub fn new(hmac: Zeroizing<Vec<u8>>, signing: Zeroizing<[u8; 32]>) -> Self {
        StaticKeys {
            hmac,
            signing,
            later: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Fresh random keys.
    pub fn generate() -> Result<Self> {
        let mut h = Zeroizing::new(vec![0u8; 32]);
        let mut s = Zeroizing::new([0u8; 32]);
        getrandom::fill(&mut h[..]).map_err(|e| AuditError::Random(e.to_string()))?;
        getrandom::fill(&mut s[..]).map_err(|e| AuditError::Random(e.to_string()))?;
        Ok(StaticKeys::new(h, s))
    }
}

impl std::fmt::Debug for StaticKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StaticKeys { .. }")
    }
}

impl KeySource for StaticKeys {
    fn hmac_key(&self) -> Result<Zeroizing<Vec<u8>>> {
        Ok(self.hmac.clone())
    }
    fn signing_key(&self) -> Result<Zeroizing<[u8; 32]>> {
        Ok(self.signing.clone())
    }
    fn epoch_keys(&self, epoch: u32) -> Result<Option<EpochKeys>> {
        if epoch == 0 {
            return Ok(Some((self.hmac.clone(), self.signing.clone())));
        }
        let later = self.later.lock().unwrap_or_else(|p| p.into_inner());
        Ok(later.get(epoch as usize - 1).cloned())
    }
    fn create_epoch(&self, epoch: u32, hmac: bool, signing: bool) -> Result<()> {
        if epoch == 0 {
            return Err(AuditError::KeyUnavailable {
                which: "rotation",
                reason: "epoch 0 is the first key set".into(),
            });
        }
        let prev = self
            .epoch_keys(epoch - 1)?
            .ok_or_else(|| AuditError::KeyUnavailable {
                which: "rotation",
                reason: format!("epoch {} has no keys", epoch - 1),
            })?;
        let mut later = self.later.lock().unwrap_or_else(|p| p.into_inner());
        if later.len() >= epoch as usize {
            return Ok(());
        }
        let fresh = StaticKeys::generate()?;
        later.push((
            if hmac { fresh.hmac.clone() } else { prev.0 },
            if signing {
                fresh.signing.clone()
            } else {
                prev.1
            },
        ));
        Ok(())
    }
}
