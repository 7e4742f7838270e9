//! systemd credentials: `$CREDENTIALS_DIRECTORY/NAME`, read-only.

use std::path::{Path, PathBuf};

use crate::backend::Backend;
use crate::config::BackendKind;
use crate::error::{Result, VaultError};
use crate::name::SecretName;
use crate::secret::{MAX_SECRET_LEN, SecretBox};

/// Reads secrets systemd decrypted for the service (`LoadCredential=` /
/// `LoadCredentialEncrypted=` / `SetCredentialEncrypted=`).
pub(crate) struct CredentialsBackend {
    dir: PathBuf,
}

impl CredentialsBackend {
    /// `dir`, or `$CREDENTIALS_DIRECTORY` when `None`.
    pub(crate) fn open(dir: Option<&Path>) -> Result<CredentialsBackend> {
        let dir = match dir {
            Some(d) => d.to_owned(),
            None => match std::env::var_os("CREDENTIALS_DIRECTORY") {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                _ => {
                    return Err(VaultError::Credentials {
                        detail: "CREDENTIALS_DIRECTORY is not set: run tetherd as a systemd service with \
                                 `LoadCredentialEncrypted=NAME:PATH` lines, or set vault.credentials_dir"
                            .into(),
                    });
                }
            },
        };
        if !dir.is_dir() {
            return Err(VaultError::Credentials {
                detail: format!(
                    "credentials directory {} does not exist or is not a directory",
                    dir.display()
                ),
            });
        }
        Ok(CredentialsBackend { dir })
    }

    pub(crate) fn path(&self, name: &SecretName) -> PathBuf {
        self.dir.join(name.as_str())
    }

    /// Path of credential `name` (already validated as a secret name by the caller).
    pub(crate) fn dir_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Names of the credentials present (entries whose file name is a valid secret name).
    pub(crate) fn names(&self) -> Result<Vec<(SecretName, Option<std::time::SystemTime>)>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| VaultError::io("list", &self.dir, e))?;
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(|e| VaultError::io("list", &self.dir, e))?;
            if let Some(name) = entry
                .file_name()
                .to_str()
                .and_then(|n| SecretName::parse(n).ok())
            {
                let mtime = entry.metadata().ok().and_then(|m| m.modified().ok());
                out.push((name, mtime));
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads credential `name` straight into locked memory.
    pub(crate) fn read_named(&self, name: &str, path: &Path) -> Result<Option<SecretBox>> {
        let _ = name;
        match std::fs::File::open(path) {
            Ok(f) => SecretBox::from_reader(f, MAX_SECRET_LEN)
                .map(Some)
                .map_err(|e| match e {
                    VaultError::Io { source, .. } => VaultError::io("read", path, source),
                    other => other,
                }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(VaultError::io("open", path, e)),
        }
    }
}

impl Backend for CredentialsBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Credentials
    }

    fn read(&self, name: &SecretName, _version: u64) -> Result<Option<SecretBox>> {
        self.read_named(name.as_str(), &self.path(name))
    }

    fn write(&self, name: &SecretName, _version: u64, _value: &SecretBox) -> Result<()> {
        Err(VaultError::ReadOnly {
            backend: BackendKind::Credentials,
            operation: "set",
            name: name.to_string(),
        })
    }

    fn delete(&self, name: &SecretName) -> Result<bool> {
        Err(VaultError::ReadOnly {
            backend: BackendKind::Credentials,
            operation: "remove",
            name: name.to_string(),
        })
    }
}
