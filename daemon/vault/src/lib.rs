//! Secret vault: locked, sealed memory (memsec) and keyring / systemd-credentials / AES-256-GCM
//! file backends.
//!
//! * [`SecretBox`]: secret bytes in mlock'd, guard-paged memory, sealed `PROT_NONE` except inside
//!   [`SecretBox::expose`], zeroed on drop, constant-time equality, `[redacted]` when printed.
//! * [`harden_process`] and [`check_secure_memory`]: call both first thing in `main`.
//! * [`Vault`]: the typed handle (`get`, `set`, `remove`, `list`, `rotate`, `get_or_generate`)
//!   over the backend chosen by [`VaultConfig`] (`[vault]` in `tetherd.toml`).
//!
//! `unsafe` is confined to the `secret` module (memsec FFI); every block has a `// SAFETY:` line.

mod backend;
mod config;
mod error;
mod fsutil;
mod harden;
mod index;
mod memlock;
mod name;
mod outside;
mod secret;
mod vault;

pub use backend::Backend;
pub use config::{BackendChoice, BackendKind, VaultConfig};
pub use error::{Result, VaultError};
pub use harden::{SecureMemoryStatus, check_secure_memory, harden_process};
pub use index::SecretInfo;
pub use name::{MAX_NAME_LEN, SecretName};
pub use secret::{
    MAX_SECRET_LEN, SecretBox, SecureMemoryMode, secure_memory_mode, set_secure_memory_mode,
    unlocked_allocations,
};
pub use vault::Vault;

/// Key sizes of the daemon's own generated keys, for `Vault::get_or_generate`.
pub mod key_len {
    /// HMAC-SHA256 keys (audit records, invite tokens).
    pub const HMAC_SHA256: usize = 32;
    /// Ed25519 seeds (audit head signing).
    pub const ED25519_SEED: usize = 32;
    /// X25519 private keys (WireGuard).
    pub const WIREGUARD_PRIVATE: usize = 32;
}
