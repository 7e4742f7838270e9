//! Userspace WireGuard (boringtun) + userspace TCP/IP (smoltcp): a sans-IO [`Node`] and a thin
//! tokio driver ([`Tunnel`] / [`TunnelHandle`]).
//!
//! No TUN device and no kernel module: every tetherd speaks WireGuard over one UDP socket (one
//! boringtun `Tunn` per peer) and runs its own TCP/IP stack (smoltcp) on the decrypted packets.
//! The hub is the centre of a star: it accepts tunnels from enrolled targets and never forwards
//! packets between targets.
//!
//! # Paths
//! Each peer's datagrams go straight over UDP (`direct`) or through a relay (`relay:NAME`,
//! [`tether_relay`] over TLS 1.3) when UDP does not work; the node decides per peer on its clock
//! ([`PathConfig`]: fall back after 5 s of unanswered handshakes or data, probe direct every 3 s
//! while relayed, fail over between relays in order) and reports [`Event::PathChanged`]. The
//! WireGuard session and the streams are the same whatever the path. The driver keeps one
//! connection per configured relay ([`RelayEndpoint`]).
//!
//! # Time
//! The [`Node`] is driven by the `now` its caller passes in. boringtun 0.7.1 however reads its own
//! clock (`CLOCK_BOOTTIME`) inside `Tunn` and offers no way to inject one except a compile-time
//! `mock-instant` feature that is process-global and would leak into production builds through
//! feature unification. The node therefore runs the WireGuard timer rules that matter for
//! liveness (handshake retransmit after 5 s, give-up after 90 s, rekey after 120 s, dead-peer
//! re-handshake after 15 s without an answer, passive and persistent keepalive) itself, on the
//! injected clock, through boringtun's public API (`format_handshake_initiation(force)`,
//! `encapsulate(&[])`). boringtun's own `update_timers` is still called once per second so that its
//! real-time duties (key expiry after 180 s / zeroing after 540 s, rate-limiter and cookie reset)
//! keep working; under simulated time those real-time duties simply do not fire.
#![forbid(unsafe_code)]

mod device;
mod driver;
mod error;
mod health;
mod keys;
mod metrics;
mod node;
mod udp;

pub use driver::{RelayEndpoint, Tunnel, TunnelConfig, TunnelHandle, TunnelListener, TunnelStream};
pub use error::TunnelError;
pub use health::{HealthConfig, HealthState};
pub use keys::{PublicKey, SecretKey};
pub use metrics::TunnelMetrics;
pub use node::{
    Changed, DEFAULT_HUB_IP, DEFAULT_MTU, DEFAULT_PREFIX_LEN, DEFAULT_TCP_BUFFER,
    DEFAULT_TCP_BUFFER_MAX, DEFAULT_TCP_MEMORY_BUDGET, Dest, DropReason, Event, FIXED_TCP_BUFFER,
    MAX_STREAMS_PER_PEER, Node, NodeConfig, NodeRole, PathConfig, PeerConfig, PeerId, PeerStatus,
    RelayId, RelayStatus, StreamId, Transmit,
};
pub use tether_relay::RelayTarget;
