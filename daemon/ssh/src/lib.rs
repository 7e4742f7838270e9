//! SSH inside the tunnel (layer 2 of the design).
//!
//! * **Target side** ([`server`]): a russh server that the daemon runs on its tunnel's
//!   userspace TCP/IP stack at its overlay address, port [`SSH_PORT`] — never on a host
//!   interface. It accepts only the hub's client key from the enrollment, runs `exec` requests
//!   through `/bin/sh -c` with an environment allow-list, and asks an [`server::ExecGate`] (the
//!   target's own policy and audit, wired by `tetherd`) before anything runs.
//! * **Hub side** ([`pool`]): one multiplexed russh client connection per target over a
//!   tunnel stream, reused across requests, with keepalive, idle expiry, a bounded number of
//!   channels per connection, the target's host key checked against the key pinned at
//!   enrollment (no trust on first use) and a per-target [`breaker::Breaker`].
//!
//! Both sides negotiate only [`algorithms::preferred`]: curve25519-sha256, ssh-ed25519,
//! chacha20-poly1305@openssh.com / aes256-gcm@openssh.com. No SHA-1, no CBC.
//!
//! The protocol bookkeeping that is not russh's — the circuit breaker and the pool's idle
//! expiry — takes the time as an argument, so it is tested without sleeping.
#![forbid(unsafe_code)]

pub mod algorithms;
pub mod breaker;
mod error;
mod interactive;
pub mod keys;
pub mod operator;
pub mod pool;
pub mod pty;
pub mod server;

pub use error::SshError;

/// The overlay TCP port the target's SSH server listens on inside the tunnel.
pub const SSH_PORT: u16 = 22;

/// The user name the hub presents; the target runs commands as its own user whatever it is.
pub const HUB_USER: &str = "tether";
