//! The vocabulary the node, its peers and its stream stack share: ids, what the node hands its
//! driver ([`Transmit`], [`Event`]), and why and how often packets were dropped.
//!
//! A leaf module: `peer` and `stack` depend on it, never on each other or on the node.

use std::net::SocketAddr;

use crate::PublicKey;

/// Identifies a peer within one [`Node`](super::Node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PeerId(pub u32);

/// Identifies an overlay TCP stream within one [`Node`](super::Node).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// Identifies a relay registered with [`Node::add_relay`](super::Node::add_relay) (its index in
/// registration order; the order is also the failover order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub u16);

/// Where a [`Transmit`] goes: straight to a UDP endpoint, or through a relay to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    /// A UDP datagram to this address (the peer's endpoint, or whoever sent us a handshake).
    Udp(SocketAddr),
    /// A datagram through `relay`, addressed to the peer's WireGuard public key.
    Relay {
        /// The relay to send through.
        relay: RelayId,
        /// The peer's WireGuard public key (the relay routes by key).
        key: PublicKey,
    },
}

/// One WireGuard datagram the driver must send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Destination: the peer's current path.
    pub dst: Dest,
    /// The WireGuard message.
    pub payload: Vec<u8>,
}

/// Something the driver may want to react to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A handshake with the peer completed and it was down before.
    PeerUp(PeerId),
    /// The peer's keys expired without a new handshake, a handshake attempt gave up, or it was
    /// removed.
    PeerDown(PeerId),
    /// No handshake for longer than the health limit: raise `vpn_peer_unhealthy`.
    PeerUnhealthy(PeerId),
    /// A peer that was unhealthy completed a handshake again.
    PeerHealthy(PeerId),
    /// The watchdog rebuilt the peer's WireGuard state.
    PeerRebuilt(PeerId),
    /// An outgoing stream finished its TCP handshake.
    StreamConnected(StreamId),
    /// A listener on `port` has a new connection to [`Node::accept`](super::Node::accept).
    StreamIncoming {
        /// The listening port.
        port: u16,
        /// The new stream.
        stream: StreamId,
    },
    /// The stream is closed (finished, reset, refused, or its peer was removed).
    StreamClosed(StreamId),
    /// The peer's datagrams now take another path: raise `vpn_path_switch`. Labels are `direct`
    /// or `relay:NAME`, as in [`PeerStatus::path`](super::PeerStatus::path).
    PathChanged {
        /// The peer.
        peer: PeerId,
        /// The path before.
        from: String,
        /// The path now.
        to: String,
    },
}

/// Why a packet was dropped (label of `tether_vpn_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum DropReason {
    /// A peer sent an inner packet whose source is not its overlay IP.
    SpoofedSource,
    /// A target sent a packet to another target's overlay IP (the hub never forwards).
    ForwardDenied,
    /// The inner destination is not this node.
    NotForUs,
    /// An outgoing packet had no peer to go to.
    NoRoute,
    /// The peer has no known endpoint yet.
    NoEndpoint,
    /// A datagram from an unknown key or for an unknown session index.
    UnknownPeer,
    /// A datagram that is not a WireGuard message, or an inner packet that is not IPv4.
    Malformed,
    /// WireGuard rejected it: bad MAC/tag, replay, no session, expired, rate limited.
    Rejected,
    /// A relay delivered a datagram from a key that is not one of our peers.
    RelayUnknownKey,
}

impl DropReason {
    /// All reasons, in label order.
    pub const ALL: [DropReason; DropReason::COUNT] = [
        DropReason::SpoofedSource,
        DropReason::ForwardDenied,
        DropReason::NotForUs,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::UnknownPeer,
        DropReason::Malformed,
        DropReason::Rejected,
        DropReason::RelayUnknownKey,
    ];

    /// How many reasons there are.
    pub const COUNT: usize = 9;

    /// The snake_case label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::SpoofedSource => "spoofed_source",
            DropReason::ForwardDenied => "forward_denied",
            DropReason::NotForUs => "not_for_us",
            DropReason::NoRoute => "no_route",
            DropReason::NoEndpoint => "no_endpoint",
            DropReason::UnknownPeer => "unknown_peer",
            DropReason::Malformed => "malformed",
            DropReason::Rejected => "rejected",
            DropReason::RelayUnknownKey => "relay_unknown_key",
        }
    }

    pub(super) fn idx(self) -> usize {
        self as usize
    }
}

/// Node-wide monotonic counters (they survive peer removal), for metrics.
#[derive(Debug, Clone, Default)]
pub struct Totals {
    /// Completed handshakes.
    pub handshakes: u64,
    /// Datagram bytes received from peers.
    pub rx_bytes: u64,
    /// Datagram bytes sent to peers.
    pub tx_bytes: u64,
    /// Drops by reason ([`DropReason::ALL`] order).
    pub drops: [u64; DropReason::COUNT],
}

/// One relay as registered with the node, for status.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RelayStatus {
    /// Its name (the `NAME` of `relay:NAME`).
    pub name: String,
    /// Whether the driver holds a working connection to it.
    pub connected: bool,
}
