//! The OS keyring: Secret Service over D-Bus, through the `keyring` 4.x crate.
//!
//! Entries are `service = PREFIX:INSTANCE`, `user = NAME`, where INSTANCE is the first 16 hex
//! digits of SHA-256 of the canonical state directory: two daemons on one machine never collide.
//! The transfer over D-Bus is encrypted (the store opens a DH session). The keyring crate returns
//! values as an ordinary `Vec<u8>`; it is copied into locked memory and wiped at once.

use std::path::Path;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::backend::Backend;
use crate::config::BackendKind;
use crate::error::{Result, VaultError};
use crate::name::SecretName;
use crate::secret::SecretBox;

/// Describes a keyring error without ever including the secret blobs some variants carry.
pub(crate) fn describe(e: &keyring::Error) -> String {
    use keyring::Error as E;
    match e {
        E::PlatformFailure(p) => format!("Secret Service failure: {p}"),
        E::NoStorageAccess(p) => {
            format!("the keyring refused access (is the collection locked?): {p}")
        }
        E::NoEntry => "no such entry".into(),
        E::BadEncoding(_) | E::BadDataFormat(..) => {
            "the stored value has an unexpected format".into()
        }
        E::BadStoreFormat(s) => format!("the keyring store is malformed: {s}"),
        E::TooLong(attr, max) => {
            format!("attribute {attr} is longer than the keyring allows ({max})")
        }
        E::Invalid(attr, why) => format!("invalid {attr}: {why}"),
        E::Ambiguous(v) => format!(
            "{} entries match; remove duplicates with `secret-tool`",
            v.len()
        ),
        E::NoDefaultStore => "no Secret Service could be reached (no D-Bus session bus, or no \
                              org.freedesktop.secrets provider on it)"
            .into(),
        E::NotSupportedByStore(s) => format!("not supported by this keyring: {s}"),
        _ => "unexpected keyring error".into(),
    }
}

/// `Ok(())` when a Secret Service answered (checked once per process by the keyring crate);
/// otherwise [`VaultError::KeyringUnavailable`], which says why and how to get one (or to use
/// the file backend).
pub(crate) fn availability() -> Result<()> {
    keyring::Entry::store_status()
        .as_ref()
        .map(|_| ())
        .map_err(|e| VaultError::KeyringUnavailable {
            detail: describe(e),
        })
}

/// The instance part of the service name for `state_dir`.
pub(crate) fn instance_id(state_dir: &Path) -> String {
    let canonical = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    let digest = Sha256::digest(canonical.as_os_str().as_encoded_bytes());
    hex::encode(&digest[..8])
}

pub(crate) struct KeyringBackend {
    service: String,
}

impl KeyringBackend {
    pub(crate) fn open(prefix: &str, state_dir: &Path) -> Result<KeyringBackend> {
        availability()?;
        Ok(KeyringBackend {
            service: format!("{prefix}:{}", instance_id(state_dir)),
        })
    }

    /// The service name entries are stored under.
    pub(crate) fn service(&self) -> &str {
        &self.service
    }

    fn entry(&self, name: &SecretName, operation: &'static str) -> Result<keyring::Entry> {
        keyring::Entry::new(&self.service, name.as_str()).map_err(|e| VaultError::Keyring {
            operation,
            name: name.to_string(),
            detail: describe(&e),
        })
    }
}

impl Backend for KeyringBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Keyring
    }

    fn read(&self, name: &SecretName, _version: u64) -> Result<Option<SecretBox>> {
        let entry = self.entry(name, "read")?;
        match entry.get_secret() {
            Ok(v) => {
                let v = Zeroizing::new(v);
                SecretBox::from_slice(&v).map(Some)
            }
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(VaultError::Keyring {
                operation: "read",
                name: name.to_string(),
                detail: describe(&e),
            }),
        }
    }

    fn write(&self, name: &SecretName, _version: u64, value: &SecretBox) -> Result<()> {
        let entry = self.entry(name, "write")?;
        value
            .expose(|bytes| entry.set_secret(bytes))
            .map_err(|e| VaultError::Keyring {
                operation: "write",
                name: name.to_string(),
                detail: describe(&e),
            })
    }

    fn delete(&self, name: &SecretName) -> Result<bool> {
        let entry = self.entry(name, "delete")?;
        match entry.delete_credential() {
            Ok(()) => Ok(true),
            Err(keyring::Error::NoEntry) => Ok(false),
            Err(e) => Err(VaultError::Keyring {
                operation: "delete",
                name: name.to_string(),
                detail: describe(&e),
            }),
        }
    }
}
