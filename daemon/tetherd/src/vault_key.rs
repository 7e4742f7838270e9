//! Where the file backend's key comes from: never `state_dir` by default. The config's
//! `vault.key_file` wins; otherwise a key left in the old default `STATE_DIR/vault/vault.key` is
//! still used (with a warning that says how to move it: it is never regenerated), and a new
//! install gets [`tether_config::default_vault_key_file`], outside `state_dir`.

use std::path::{Path, PathBuf};

use tether_config::{Config, VaultConfig};

/// The old default key location, inside `state_dir`.
pub fn legacy_key_file(state_dir: &Path) -> PathBuf {
    state_dir.join("vault").join("vault.key")
}

/// The `[vault]` settings to open the vault with: `key_file` resolved as described above.
/// `config_file` is the config file in use, if any.
pub fn vault_config(config: &Config, config_file: Option<&Path>) -> VaultConfig {
    let mut vc = config.vault.clone();
    if vc.key_file.is_some() || vc.key_credential.is_some() {
        return vc;
    }
    let legacy = legacy_key_file(&config.state_dir);
    let fresh = tether_config::default_vault_key_file(config_file);
    if legacy.exists() {
        tracing::warn!(
            key = %legacy.display(),
            "the vault key sits inside state_dir, beside the audit log: whoever can read {} can decrypt the vault and forge the audit chain. Stop tetherd, run `install -d -m 0700 {dir} && mv {} {}` (or set vault.key_file), then start it again",
            config.state_dir.display(),
            legacy.display(),
            fresh.display(),
            dir = fresh.parent().map_or_else(String::new, |d| d.display().to_string()),
        );
        vc.key_file = Some(legacy);
    } else {
        vc.key_file = Some(fresh);
    }
    vc
}

/// The config file `tether_config::load` reads for `file`.
pub fn config_file_in_use(file: Option<&Path>) -> Option<PathBuf> {
    match file {
        Some(f) => Some(f.to_path_buf()),
        None => Some(PathBuf::from(tether_config::DEFAULT_CONFIG_PATH)).filter(|p| p.exists()),
    }
}
