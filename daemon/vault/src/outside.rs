//! Values that must survive a rollback of `state_dir` (the audit head counter): kept where an
//! attacker who can rewrite `state_dir` cannot reach them: the OS keyring, or a sealed file
//! beside the file backend's key (which is outside `state_dir` by default).

use crate::backend::Backend as _;
use crate::config::BackendKind;
use crate::error::{Result, VaultError};
use crate::name::SecretName;
use crate::secret::SecretBox;
use crate::vault::Vault;

enum Place<'a> {
    Keyring(&'a crate::backend::keyring::KeyringBackend),
    File(std::path::PathBuf),
}

impl Vault {
    fn outside_place(&self, name: &SecretName) -> std::result::Result<Place<'_>, String> {
        match self.backend() {
            BackendKind::Keyring => match self.keyring_backend() {
                Ok(k) => Ok(Place::Keyring(k)),
                Err(e) => Err(e),
            },
            BackendKind::File => self
                .file_backend()
                .outside_path(name, self.state_dir())
                .map(Place::File),
            BackendKind::Credentials => Err(
                "the credentials backend is read-only; use the keyring, or the file backend with vault.key_file outside state_dir".into(),
            ),
        }
    }

    /// Where [`Vault::outside_get`] and [`Vault::outside_set`] keep `name`, or why this vault
    /// has no such place.
    pub fn outside_location(&self, name: &str) -> std::result::Result<String, String> {
        let n = SecretName::parse(name).map_err(|e| e.to_string())?;
        Ok(match self.outside_place(&n)? {
            Place::Keyring(k) => format!("keyring entry {name} of service {}", k.service()),
            Place::File(p) => p.display().to_string(),
        })
    }

    /// The value of `name` kept outside `state_dir` (never listed in the index); `Ok(None)`
    /// when none was stored.
    pub fn outside_get(&self, name: &str) -> Result<Option<SecretBox>> {
        let n = SecretName::parse(name)?;
        match self
            .outside_place(&n)
            .map_err(|reason| VaultError::NoOutsideStore {
                name: name.to_owned(),
                reason,
            })? {
            Place::Keyring(k) => k.read(&n, 0),
            Place::File(p) => self.file_backend().outside_read(&n, &p),
        }
    }

    /// Replaces the value of `name` kept outside `state_dir`.
    pub fn outside_set(&self, name: &str, value: &SecretBox) -> Result<()> {
        let n = SecretName::parse(name)?;
        match self
            .outside_place(&n)
            .map_err(|reason| VaultError::NoOutsideStore {
                name: name.to_owned(),
                reason,
            })? {
            Place::Keyring(k) => k.write(&n, 0, value),
            Place::File(p) => self.file_backend().outside_write(&n, &p, value),
        }
    }
}
