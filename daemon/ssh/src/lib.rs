//! SSH inside the tunnel (layer 2 of the design).
//!
//! * **Target side** ([`server`]): a russh server that the daemon runs on its tunnel's
//!   userspace TCP/IP stack at its overlay address, port [`SSH_PORT`] — never on a host
//!   interface. It accepts only the hub's client key from the enrollment, runs `exec` requests
//!   through `/bin/sh -c` with an environment allow-list as the `ssh.run_as` user
//!   ([`run_as::RunAs`]), and asks an [`server::ExecGate`] (the target's own policy and audit,
//!   wired by `tetherd`) before anything runs.
//! * **Target side, forward mode** ([`forward`]): the overlay port 22 is relayed to the
//!   machine's own `sshd`; the hub pins sshd's host key at enrollment and logs in as `run_as`.
//! * **Hub side** ([`pool`]): one multiplexed russh client connection per target over a
//!   tunnel stream, reused across requests, with keepalive, idle expiry, a bounded number of
//!   channels per connection, the target's host key checked against the key pinned at
//!   enrollment (no trust on first use) and a per-target [`breaker::Breaker`].
//!
//! * **Files** ([`sftp`]): the target serves the `sftp` subsystem through the confinement of
//!   `tether-files`; the hub's [`sftp::SftpClient`] runs over [`pool::Pool::subsystem`].
//!
//! Both sides negotiate only [`algorithms::preferred`]: curve25519-sha256, ssh-ed25519,
//! chacha20-poly1305@openssh.com / aes256-gcm@openssh.com. No SHA-1, no CBC.
//!
//! The protocol bookkeeping that is not russh's — the circuit breaker and the pool's idle
//! expiry — takes the time as an argument, so it is tested without sleeping.
// `unsafe` only in `run_as` (the privilege drop in `pre_exec`, the fallback path) and `spawn`
// (starting a command with `clone(CLONE_VM | CLONE_VFORK)`), with SAFETY comments.
#![deny(unsafe_code)]

pub mod algorithms;
pub mod breaker;
mod error;
pub mod forward;
mod interactive;
pub mod keys;
pub mod operator;
pub mod pool;
pub mod pty;
pub mod run_as;
pub mod server;
pub mod sftp;
pub mod sftp_helper;
pub mod spawn;

pub use error::SshError;

/// The overlay TCP port the target's SSH server listens on inside the tunnel.
pub const SSH_PORT: u16 = 22;

/// The user name the hub presents to Tether's own SSH server (which runs commands as its
/// `ssh.run_as` user whatever the name); a forward-mode target names its sshd account instead.
pub const HUB_USER: &str = "tether";
