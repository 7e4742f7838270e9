//! AES-256-GCM encrypted files: `STATE_DIR/vault/NAME.sec`, one per secret.
//!
//! File format (all integers big-endian):
//! `magic "TTHRVLT1" (8) | version u64 (8) | nonce (12) | ciphertext | tag (16)`.
//! The nonce is fresh from the OS RNG on every write (96 bits, so random nonces are safe for far
//! more writes than a vault sees). The AAD is `"tether-vault/v1\0" | NAME | "\0" | version`, so a
//! file renamed to another secret, or with its version edited, fails authentication. Files are
//! replaced atomically (temp + fsync + rename + directory fsync) with mode 0600.
//!
//! Plaintext never touches ordinary heap memory: encryption and decryption run in place inside
//! a locked [`SecretBox`]; only ciphertext is copied out. The AES key schedule lives on the stack
//! for the duration of one operation and is zeroized on drop (`aes-gcm` `zeroize` feature).

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use aes_gcm::aead::{AeadInOut, KeyInit, Tag};
use aes_gcm::{Aes256Gcm, Nonce};

use crate::backend::Backend;
use crate::backend::credentials::CredentialsBackend;
use crate::config::BackendKind;
use crate::error::{Result, VaultError};
use crate::fsutil::{atomic_write, create_exclusive};
use crate::name::SecretName;
use crate::secret::{MAX_SECRET_LEN, SecretBox};

const MAGIC: &[u8; 8] = b"TTHRVLT1";
const HEADER: usize = 8 + 8 + 12;
const TAG: usize = 16;
/// Key size in bytes (AES-256).
pub(crate) const KEY_LEN: usize = 32;

/// Where the file key comes from.
pub(crate) enum KeySource {
    /// A key file, created (0400) with 32 random bytes on first write if absent.
    File(PathBuf),
    /// A systemd credential (never created by us).
    Credential {
        creds: CredentialsBackend,
        name: String,
    },
}

pub(crate) struct FileBackend {
    dir: PathBuf,
    key_source: KeySource,
    key: Mutex<Option<Arc<SecretBox>>>,
}

impl FileBackend {
    pub(crate) fn new(dir: PathBuf, key_source: KeySource) -> FileBackend {
        FileBackend {
            dir,
            key_source,
            key: Mutex::new(None),
        }
    }

    pub(crate) fn path(&self, name: &SecretName) -> PathBuf {
        self.dir.join(format!("{name}.sec"))
    }

    fn key_path(&self) -> PathBuf {
        match &self.key_source {
            KeySource::File(p) => p.clone(),
            KeySource::Credential { creds, name } => creds.dir_path(name),
        }
    }

    /// The key, loading it (or, if `create`, generating it) on first use.
    fn key(&self, create: bool) -> Result<Arc<SecretBox>> {
        let mut slot = self.key.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(k) = slot.as_ref() {
            return Ok(k.clone());
        }
        let key =
            match &self.key_source {
                KeySource::File(path) => load_or_create_key_file(path, create)?,
                KeySource::Credential { creds, name } => {
                    let path = creds.dir_path(name);
                    let key = creds.read_named(name, &path)?.ok_or_else(|| VaultError::KeyFile {
                    path: path.clone(),
                    detail: format!(
                        "systemd credential {name:?} (vault.key_credential) is missing: add \
                         `LoadCredentialEncrypted={name}:...` to the unit"
                    ),
                })?;
                    check_key_len(&path, &key)?;
                    key
                }
            };
        let key = Arc::new(key);
        *slot = Some(key.clone());
        Ok(key)
    }
}

fn check_key_len(path: &Path, key: &SecretBox) -> Result<()> {
    if key.len() != KEY_LEN {
        return Err(VaultError::KeyFile {
            path: path.to_owned(),
            detail: format!(
                "holds {} bytes, expected exactly {KEY_LEN} raw bytes (create one with `head -c 32 /dev/urandom`)",
                key.len()
            ),
        });
    }
    Ok(())
}

/// Opens the key file, refusing loose permissions, or creates it (0400) when `create`.
fn load_or_create_key_file(path: &Path, create: bool) -> Result<SecretBox> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = SecretBox::random(KEY_LEN)?;
            if let Some(parent) = path.parent() {
                crate::fsutil::ensure_private_dir(parent)?;
            }
            let created = key.expose(|bytes| create_exclusive(path, bytes, 0o400))?;
            if created {
                tracing::info!(path = %path.display(), "generated a new vault key file (0400)");
                return Ok(key);
            }
            // Someone else created it meanwhile: use theirs.
            std::fs::File::open(path).map_err(|e| VaultError::io("open", path, e))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(VaultError::KeyFile {
                path: path.to_owned(),
                detail: "is missing, but the vault index lists file-backed secrets: the key was \
                         deleted or vault.key_file points elsewhere. Restore the key file; without \
                         it those secrets cannot be decrypted"
                    .into(),
            });
        }
        Err(e) => return Err(VaultError::io("open", path, e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| VaultError::io("stat", path, e))?;
    if !meta.is_file() {
        return Err(VaultError::KeyFile {
            path: path.to_owned(),
            detail: "is not a regular file".into(),
        });
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(VaultError::KeyFile {
            path: path.to_owned(),
            detail: format!(
                "has mode {mode:04o}, which lets group or others access it; run `chmod 0400 {}` \
                 (and consider the key compromised if others could read it)",
                path.display()
            ),
        });
    }
    let euid = nix::unistd::geteuid().as_raw();
    if meta.uid() != euid {
        return Err(VaultError::KeyFile {
            path: path.to_owned(),
            detail: format!(
                "is owned by uid {}, but tetherd runs as uid {euid}; `chown` it to the daemon's user",
                meta.uid()
            ),
        });
    }
    let key =
        SecretBox::from_reader(file.take(KEY_LEN as u64 + 1), KEY_LEN + 1).map_err(
            |e| match e {
                VaultError::Io { source, .. } => VaultError::io("read", path, source),
                other => other,
            },
        )?;
    check_key_len(path, &key)?;
    Ok(key)
}

fn aad(name: &SecretName, version: u64) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + name.as_str().len() + 9);
    aad.extend_from_slice(b"tether-vault/v1\0");
    aad.extend_from_slice(name.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

fn cipher(key: &SecretBox) -> Result<Aes256Gcm> {
    key.expose(Aes256Gcm::new_from_slice)
        .map_err(|_| VaultError::KeyFile {
            path: PathBuf::new(),
            detail: format!("key is not {KEY_LEN} bytes"),
        })
}

/// Encrypts `value` as `version` of `name`; returns the whole file content.
pub(crate) fn seal(
    key: &SecretBox,
    name: &SecretName,
    version: u64,
    value: &SecretBox,
) -> Result<Vec<u8>> {
    let mut nonce = [0u8; 12];
    getrandom::fill(&mut nonce).map_err(|e| VaultError::Random {
        detail: e.to_string(),
    })?;
    let nonce_arr = Nonce::from(nonce);
    let aad = aad(name, version);
    // Encrypt in place inside a locked copy; after this it holds ciphertext only.
    let mut work = value.try_clone()?;
    let tag = {
        let c = cipher(key)?;
        work.expose_mut(|buf| c.encrypt_inout_detached(&nonce_arr, &aad, buf.into()))
    }
    .map_err(|_| VaultError::Random {
        detail: "AES-GCM encryption failed (message too long)".into(),
    })?;
    let mut out = Vec::with_capacity(HEADER + work.len() + TAG);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&version.to_be_bytes());
    out.extend_from_slice(&nonce);
    work.expose(|ct| out.extend_from_slice(ct));
    out.extend_from_slice(&tag);
    Ok(out)
}

/// Parses and decrypts a file's content. Returns the plaintext and the authenticated version.
pub(crate) fn open(
    key: &SecretBox,
    name: &SecretName,
    path: &Path,
    data: &[u8],
) -> Result<(SecretBox, u64)> {
    let corrupt = |detail: String| VaultError::CorruptFile {
        path: path.to_owned(),
        detail,
    };
    if data.len() < HEADER + TAG {
        return Err(corrupt(format!(
            "truncated: {} bytes, a vault file has at least {} (header + tag)",
            data.len(),
            HEADER + TAG
        )));
    }
    if &data[..8] != MAGIC {
        return Err(corrupt(
            "bad magic: not a Tether vault file (or format from a newer version)".into(),
        ));
    }
    let mut v = [0u8; 8];
    v.copy_from_slice(&data[8..16]);
    let version = u64::from_be_bytes(v);
    let mut nonce = [0u8; 12];
    nonce.copy_from_slice(&data[16..HEADER]);
    let ct = &data[HEADER..data.len() - TAG];
    let tag = Tag::<Aes256Gcm>::try_from(&data[data.len() - TAG..])
        .map_err(|_| corrupt("bad tag length".into()))?;
    let mut work = SecretBox::from_slice(ct)?;
    let aad = aad(name, version);
    let c = cipher(key)?;
    work.expose_mut(|buf| c.decrypt_inout_detached(&Nonce::from(nonce), &aad, buf.into(), &tag))
        .map_err(|_| {
            corrupt(format!(
                "authentication failed (the file was modified or truncated, renamed from another \
                 secret, or encrypted with a different key) for secret {name:?} version {version}"
            ))
        })?;
    Ok((work, version))
}

impl Backend for FileBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::File
    }

    fn read(&self, name: &SecretName, version: u64) -> Result<Option<SecretBox>> {
        let path = self.path(name);
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(VaultError::io("read", &path, e)),
        };
        if data.len() > HEADER + MAX_SECRET_LEN + TAG {
            return Err(VaultError::CorruptFile {
                path,
                detail: format!("{} bytes is larger than any vault file", data.len()),
            });
        }
        let key = self.key(false)?;
        let (value, found) = open(&key, name, &path, &data)?;
        if found < version {
            return Err(VaultError::Rollback {
                path,
                found,
                expected: version,
            });
        }
        if found > version {
            tracing::warn!(secret = %name, found, expected = version,
                "vault file is newer than the index (an update was interrupted); using the file");
        }
        Ok(Some(value))
    }

    fn write(&self, name: &SecretName, version: u64, value: &SecretBox) -> Result<()> {
        let key = self.key(true)?;
        let data = seal(&key, name, version, value)?;
        atomic_write(&self.path(name), &data, 0o600)
    }

    fn delete(&self, name: &SecretName) -> Result<bool> {
        let path = self.path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                crate::fsutil::fsync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(VaultError::io("remove", &path, e)),
        }
    }
}

impl FileBackend {
    /// Where a value kept outside `state_dir` is stored: a file beside the key file,
    /// `KEYFILE.NAME-INSTANCE` (INSTANCE from `state_dir`, so daemons sharing a key never share
    /// it). `Err` says why there is no such place (a credential key, a key inside `state_dir`).
    pub(crate) fn outside_path(
        &self,
        name: &SecretName,
        state_dir: &Path,
    ) -> std::result::Result<PathBuf, String> {
        let KeySource::File(key) = &self.key_source else {
            return Err("the file backend's key is a read-only systemd credential; set vault.key_file (outside state_dir) or use the keyring backend".into());
        };
        let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let key_dir = key.parent().map(abs).unwrap_or_default();
        if key_dir.starts_with(abs(state_dir)) {
            return Err(format!(
                "the file backend's key {} is inside state_dir; move it out (see the warning at start)",
                key.display()
            ));
        }
        let file = key
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_else(|| "vault.key".into());
        Ok(key.with_file_name(format!(
            "{file}.{name}-{}",
            crate::backend::keyring::instance_id(state_dir)
        )))
    }

    /// Reads a value kept at [`FileBackend::outside_path`] (sealed with the vault key).
    pub(crate) fn outside_read(&self, name: &SecretName, path: &Path) -> Result<Option<SecretBox>> {
        let data = match std::fs::read(path) {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(VaultError::io("read", path, e)),
        };
        if data.len() > HEADER + MAX_SECRET_LEN + TAG {
            return Err(VaultError::CorruptFile {
                path: path.to_owned(),
                detail: format!("{} bytes is larger than any vault file", data.len()),
            });
        }
        let key = self.key(false)?;
        Ok(Some(open(&key, name, path, &data)?.0))
    }

    /// Replaces the value kept at [`FileBackend::outside_path`] (atomic, 0600).
    pub(crate) fn outside_write(
        &self,
        name: &SecretName,
        path: &Path,
        value: &SecretBox,
    ) -> Result<()> {
        let key = self.key(true)?;
        let data = seal(&key, name, 0, value)?;
        atomic_write(path, &data, 0o600)
    }

    /// The key file or credential path (for messages).
    pub(crate) fn key_location(&self) -> PathBuf {
        self.key_path()
    }
}
