//! The crate's one error type.

/// What went wrong with an SSH connection or command. Every message names the host and says
/// what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SshError {
    /// A key could not be read or parsed.
    #[error("invalid {what}: {reason}")]
    InvalidKey {
        /// Which key (`pinned host key of web1`, `hub client key`).
        what: String,
        /// Why.
        reason: String,
    },
    /// The tunnel stream to the target could not be opened.
    #[error("cannot reach {host} over the tunnel: {reason} (is it online? `tether vpn status`)")]
    Connect {
        /// The target.
        host: String,
        /// Why.
        reason: String,
    },
    /// Opening the connection (tunnel stream, SSH handshake, authentication) took too long.
    #[error(
        "{host} did not complete the SSH handshake within {secs:.1} s (is it online? raise --connect-timeout if the link is slow)"
    )]
    ConnectTimeout {
        /// The target.
        host: String,
        /// The timeout, seconds.
        secs: f64,
    },
    /// The target presented a host key other than the one pinned at enrollment.
    #[error(
        "{host} presented SSH host key {presented}, but {pinned} was pinned at enrollment; refusing to talk to it (if the machine was rebuilt, re-enroll it: tether vpn reinvite {host})"
    )]
    HostKeyMismatch {
        /// The target.
        host: String,
        /// Fingerprint of the key it presented.
        presented: String,
        /// Fingerprint of the pinned key.
        pinned: String,
    },
    /// The target refused the hub's client key.
    #[error(
        "{host} refused the hub's SSH client key (was it enrolled with another hub? re-enroll it: tether vpn reinvite {host})"
    )]
    AuthRejected {
        /// The target.
        host: String,
    },
    /// The target's circuit breaker is open after repeated connection failures.
    #[error(
        "not trying {host} for another {retry_in_secs} s: its last {failures} connection attempts failed (circuit breaker open)"
    )]
    CircuitOpen {
        /// The target.
        host: String,
        /// Seconds until a probe is allowed.
        retry_in_secs: u64,
        /// Consecutive failures that opened it.
        failures: u32,
    },
    /// The SSH session failed after it was established.
    #[error("SSH to {host} failed: {reason}")]
    Protocol {
        /// The target.
        host: String,
        /// Why.
        reason: String,
    },
    /// The target refused the command (its own policy).
    #[error("{host} refused the command: {reason}")]
    Refused {
        /// The target.
        host: String,
        /// The target's reason.
        reason: String,
    },
    /// The connection was closed by the hub (revoke, `hosts rm`, shutdown) while in use.
    #[error("the connection to {host} was closed: {why}")]
    Closed {
        /// The target.
        host: String,
        /// Why (`host revoked`, `daemon shutting down`).
        why: String,
    },
    /// The target refused or failed a file operation (confinement, policy, size, digest, disk).
    #[error("{host}: {message}")]
    File {
        /// The target.
        host: String,
        /// `escape`, `denied`, `outside_roots`, `hard_link`, `not_found`, `too_large`,
        /// `hash_mismatch`, `no_space`, `policy`, `disabled`, ... (see `tether_files::FilesError::code`).
        code: String,
        /// The target's message.
        message: String,
    },
    /// The caller cancelled the command (client gone, timeout, Ctrl-C); the remote command was
    /// signalled and its channel closed.
    #[error("cancelled")]
    Cancelled,
    /// `ssh.run_as` names a user commands cannot run as.
    #[error("ssh.run_as = {user:?}: {reason}")]
    RunAs {
        /// The configured user.
        user: String,
        /// Why, and what to do.
        reason: String,
    },
    /// Forward mode: the local sshd could not be reached.
    #[error(
        "cannot reach the local sshd at {addr} (ssh.forward_to): {reason}; is sshd running and listening there?"
    )]
    Forward {
        /// `ssh.forward_to`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The pool has been shut down.
    #[error("the SSH pool is shut down (the daemon is stopping)")]
    ShutDown,
}
