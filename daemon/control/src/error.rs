use std::path::PathBuf;

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// The socket's directory does not exist and is not one we create ourselves.
    #[error("the control socket's directory {} does not exist; create it or change control.socket", dir.display())]
    SocketDirMissing {
        /// The missing directory.
        dir: PathBuf,
    },
    /// Another daemon answers on the socket.
    #[error("another tetherd is running (pid {pid}) on {}; stop it first or choose another control.socket", socket.display())]
    AlreadyRunning {
        /// Its process id (from its socket's peer credentials), 0 if unknown.
        pid: i32,
        /// The contested socket.
        socket: PathBuf,
    },
    /// Something that is not a socket sits at the socket path; we never delete it.
    #[error("{} exists and is not a socket; refusing to replace it — move it away or change control.socket", path.display())]
    NotASocket {
        /// The path.
        path: PathBuf,
    },
    /// `control.group` names a group that does not exist.
    #[error(
        "control.group {group:?} does not exist; create it (groupadd {group}) or unset control.group"
    )]
    UnknownGroup {
        /// The configured group name.
        group: String,
    },
    /// `metrics.listen` is not an `IP:port` address.
    #[error("metrics.listen {listen:?} is not an IP:port address like \"127.0.0.1:9120\"")]
    MetricsAddress {
        /// The configured value.
        listen: String,
    },
    /// The metrics listener's port could not be bound.
    #[error(
        "cannot listen for metrics on {addr}: {source}; choose another metrics.listen or stop what uses the port"
    )]
    MetricsBind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The bearer token named by `metrics.token_name` could not be read from the vault.
    #[error(
        "cannot read the metrics bearer token {name:?} from the vault: {reason}; store it with `tether secret set {name}` (or unset metrics.token_name)"
    )]
    MetricsToken {
        /// The secret's name.
        name: String,
        /// Why (the vault's error, which never contains the value).
        reason: String,
    },
    /// Creating, binding or setting permissions on the socket failed.
    #[error("cannot {action} control socket {}: {source}", path.display())]
    Io {
        /// What we were doing ("bind", "chmod", "chown", "create the directory of").
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The generated OpenAPI document could not be built (a bug in an api type's schema).
    #[error("cannot generate the OpenAPI document: {0}; this is a bug in tether-api's types")]
    OpenApi(String),
}
