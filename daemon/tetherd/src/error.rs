use std::path::PathBuf;

/// Why `tetherd` stopped with an error. Exit codes: 2 for configuration problems, 3 otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The configuration is unreadable or invalid.
    #[error("{0}\nhint: `tether config check FILE` lists every problem")]
    Config(#[from] tether_config::ConfigError),
    /// The control socket could not be set up.
    #[error(transparent)]
    Control(#[from] tether_control::ControlError),
    /// The state directory could not be created or secured.
    #[error("cannot prepare state_dir {}: {source}; create it or point state_dir somewhere writable", path.display())]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Another tetherd holds the state directory's lock.
    #[error(
        "state_dir {} is in use by another tetherd{}; two daemons on one state directory would corrupt its audit chain. Stop that daemon first, or give this one its own state_dir",
        path.display(),
        pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    StateDirInUse {
        /// The directory.
        path: PathBuf,
        /// The pid recorded by the daemon holding the lock, if readable.
        pid: Option<u32>,
    },
    /// The state directory is neither empty (a first start) nor complete.
    #[error(
        "state_dir {} is not empty but incomplete: missing {}; it holds {}. tetherd changed nothing: restore the missing files from a backup, or move the directory aside to start as a new installation",
        path.display(),
        missing.join(", "),
        present.join(", ")
    )]
    StateDirIncomplete {
        /// The directory.
        path: PathBuf,
        /// What is missing, relative to it.
        missing: Vec<String>,
        /// Some of what it holds, relative to it.
        present: Vec<String>,
    },
    /// The async runtime or signal handlers could not start.
    #[error("cannot start: {0}")]
    Runtime(#[source] std::io::Error),
    /// Secure memory, process hardening or the vault backend failed.
    #[error(transparent)]
    Vault(#[from] tether_vault::VaultError),
    /// The policy could not be compiled (already reported by config validation; kept for safety).
    #[error("policy: {0}")]
    Policy(#[from] tether_policy::PolicyError),
    /// The policy file could not be read.
    #[error(transparent)]
    PolicyFile(#[from] tether_config::PolicyFileError),
    /// The audit log could not be opened (damaged log, keys, permissions).
    #[error(transparent)]
    Audit(#[from] tether_audit::AuditError),
    /// Tunnel or enrollment setup failed; the message says what and how to fix it.
    #[error("{0}")]
    Membership(String),
    /// A tunnel operation during setup failed (adding a peer, listening on an overlay port).
    #[error("{what}: {source}")]
    Tunnel {
        /// What was being set up.
        what: String,
        /// The tunnel's error (says what to do).
        #[source]
        source: tether_tunnel::TunnelError,
    },
    /// Enrollment with the hub failed (bad, expired, used or foreign token; hub unreachable).
    #[error(transparent)]
    Enroll(tether_enroll::EnrollError),
    /// The plugin manifest or a plugin could not be loaded (signature, limits, bad component).
    #[error(
        "plugins: {0}\nhint: fix the manifest or the plugin, or unset plugins_manifest to start without plugins"
    )]
    Plugins(String),
    /// Alert routing or an audit sink's cursor could not be set up.
    #[error(transparent)]
    Alerts(#[from] tether_alerts::AlertsError),
    /// The approval store (`state_dir/approvals`) could not be opened or read.
    #[error(
        "approvals: {0}\nhint: check that state_dir/approvals is a directory tetherd may write"
    )]
    Approvals(#[from] tether_approvals::ApprovalError),
    /// The command line is wrong.
    #[error("{0}")]
    Usage(String),
    /// `[ssh]` cannot be applied on this machine (`run_as` needs root or names no user; the
    /// forward-mode host key file is unreadable).
    #[error(
        "{0}\nhint: fix [ssh] in the config (`tether config check FILE`), or run tetherd as root"
    )]
    Ssh(#[from] tether_ssh::SshError),
    /// The relay role's certificate or key files (or another `[relay]` setting) can't be used.
    #[error("{0}\nhint: fix [relay] in the config (`tether config check FILE`)")]
    RelayConfig(String),
    /// The relay could not start or run (listener, key material, files in state_dir).
    #[error("relay: {0}")]
    Relay(String),
    /// Metrics registration failed (a bug: duplicate metric names).
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl DaemonError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) | DaemonError::Policy(_) | DaemonError::PolicyFile(_) => 2,
            DaemonError::Vault(tether_vault::VaultError::Config { .. }) => 2,
            DaemonError::Enroll(_) | DaemonError::Usage(_) | DaemonError::Plugins(_) => 2,
            DaemonError::Control(
                tether_control::ControlError::MetricsToken { .. }
                | tether_control::ControlError::MetricsAddress { .. },
            ) => 2,
            DaemonError::StateDirInUse { .. } | DaemonError::StateDirIncomplete { .. } => 2,
            DaemonError::Ssh(_) | DaemonError::RelayConfig(_) => 2,
            _ => 3,
        }
    }
}
