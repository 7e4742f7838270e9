//! `[vault]` in `tetherd.toml`: the schema lives with the rest of the config in
//! `tether-config` (so the CLI can check a config without linking the vault); the vault reads it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which backend stores secrets (`vault.backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The OS keyring when a Secret Service is reachable, else the encrypted file.
    #[default]
    Auto,
    /// The OS keyring (Secret Service over D-Bus).
    Keyring,
    /// systemd credentials in `$CREDENTIALS_DIRECTORY` (read-only).
    Credentials,
    /// AES-256-GCM encrypted files in `STATE_DIR/vault/`.
    File,
}

/// `[vault]`. Every key is optional; unknown keys are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VaultConfig {
    /// `auto` (default), `keyring`, `credentials` or `file`.
    pub backend: BackendChoice,
    /// Refuse to start when secret memory cannot be locked into RAM (default `true`).
    pub secure_memory_required: bool,
    /// File backend: the 32-byte key file, created (0400) on first use. Must not be readable or
    /// writable by group/others. Default: outside `state_dir` (see
    /// [`crate::default_vault_key_file`]: `$CREDENTIALS_DIRECTORY/vault.key`, else beside the
    /// config file, else `/etc/tether/vault.key` for root or `~/.config/tether/vault.key`). A key
    /// left in the old default `STATE_DIR/vault/vault.key` is still used, with a warning.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// File backend: take the key from this systemd credential instead of `key_file`
    /// (`LoadCredentialEncrypted=NAME:...`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_credential: Option<String>,
    /// Keyring backend: service-name prefix. The stored service is `PREFIX:INSTANCE`, where
    /// INSTANCE is derived from the state directory, so two daemons never share entries.
    pub keyring_service: String,
    /// Where systemd credentials are. Default: `$CREDENTIALS_DIRECTORY`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub credentials_dir: Option<PathBuf>,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            backend: BackendChoice::Auto,
            secure_memory_required: true,
            key_file: None,
            key_credential: None,
            keyring_service: "tether".into(),
            credentials_dir: None,
        }
    }
}

impl VaultConfig {
    /// Checks the values serde cannot (absolute paths, name syntax); the error names the key
    /// and says what is wrong with it.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(p) = &self.key_file
            && !p.is_absolute()
        {
            return Err((
                "vault.key_file",
                format!("{} is not an absolute path", p.display()),
            ));
        }
        if let Some(p) = &self.credentials_dir
            && !p.is_absolute()
        {
            return Err((
                "vault.credentials_dir",
                format!("{} is not an absolute path", p.display()),
            ));
        }
        if let Some(c) = &self.key_credential {
            tether_model::check_secret_name(c).map_err(|reason| {
                (
                    "vault.key_credential",
                    format!("invalid credential name {c:?}: {reason}"),
                )
            })?;
        }
        let s = &self.keyring_service;
        if s.is_empty()
            || s.len() > 64
            || !s
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err((
                "vault.keyring_service",
                format!("{s:?} must be 1-64 characters of A-Z a-z 0-9 . _ -"),
            ));
        }
        Ok(())
    }
}
