//! [`Vault`]: the typed handle the daemon and its crates use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use time::OffsetDateTime;

use crate::backend::Backend;
use crate::backend::credentials::CredentialsBackend;
use crate::backend::file::{FileBackend, KeySource};
use crate::backend::keyring::KeyringBackend;
use crate::config::{BackendChoice, BackendKind, VaultConfig};
use crate::error::{Result, VaultError};
use crate::fsutil::ensure_private_dir;
use crate::index::{Entry, Index, SecretInfo};
use crate::name::SecretName;
use crate::secret::SecretBox;

/// The secret vault of one daemon instance. Cheap to clone (`Arc`), `Send + Sync`.
///
/// Open it once per state directory and clone the handle: writes are serialised by one lock
/// inside the handle, not across separately opened handles.
#[derive(Clone)]
pub struct Vault {
    inner: Arc<Inner>,
}

struct Inner {
    primary: BackendKind,
    file: FileBackend,
    keyring: std::result::Result<KeyringBackend, String>,
    credentials: Option<CredentialsBackend>,
    index: Mutex<Index>,
    /// Serialises `get_or_generate` (check, generate, store).
    generate: Mutex<()>,
    dir: PathBuf,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("backend", &self.inner.primary)
            .field("dir", &self.inner.dir)
            .finish()
    }
}

impl Vault {
    /// Opens the vault for the daemon whose state lives in `state_dir` (creates
    /// `state_dir/vault/`, mode 0700). Resolves `backend = "auto"` and logs which backend it chose
    /// (never any value). Does not touch secret values or create the key file.
    pub fn open(config: &VaultConfig, state_dir: &Path) -> Result<Vault> {
        config
            .validate()
            .map_err(|(field, reason)| VaultError::Config { field, reason })?;
        let dir = state_dir.join("vault");
        ensure_private_dir(&dir)?;
        let index = Index::load(&dir.join("index.json"))?;

        let credentials = match (
            config.backend,
            &config.credentials_dir,
            &config.key_credential,
        ) {
            (BackendChoice::Credentials, d, _) | (_, d, Some(_)) => {
                Some(CredentialsBackend::open(d.as_deref())?)
            }
            (_, Some(d), None) => Some(CredentialsBackend::open(Some(d))?),
            _ => None,
        };
        let key_source = match (&config.key_credential, &credentials) {
            (Some(name), Some(_)) => KeySource::Credential {
                creds: CredentialsBackend::open(config.credentials_dir.as_deref())?,
                name: name.clone(),
            },
            _ => KeySource::File(
                config
                    .key_file
                    .clone()
                    .unwrap_or_else(|| dir.join("vault.key")),
            ),
        };
        let file = FileBackend::new(dir.clone(), key_source);

        let needs_keyring = config.backend != BackendChoice::File
            && config.backend != BackendChoice::Credentials
            || index
                .secrets
                .values()
                .any(|e| e.backend == BackendKind::Keyring);
        let keyring = if needs_keyring {
            KeyringBackend::open(&config.keyring_service, state_dir).map_err(|e| match e {
                VaultError::KeyringUnavailable { detail } => detail,
                other => other.to_string(),
            })
        } else {
            Err("not used by this configuration".into())
        };

        let primary = match config.backend {
            BackendChoice::File => BackendKind::File,
            BackendChoice::Credentials => BackendKind::Credentials,
            BackendChoice::Keyring => match &keyring {
                Ok(_) => BackendKind::Keyring,
                Err(detail) => {
                    return Err(VaultError::KeyringUnavailable {
                        detail: detail.clone(),
                    });
                }
            },
            BackendChoice::Auto => match &keyring {
                Ok(k) => {
                    tracing::info!(
                        backend = "keyring",
                        service = k.service(),
                        "vault: using the OS keyring (Secret Service reachable)"
                    );
                    BackendKind::Keyring
                }
                Err(why) => {
                    tracing::info!(backend = "file", reason = %why, dir = %dir.display(),
                        "vault: no Secret Service reachable, using the encrypted file backend");
                    BackendKind::File
                }
            },
        };
        if config.backend != BackendChoice::Auto {
            tracing::info!(
                backend = primary.as_str(),
                "vault: backend chosen by configuration"
            );
        }
        Ok(Vault {
            inner: Arc::new(Inner {
                primary,
                file,
                keyring,
                credentials,
                index: Mutex::new(index),
                generate: Mutex::new(()),
                dir,
            }),
        })
    }

    /// The backend new secrets are written to (what `auto` resolved to).
    pub fn backend(&self) -> BackendKind {
        self.inner.primary
    }

    /// `STATE_DIR/vault`.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Where file-backed secret `name` is stored (for operators and tests).
    pub fn file_path(&self, name: &str) -> Result<PathBuf> {
        Ok(self.inner.file.path(&SecretName::parse(name)?))
    }

    /// The state directory this vault belongs to.
    pub(crate) fn state_dir(&self) -> &Path {
        self.inner.dir.parent().unwrap_or(&self.inner.dir)
    }

    pub(crate) fn file_backend(&self) -> &FileBackend {
        &self.inner.file
    }

    pub(crate) fn keyring_backend(&self) -> std::result::Result<&KeyringBackend, String> {
        self.inner.keyring.as_ref().map_err(Clone::clone)
    }

    /// The file backend's key location (key file or credential path).
    pub fn key_location(&self) -> PathBuf {
        self.inner.file.key_location()
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        self.inner.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn backend_of(&self, kind: BackendKind) -> Result<&dyn Backend> {
        match kind {
            BackendKind::File => Ok(&self.inner.file),
            BackendKind::Keyring => match &self.inner.keyring {
                Ok(k) => Ok(k),
                Err(detail) => Err(VaultError::KeyringUnavailable {
                    detail: detail.clone(),
                }),
            },
            BackendKind::Credentials => match &self.inner.credentials {
                Some(c) => Ok(c),
                None => Err(VaultError::Credentials {
                    detail: "the credentials backend is not configured".into(),
                }),
            },
        }
    }

    fn read_entry(&self, name: &SecretName, entry: &Entry) -> Result<SecretBox> {
        self.backend_of(entry.backend)?
            .read(name, entry.version)?
            .ok_or_else(|| VaultError::Inconsistent {
                name: name.to_string(),
                backend: entry.backend,
                detail: match entry.backend {
                    BackendKind::File => {
                        format!("{} is missing", self.inner.file.path(name).display())
                    }
                    _ => "the backend has no such entry".into(),
                },
            })
    }

    /// The value of `name`, or `None` if no such secret exists.
    pub fn get(&self, name: &str) -> Result<Option<SecretBox>> {
        let name = SecretName::parse(name)?;
        if self.inner.primary == BackendKind::Credentials {
            return self.backend_of(BackendKind::Credentials)?.read(&name, 0);
        }
        let entry = self.index().secrets.get(name.as_str()).cloned();
        match entry {
            None => Ok(None),
            Some(entry) => self.read_entry(&name, &entry).map(Some),
        }
    }

    /// Stores `value` under `name` (operator-set; replaces any existing value and bumps its
    /// version). Refuses empty values and the read-only credentials backend.
    pub fn set(&self, name: &str, value: SecretBox) -> Result<SecretInfo> {
        let name = SecretName::parse(name)?;
        if value.is_empty() {
            return Err(VaultError::EmptySecret {
                name: name.to_string(),
            });
        }
        self.store(&name, &value, None, "set")
    }

    fn store(
        &self,
        name: &SecretName,
        value: &SecretBox,
        generated_len: Option<usize>,
        op: &'static str,
    ) -> Result<SecretInfo> {
        let primary = self.inner.primary;
        if primary == BackendKind::Credentials {
            return Err(VaultError::ReadOnly {
                backend: primary,
                operation: op,
                name: name.to_string(),
            });
        }
        let mut index = self.index();
        let now = OffsetDateTime::now_utc();
        let old = index.secrets.get(name.as_str()).cloned();
        let entry = Entry {
            backend: primary,
            version: old.as_ref().map_or(1, |e| e.version + 1),
            generated_len,
            created: old.as_ref().map_or(now, |e| e.created),
            rotated: old.as_ref().map(|_| now),
        };
        self.backend_of(primary)?
            .write(name, entry.version, value)?;
        index.secrets.insert(name.to_string(), entry.clone());
        index.save()?;
        if let Some(old) = old
            && old.backend != primary
        {
            // The secret moved backends (e.g. `auto` now finds a keyring): drop the old copy.
            if let Err(e) = self.backend_of(old.backend).and_then(|b| b.delete(name)) {
                tracing::warn!(secret = %name, backend = %old.backend, error = %e, "could not delete the old copy of a moved secret");
            }
        }
        Ok(entry.info(name.as_str()))
    }

    /// Deletes `name` from its backend and the index. [`VaultError::NotFound`] if absent.
    pub fn remove(&self, name: &str) -> Result<()> {
        let name = SecretName::parse(name)?;
        if self.inner.primary == BackendKind::Credentials {
            return Err(VaultError::ReadOnly {
                backend: BackendKind::Credentials,
                operation: "remove",
                name: name.to_string(),
            });
        }
        let mut index = self.index();
        let Some(entry) = index.secrets.get(name.as_str()).cloned() else {
            return Err(VaultError::NotFound {
                name: name.to_string(),
            });
        };
        if !self.backend_of(entry.backend)?.delete(&name)? {
            tracing::warn!(secret = %name, backend = %entry.backend, "secret was in the index but not in its backend");
        }
        index.secrets.remove(name.as_str());
        index.save()
    }

    /// Replaces a generated key with a fresh random one of the same length (version + 1).
    /// Refuses operator-set secrets ([`VaultError::NotGenerated`]) and refuses to overwrite a
    /// value that does not currently read back cleanly (e.g. a tampered file).
    pub fn rotate(&self, name: &str) -> Result<SecretInfo> {
        let name = SecretName::parse(name)?;
        if self.inner.primary == BackendKind::Credentials {
            return Err(VaultError::ReadOnly {
                backend: BackendKind::Credentials,
                operation: "rotate",
                name: name.to_string(),
            });
        }
        let entry = self.index().secrets.get(name.as_str()).cloned();
        let Some(entry) = entry else {
            return Err(VaultError::NotFound {
                name: name.to_string(),
            });
        };
        let Some(len) = entry.generated_len else {
            return Err(VaultError::NotGenerated {
                name: name.to_string(),
            });
        };
        drop(self.read_entry(&name, &entry)?);
        let fresh = SecretBox::random(len)?;
        self.store(&name, &fresh, Some(len), "rotate")
    }

    /// The value of `name`; if it does not exist, generates `len` random bytes, stores them as a
    /// generated (rotatable) key and returns them. An existing value is returned as is, whatever
    /// its length. A value that exists but cannot be read is an error, never regenerated.
    pub fn get_or_generate(&self, name: &str, len: usize) -> Result<SecretBox> {
        let sname = SecretName::parse(name)?;
        if self.inner.primary == BackendKind::Credentials {
            return self.backend_of(BackendKind::Credentials)?.read(&sname, 0)?.ok_or_else(|| VaultError::Credentials {
                detail: format!(
                    "secret {name:?} is required but there is no credential of that name: create one \
                     (`head -c {len} /dev/urandom | systemd-creds encrypt --name={name} - \
                     /etc/credstore.encrypted/{name}`) and add `LoadCredentialEncrypted={name}` to the unit"
                ),
            });
        }
        // One generator at a time, so two callers never create two different keys.
        let _guard = self
            .inner
            .generate
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let existing = self.index().secrets.get(name).cloned();
        if let Some(entry) = existing {
            return self.read_entry(&sname, &entry);
        }
        // Never generate over key material the index has lost track of.
        let existing_file = self.inner.dir.join(format!("{sname}.sec"));
        if existing_file.exists() {
            return Err(VaultError::Unindexed {
                name: name.to_owned(),
                path: existing_file,
            });
        }
        let fresh = SecretBox::random(len)?;
        self.store(&sname, &fresh, Some(len), "generate")?;
        Ok(fresh)
    }

    /// Metadata of one secret (never its value).
    pub fn info(&self, name: &str) -> Result<Option<SecretInfo>> {
        let name = SecretName::parse(name)?;
        Ok(self.list()?.into_iter().find(|i| i.name == name.as_str()))
    }

    /// Every secret's metadata, sorted by name. Reads only the index (and, for the credentials
    /// backend, the directory listing): never a value.
    pub fn list(&self) -> Result<Vec<SecretInfo>> {
        if self.inner.primary == BackendKind::Credentials {
            let Some(c) = &self.inner.credentials else {
                return Ok(Vec::new());
            };
            return Ok(c
                .names()?
                .into_iter()
                .map(|(name, mtime)| SecretInfo {
                    name: name.to_string(),
                    backend: BackendKind::Credentials,
                    version: 1,
                    generated: false,
                    created: mtime.map_or(OffsetDateTime::UNIX_EPOCH, OffsetDateTime::from),
                    rotated: None,
                })
                .collect());
        }
        Ok(self
            .index()
            .secrets
            .iter()
            .map(|(n, e)| e.info(n))
            .collect())
    }
}
