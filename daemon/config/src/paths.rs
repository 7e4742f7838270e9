use std::path::PathBuf;

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
