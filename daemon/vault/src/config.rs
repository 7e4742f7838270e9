//! Which backend a secret lives in. The `[vault]` schema itself ([`VaultConfig`],
//! [`BackendChoice`]) lives in `tether-config`, so the CLI checks configs without linking the
//! vault.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use tether_config::{BackendChoice, VaultConfig};

/// A concrete backend (what `auto` resolved to, and where each secret lives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendKind {
    /// The OS keyring (Secret Service over D-Bus).
    Keyring,
    /// systemd credentials (read-only).
    Credentials,
    /// AES-256-GCM encrypted files.
    File,
}

impl BackendKind {
    /// `keyring`, `credentials` or `file`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Keyring => "keyring",
            BackendKind::Credentials => "credentials",
            BackendKind::File => "file",
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
