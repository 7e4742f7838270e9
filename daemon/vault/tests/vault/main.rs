//! Integration tests for tether-vault: real files, real processes, a real Secret Service.

#![allow(clippy::unwrap_used)]

mod config;
mod credentials;
mod file_backend;
mod leaks;
mod processes;

use std::path::Path;

use tether_vault::{BackendChoice, SecretBox, Vault, VaultConfig};

/// A file-backend config.
pub fn file_config() -> VaultConfig {
    VaultConfig {
        backend: BackendChoice::File,
        ..VaultConfig::default()
    }
}

/// Opens a file-backend vault.
pub fn open_file_vault(state: &Path) -> Vault {
    Vault::open(&file_config(), state).unwrap()
}

/// A SecretBox from bytes.
pub fn secret(bytes: &[u8]) -> SecretBox {
    SecretBox::from_slice(bytes).unwrap()
}

/// Byte-substring search.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}
