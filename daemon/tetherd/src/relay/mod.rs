//! The relay role (`tetherd run --role relay`): a [`tether_relay::Relay`] with its key and
//! metrics token from the vault, its certificate (the operator's, or a self-signed one generated
//! once into `state_dir`), its allowlist file, SIGTERM drain and SIGHUP reload. A relay runs no
//! tunnel, enrollment, SSH, plugins, audit chain or control socket.

pub mod identity;
pub mod metrics_token;
pub mod run;
pub mod show;

use std::path::PathBuf;

use tether_config::{Config, Overrides};
use tether_model::DaemonRole;

use crate::error::DaemonError;

/// A relay's config, vault and how far a one-shot command may go: with the state directory's
/// lock (no relay running) it may generate what a first start would; otherwise it only reads.
pub struct Opened {
    /// The effective config (role forced to `relay`).
    pub config: Config,
    /// The relay's vault.
    pub vault: tether_vault::Vault,
    /// Create or read only.
    pub mode: identity::Mode,
    /// Held while the command runs, when no relay holds it.
    _lock: Option<crate::state_dir::StateLock>,
}

/// Loads the config and opens the vault for a `tetherd relay ...` command.
pub fn open(config: Option<PathBuf>, state_dir: Option<PathBuf>) -> Result<Opened, DaemonError> {
    let overrides = Overrides {
        role: Some(DaemonRole::Relay),
        state_dir,
        control: None,
    };
    let loaded = tether_config::load(config.as_deref(), &overrides)?;
    // A one-shot command: only warnings and errors, unless RUST_LOG asks for more.
    crate::logging::init("warn");
    tether_vault::harden_process()?;
    tether_vault::check_secure_memory(loaded.vault.secure_memory_required)?;
    crate::run::prepare_state_dir(&loaded.state_dir)?;
    let (mode, lock) = match crate::state_dir::lock(&loaded.state_dir) {
        Ok(lock) => {
            crate::state_dir::check_complete(&loaded)?;
            (identity::Mode::Create, Some(lock))
        }
        // The running relay made everything at its start; read what it made.
        Err(DaemonError::StateDirInUse { .. }) => (identity::Mode::Read, None),
        Err(e) => return Err(e),
    };
    let file = crate::vault_key::config_file_in_use(config.as_deref());
    let vault_config = crate::vault_key::vault_config(&loaded, file.as_deref());
    let vault = tether_vault::Vault::open(&vault_config, &loaded.state_dir)?;
    Ok(Opened {
        config: loaded,
        vault,
        mode,
        _lock: lock,
    })
}
