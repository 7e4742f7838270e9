//! The crate's one error enum.

use std::net::Ipv4Addr;

/// Why a tunnel operation failed. Every message says what failed and what to do next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// A key given as base64 text could not be decoded into 32 bytes.
    #[error(
        "WireGuard key is malformed ({0}); expected 44 characters of base64 as printed by `wg genkey`/`wg pubkey`"
    )]
    BadKey(&'static str),
    /// The operating system's random generator failed while generating a key or a seed.
    #[error("the OS random generator failed ({0}); check /dev/urandom and the getrandom syscall")]
    Random(String),
    /// A peer was added with an overlay IP outside the node's subnet, or equal to the node's own IP.
    #[error(
        "overlay IP {ip} is not usable for a peer here ({why}); pick a free address in the overlay subnet"
    )]
    BadOverlayIp {
        /// The rejected address.
        ip: Ipv4Addr,
        /// Why it was rejected.
        why: &'static str,
    },
    /// A peer with the same public key or overlay IP already exists.
    #[error(
        "a peer with the same {0} already exists; remove it first (`tether vpn revoke`) or pick another"
    )]
    DuplicatePeer(&'static str),
    /// The peer id does not name a peer of this node (it was removed or never existed).
    #[error("no such peer (id {0}); it may have been revoked; list peers with `tether vpn status`")]
    UnknownPeer(u32),
    /// No peer owns the destination overlay IP, so there is no tunnel to send it through.
    #[error("no tunnel peer for overlay IP {0}; is the host enrolled? (`tether vpn status`)")]
    NoRoute(Ipv4Addr),
    /// Something already listens on this overlay TCP port.
    #[error("overlay TCP port {0} is already being listened on; close the other listener first")]
    AlreadyListening(u16),
    /// All local overlay TCP ports are in use.
    #[error("no free local overlay TCP port; too many open tunnel streams, close some")]
    PortsExhausted,
    /// The overlay TCP connection could not be opened.
    #[error(
        "could not open an overlay TCP connection to {ip}:{port} ({why}); check that the peer is up and listens on that port"
    )]
    Connect {
        /// The destination overlay IP.
        ip: Ipv4Addr,
        /// The destination port.
        port: u16,
        /// What went wrong.
        why: String,
    },
    /// The UDP socket could not be bound or used.
    #[error(
        "tunnel UDP socket failed on {addr} ({source}); check that the address is free and allowed"
    )]
    Socket {
        /// The address involved.
        addr: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The driver task has stopped (the tunnel was shut down).
    #[error("the tunnel driver has stopped; restart tetherd or recreate the tunnel")]
    Stopped,
    /// Registering a prometheus metric failed (usually: registered twice in one registry).
    #[error("registering tunnel metrics failed ({0}); each registry can hold one tunnel's metrics")]
    Metrics(String),
}
