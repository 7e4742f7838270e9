use std::path::{Path, PathBuf};

/// The control socket of a system-wide `tetherd` (run by systemd as root or the `tether` user).
pub fn system_socket_path() -> PathBuf {
    PathBuf::from("/run/tether/tetherd.sock")
}

/// The per-user control socket used by unprivileged daemons such as `tether demo`:
/// `$XDG_RUNTIME_DIR/tether/tetherd.sock`, or `/tmp/tether-$UID/tetherd.sock` without one.
pub fn user_socket_path() -> PathBuf {
    runtime_dir().join("tetherd.sock")
}

/// The socket a daemon binds when `control.socket` is not set: the system path for root,
/// the per-user path for everyone else.
pub fn default_socket_path() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        system_socket_path()
    } else {
        user_socket_path()
    }
}

/// `state_dir` when not set: `/var/lib/tether` for root, `$XDG_STATE_HOME/tether`
/// (or `~/.local/state/tether`) for everyone else.
pub fn default_state_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/tether");
    }
    if let Some(dir) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("tether");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".local/state/tether");
    }
    runtime_dir().join("state")
}

fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("tether"),
        None => PathBuf::from(format!("/tmp/tether-{}", nix::unistd::getuid())),
    }
}

/// Where the file backend's key lives when `vault.key_file` is not set: always outside
/// `state_dir`, so that whoever can read the state directory (audit log, vault files) cannot
/// read the key too.
///
/// In order: `$CREDENTIALS_DIRECTORY/vault.key` when systemd passed a credential of that name;
/// the directory of the config file in use (`/etc/tether/` for `/etc/tether/tetherd.toml`);
/// `/etc/tether` for root; `$XDG_CONFIG_HOME/tether` (or `~/.config/tether`) for everyone else.
pub fn default_vault_key_file(config_file: Option<&Path>) -> PathBuf {
    if let Some(creds) = std::env::var_os("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
        let p = PathBuf::from(creds).join("vault.key");
        if p.is_file() {
            return p;
        }
    }
    // Absolute first: `--config hub.toml` (started in the file's directory) has an empty
    // parent, and its key still belongs beside it, not in a fallback location.
    if let Some(dir) = config_file
        .map(config_file_path)
        .as_deref()
        .and_then(Path::parent)
    {
        return dir.join("vault.key");
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/etc/tether/vault.key");
    }
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir).join("tether/vault.key");
    }
    if let Some(home) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(home).join(".config/tether/vault.key");
    }
    runtime_dir().join("vault.key")
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The config file `file` as an absolute path whose directory is the real one (`..` and
/// symlinks in it resolved, the file name kept): what relative paths in the file are resolved
/// against, and how it is named in messages.
pub(crate) fn config_file_path(file: &Path) -> PathBuf {
    let abs = absolute(file);
    match (abs.parent(), abs.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir).map_or(abs.clone(), |d| d.join(name)),
        _ => abs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_vault_key_sits_beside_the_config_file_never_in_state_dir() {
        let key = default_vault_key_file(Some(Path::new("/srv/tether/hub/tetherd.toml")));
        assert_eq!(key, PathBuf::from("/srv/tether/hub/vault.key"));
        let here = std::env::current_dir().expect("cwd");
        let key = default_vault_key_file(Some(Path::new("hub.toml")));
        assert_eq!(
            key,
            here.join("vault.key"),
            "a bare file name is in the cwd"
        );
        let key = default_vault_key_file(Some(Path::new("conf/./hub.toml")));
        assert_eq!(key, here.join("conf/vault.key"));
        let key = default_vault_key_file(None);
        assert!(!key.starts_with(default_state_dir()), "{}", key.display());
        assert!(key.ends_with("vault.key"));
    }
}
