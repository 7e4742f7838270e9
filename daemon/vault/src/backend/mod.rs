//! Storage backends behind one trait.

pub(crate) mod credentials;
pub(crate) mod file;
pub(crate) mod keyring;

use crate::config::BackendKind;
use crate::error::Result;
use crate::name::SecretName;
use crate::secret::SecretBox;

/// A place secret values live. Metadata (which secrets exist, versions, times) is kept by the
/// [`crate::Vault`] in its index, not here.
pub trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Reads `name`. `version` is the version the index expects (the file backend checks it
    /// against the authenticated version in the file). `Ok(None)` if absent.
    fn read(&self, name: &SecretName, version: u64) -> Result<Option<SecretBox>>;
    /// Stores `value` as `version` of `name`, replacing any older value atomically.
    fn write(&self, name: &SecretName, version: u64, value: &SecretBox) -> Result<()>;
    /// Deletes `name`; false if it was not there.
    fn delete(&self, name: &SecretName) -> Result<bool>;
}
