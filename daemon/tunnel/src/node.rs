//! The sans-IO core: WireGuard peers (boringtun `Tunn`) + a userspace TCP/IP stack (smoltcp).
//!
//! The [`Node`] knows nothing about sockets, tasks or the wall clock: its driver feeds it UDP
//! datagrams and the current time and drains datagrams to send ([`Node::poll_transmit`]), events
//! ([`Node::poll_event`]) and the next deadline ([`Node::poll_timeout`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::errors::WireGuardError;
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};

use crate::device::QueueDevice;
use crate::health::{HealthConfig, HealthState, HealthTrack, Verdict};
use crate::{PublicKey, SecretKey, TunnelError};

/// The hub's overlay address in the default subnet `10.99.0.0/16`.
pub const DEFAULT_HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// Prefix length of the default overlay subnet.
pub const DEFAULT_PREFIX_LEN: u8 = 16;
/// Inner MTU: 1420 is WireGuard's default and fits IPv4 and IPv6 underlays with a 1500 MTU.
pub const DEFAULT_MTU: usize = 1420;
/// Per-direction TCP socket buffer of an overlay stream. Chosen by measurement (BENCHMARKS.md,
/// "Tunnel"): 256 KiB reached the loopback plateau; 1 MiB gained nothing and quadruples memory.
pub const DEFAULT_TCP_BUFFER: usize = 256 * 1024;

// WireGuard timer constants (whitepaper §6.1).
const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);
const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);
const REKEY_ATTEMPT_TIME: Duration = Duration::from_secs(90);
const REKEY_TIMEOUT: Duration = Duration::from_secs(5);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often per-peer WireGuard timers are evaluated.
const TICK: Duration = Duration::from_secs(1);
/// A released stream that the remote never finishes closing is aborted after this long.
const LINGER: Duration = Duration::from_secs(60);
/// Listening sockets kept in LISTEN state per port (each accepts one SYN).
const LISTEN_BACKLOG: usize = 2;
/// Max half-open (SYN received, not yet accepted) sockets per port.
const MAX_PENDING: usize = 8;
/// Handshake initiations accepted per second from unknown senders before cookies are demanded.
const HANDSHAKE_RATE_LIMIT: u64 = 100;
const EPHEMERAL_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Which end of the star this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeRole {
    /// The centre: many target peers; drops any packet not addressed to itself.
    Hub,
    /// A leaf: one peer (the hub); the whole overlay subnet is routed to it.
    Target,
}

/// How to build a [`Node`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's WireGuard private key.
    pub private_key: SecretKey,
    /// This node's overlay address (the hub is `.1` of the subnet by convention).
    pub overlay_ip: Ipv4Addr,
    /// Overlay subnet prefix length (default 16).
    pub prefix_len: u8,
    /// Hub or target.
    pub role: NodeRole,
    /// Per-direction TCP buffer for each stream.
    pub tcp_buffer: usize,
    /// Inner IP MTU.
    pub mtu: usize,
    /// Health / watchdog settings.
    pub health: HealthConfig,
}

impl NodeConfig {
    /// A config with the defaults: subnet /16, 256 KiB stream buffers, MTU 1420.
    pub fn new(private_key: SecretKey, overlay_ip: Ipv4Addr, role: NodeRole) -> Self {
        NodeConfig {
            private_key,
            overlay_ip,
            prefix_len: DEFAULT_PREFIX_LEN,
            role,
            tcp_buffer: DEFAULT_TCP_BUFFER,
            mtu: DEFAULT_MTU,
            health: HealthConfig::default(),
        }
    }
}

/// One peer to add.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Human name (the host name on the hub, "hub" on a target).
    pub name: String,
    /// The peer's WireGuard public key.
    pub public_key: PublicKey,
    /// The peer's overlay IP; its allowed IPs are exactly this /32.
    pub overlay_ip: Ipv4Addr,
    /// Where to send to until the peer is heard from (then the endpoint roams).
    pub endpoint: Option<SocketAddr>,
    /// Send a keepalive every this many seconds (for NAT); `None` = off.
    pub persistent_keepalive: Option<u16>,
}

/// Identifies a peer within one [`Node`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct PeerId(pub u32);

/// Identifies an overlay TCP stream within one [`Node`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StreamId(pub u64);

/// One UDP datagram the driver must send.
#[derive(Debug, Clone)]
pub struct Transmit {
    /// Destination (the peer's current endpoint).
    pub dst: SocketAddr,
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
    /// A listener on `port` has a new connection to [`Node::accept`].
    StreamIncoming {
        /// The listening port.
        port: u16,
        /// The new stream.
        stream: StreamId,
    },
    /// The stream is closed (finished, reset, refused, or its peer was removed).
    StreamClosed(StreamId),
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
}

impl DropReason {
    /// All reasons, in label order.
    pub const ALL: [DropReason; 8] = [
        DropReason::SpoofedSource,
        DropReason::ForwardDenied,
        DropReason::NotForUs,
        DropReason::NoRoute,
        DropReason::NoEndpoint,
        DropReason::UnknownPeer,
        DropReason::Malformed,
        DropReason::Rejected,
    ];

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
        }
    }

    fn idx(self) -> usize {
        self as usize
    }
}

/// One peer as shown by `tether vpn status`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    /// Peer id within the node.
    pub id: PeerId,
    /// Human name.
    pub name: String,
    /// Base64 public key.
    pub public_key: String,
    /// Overlay IP.
    pub overlay_ip: Ipv4Addr,
    /// Current endpoint (roams to wherever authenticated packets come from).
    pub endpoint: Option<SocketAddr>,
    /// Seconds since the last completed handshake (`None` = never).
    pub last_handshake_secs: Option<u64>,
    /// Handshake round-trip time of the last handshake we initiated, in milliseconds.
    pub rtt_ms: Option<u64>,
    /// Bytes received from the peer (WireGuard datagrams).
    pub rx_bytes: u64,
    /// Bytes sent to the peer (WireGuard datagrams).
    pub tx_bytes: u64,
    /// Completed handshakes.
    pub handshakes: u64,
    /// Whether a session is currently established.
    pub up: bool,
    /// Health per the watchdog.
    pub health: HealthState,
    /// Watchdog rebuilds so far.
    pub rebuilds: u64,
    /// Drops attributed to this peer, by reason label.
    pub drops: BTreeMap<&'static str, u64>,
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
    pub drops: [u64; 8],
}

/// Readiness of a stream, for drivers that park tasks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Readiness {
    /// `recv` would not return `WouldBlock`.
    pub readable: bool,
    /// `send` would not return `WouldBlock`.
    pub writable: bool,
    /// The TCP handshake completed at some point.
    pub connected: bool,
    /// The stream is closed for good.
    pub closed: bool,
}

#[derive(Debug, Clone, Copy)]
struct Attempt {
    started: Instant,
    last_sent: Instant,
}

/// The WireGuard timer state the node runs on its injected clock.
#[derive(Debug, Default)]
struct WgTimers {
    attempt: Option<Attempt>,
    session_at: Option<Instant>,
    initiator: bool,
    last_sent: Option<Instant>,
    last_data_sent: Option<Instant>,
    last_recv: Option<Instant>,
    last_data_recv: Option<Instant>,
    last_persistent: Option<Instant>,
    dead_probe_for: Option<Option<Instant>>,
}

struct Peer {
    id: PeerId,
    index: u32,
    cfg: PeerConfig,
    tunn: Box<Tunn>,
    endpoint: Option<SocketAddr>,
    wg: WgTimers,
    up: bool,
    added_at: Instant,
    last_handshake: Option<Instant>,
    rtt: Option<Duration>,
    rx_bytes: u64,
    tx_bytes: u64,
    handshakes: u64,
    drops: [u64; 8],
    health: HealthTrack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Open,
    Closed,
}

struct StreamMeta {
    handle: SocketHandle,
    remote: Ipv4Addr,
    phase: Phase,
    reset: bool,
    aborted: bool,
    released_at: Option<Instant>,
    last_state: tcp::State,
}

#[derive(Default)]
struct Listener {
    sockets: Vec<SocketHandle>,
    ready: VecDeque<StreamId>,
}

/// One WireGuard endpoint plus its userspace TCP/IP stack. See the module docs.
pub struct Node {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    overlay_ip: Ipv4Addr,
    prefix_len: u8,
    role: NodeRole,
    tcp_buffer: usize,
    health_cfg: HealthConfig,
    peers: HashMap<PeerId, Peer>,
    by_index: HashMap<u32, PeerId>,
    by_ip: HashMap<Ipv4Addr, PeerId>,
    by_key: HashMap<[u8; 32], PeerId>,
    next_index: u32,
    next_port: u16,
    next_stream: u64,
    iface: Interface,
    device: QueueDevice,
    sockets: SocketSet<'static>,
    streams: HashMap<StreamId, StreamMeta>,
    listeners: HashMap<u16, Listener>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    epoch: Instant,
    now: Instant,
    dirty: bool,
    next_tick: Option<Instant>,
    next_health: Instant,
    rate_limiter: RateLimiter,
    scratch: Vec<u8>,
    totals: Totals,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("overlay_ip", &self.overlay_ip)
            .field("role", &self.role)
            .field("peers", &self.peers.len())
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

fn random_u64() -> Result<u64, TunnelError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| TunnelError::Random(e.to_string()))?;
    Ok(u64::from_le_bytes(b))
}

fn msg_type(p: &[u8]) -> u8 {
    if p.len() >= 4 { p[0] } else { 0 }
}

fn ipv4_dst(p: &[u8]) -> Option<Ipv4Addr> {
    if p.len() >= 20 && p[0] >> 4 == 4 {
        Some(Ipv4Addr::new(p[16], p[17], p[18], p[19]))
    } else {
        None
    }
}

fn since(now: Instant, t: Option<Instant>) -> Duration {
    t.map_or(Duration::MAX, |t| now.saturating_duration_since(t))
}

impl Peer {
    fn drop(&mut self, totals: &mut Totals, r: DropReason) {
        self.drops[r.idx()] += 1;
        totals.drops[r.idx()] += 1;
    }

    /// Queues one WireGuard message for this peer and records what it means for the timers.
    fn emit(
        &mut self,
        pkt: Vec<u8>,
        now: Instant,
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
    ) {
        match msg_type(&pkt) {
            1 => match &mut self.wg.attempt {
                Some(a) => a.last_sent = now,
                None => {
                    self.wg.attempt = Some(Attempt {
                        started: now,
                        last_sent: now,
                    })
                }
            },
            4 if pkt.len() > 32 => {
                self.wg.last_data_sent = Some(now);
            }
            _ => {}
        }
        self.wg.last_sent = Some(now);
        match self.endpoint {
            Some(dst) => {
                self.tx_bytes += pkt.len() as u64;
                totals.tx_bytes += pkt.len() as u64;
                out.push_back(Transmit { dst, payload: pkt });
            }
            None => self.drop(totals, DropReason::NoEndpoint),
        }
    }

    fn emit_result(
        &mut self,
        r: TunnResult<'_>,
        now: Instant,
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
    ) {
        match r {
            TunnResult::WriteToNetwork(p) => self.emit(p.to_vec(), now, out, totals),
            TunnResult::Err(WireGuardError::ConnectionExpired) | TunnResult::Done => {}
            TunnResult::Err(e) => {
                tracing::debug!(peer = %self.cfg.name, error = ?e, "wireguard timer error")
            }
            TunnResult::WriteToTunnelV4(..) | TunnResult::WriteToTunnelV6(..) => {}
        }
    }

    fn force_handshake(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
    ) {
        let r = self.tunn.format_handshake_initiation(buf, true);
        self.emit_result(r, now, out, totals);
    }

    fn keepalive(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
    ) {
        let r = self.tunn.encapsulate(&[], buf);
        self.emit_result(r, now, out, totals);
    }

    /// Runs the WireGuard timer rules on the injected clock. Returns events.
    fn tick(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        out: &mut VecDeque<Transmit>,
        totals: &mut Totals,
        events: &mut VecDeque<Event>,
    ) {
        // boringtun's own real-time duties (key expiry, rate limiter, cookies).
        let r = self.tunn.update_timers(buf);
        self.emit_result(r, now, out, totals);

        if let Some(a) = self.wg.attempt {
            if now.saturating_duration_since(a.started) >= REKEY_ATTEMPT_TIME {
                tracing::debug!(peer = %self.cfg.name, "handshake attempt gave up after 90 s");
                self.wg.attempt = None;
            } else if now.saturating_duration_since(a.last_sent) >= REKEY_TIMEOUT {
                self.force_handshake(now, buf, out, totals);
            }
        } else if let Some(s) = self.wg.session_at {
            let age = now.saturating_duration_since(s);
            let mut need = false;
            if self.wg.initiator {
                // Rekey on send after REKEY_AFTER_TIME (keepalives count, as in wireguard-go).
                if age >= REKEY_AFTER_TIME && self.wg.last_sent.is_some_and(|t| t > s) {
                    need = true;
                }
                if age >= REJECT_AFTER_TIME - KEEPALIVE_TIMEOUT - REKEY_TIMEOUT
                    && self.wg.last_data_recv.is_some_and(|t| t > s)
                {
                    need = true;
                }
            }
            // Sent data but heard nothing for KEEPALIVE + REKEY_TIMEOUT: the peer may have lost
            // its session (restart); start a new handshake, once per silence.
            let last_recv = self.wg.last_recv.or(Some(s));
            if self.wg.last_data_sent > last_recv
                && since(now, last_recv) >= KEEPALIVE_TIMEOUT + REKEY_TIMEOUT
                && self.wg.dead_probe_for != Some(last_recv)
            {
                self.wg.dead_probe_for = Some(last_recv);
                need = true;
            }
            if need && age < REJECT_AFTER_TIME * 3 {
                self.force_handshake(now, buf, out, totals);
            } else if self.wg.last_data_recv.is_some()
                && self.wg.last_data_recv > self.wg.last_sent
                && since(now, self.wg.last_sent) >= KEEPALIVE_TIMEOUT
            {
                // Passive keepalive: received data, sent nothing back for 10 s.
                self.keepalive(now, buf, out, totals);
            }
        }
        if let Some(k) = self.cfg.persistent_keepalive.filter(|k| *k > 0) {
            let due = since(now, self.wg.last_persistent.or(Some(self.added_at)))
                >= Duration::from_secs(u64::from(k));
            if due {
                self.wg.last_persistent = Some(now);
                // The keepalive side (a target behind NAT) keeps the session fresh even when it
                // was the responder: otherwise an idle hub-initiated session would only be
                // replaced after its keys expire (180 s), past the 3-minute health limit.
                let stale = since(now, self.wg.session_at) >= REKEY_AFTER_TIME;
                if stale && self.wg.attempt.is_none() {
                    self.force_handshake(now, buf, out, totals);
                } else {
                    self.keepalive(now, buf, out, totals);
                }
            }
        }
        if self.up && since(now, self.wg.session_at) >= REJECT_AFTER_TIME {
            self.up = false;
            events.push_back(Event::PeerDown(self.id));
        }
    }

    fn handshake_done(
        &mut self,
        now: Instant,
        initiator: bool,
        totals: &mut Totals,
        events: &mut VecDeque<Event>,
    ) {
        if initiator && let Some(a) = self.wg.attempt {
            self.rtt = Some(now.saturating_duration_since(a.last_sent));
        }
        self.wg.attempt = None;
        self.wg.session_at = Some(now);
        self.wg.initiator = initiator;
        self.wg.dead_probe_for = None;
        self.last_handshake = Some(now);
        self.handshakes += 1;
        totals.handshakes += 1;
        if !self.up {
            self.up = true;
            events.push_back(Event::PeerUp(self.id));
        }
    }

    fn status(&self, now: Instant) -> PeerStatus {
        PeerStatus {
            id: self.id,
            name: self.cfg.name.clone(),
            public_key: self.cfg.public_key.to_base64(),
            overlay_ip: self.cfg.overlay_ip,
            endpoint: self.endpoint,
            last_handshake_secs: self
                .last_handshake
                .map(|t| now.saturating_duration_since(t).as_secs()),
            rtt_ms: self.rtt.map(|d| d.as_millis() as u64),
            rx_bytes: self.rx_bytes,
            tx_bytes: self.tx_bytes,
            handshakes: self.handshakes,
            up: self.up,
            health: self.health.state,
            rebuilds: self.health.rebuilds_total,
            drops: DropReason::ALL
                .iter()
                .filter(|r| self.drops[r.idx()] > 0)
                .map(|r| (r.as_str(), self.drops[r.idx()]))
                .collect(),
        }
    }
}

impl Node {
    /// Builds a node at time `now`.
    pub fn new(cfg: NodeConfig, now: Instant) -> Result<Self, TunnelError> {
        let ip = cfg.overlay_ip;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(TunnelError::BadOverlayIp {
                ip,
                why: "not a unicast address",
            });
        }
        if cfg.prefix_len == 0 || cfg.prefix_len > 30 {
            return Err(TunnelError::BadOverlayIp {
                ip,
                why: "the subnet prefix must be 1..=30",
            });
        }
        let secret = cfg.private_key.inner().clone();
        let public = x25519::PublicKey::from(&secret);
        let mut device = QueueDevice::new(cfg.mtu);
        let mut icfg = Config::new(HardwareAddress::Ip);
        icfg.random_seed = random_u64()?;
        let mut iface = Interface::new(icfg, &mut device, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            // Capacity is IFACE_MAX_ADDR_COUNT (>= 1); a fresh interface has none.
            let _ = a.push(IpCidr::new(IpAddress::Ipv4(cfg.overlay_ip), cfg.prefix_len));
        });
        let start_index = (random_u64()? as u32) & 0x00ff_ffff;
        let start_port = *EPHEMERAL_PORTS.start() + (random_u64()? % 16000) as u16;
        Ok(Node {
            rate_limiter: RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT),
            secret,
            public,
            overlay_ip: cfg.overlay_ip,
            prefix_len: cfg.prefix_len,
            role: cfg.role,
            tcp_buffer: cfg.tcp_buffer,
            next_health: now + cfg.health.check_interval,
            health_cfg: cfg.health,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            by_ip: HashMap::new(),
            by_key: HashMap::new(),
            next_index: start_index,
            next_port: start_port,
            next_stream: 1,
            iface,
            device,
            sockets: SocketSet::new(Vec::new()),
            streams: HashMap::new(),
            listeners: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            epoch: now,
            now,
            dirty: false,
            next_tick: None,
            scratch: vec![0u8; 65536 + 64],
            totals: Totals::default(),
        })
    }

    /// This node's public key (give it to peers).
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.public.to_bytes())
    }

    /// Replaces this node's private key (`tether vpn rotate-keys`): every peer's sessions are
    /// cleared and the next packet starts a handshake under the new key. Peers must learn the new
    /// public key out of band first.
    pub fn set_private_key(&mut self, key: &SecretKey) {
        self.secret = key.inner().clone();
        self.public = x25519::PublicKey::from(&self.secret);
        self.rate_limiter = RateLimiter::new(&self.public, HANDSHAKE_RATE_LIMIT);
        for p in self.peers.values_mut() {
            p.tunn
                .set_static_private(self.secret.clone(), self.public, None);
            p.wg = WgTimers::default();
            p.wg.last_persistent = Some(self.now);
        }
    }

    /// This node's overlay IP.
    pub fn overlay_ip(&self) -> Ipv4Addr {
        self.overlay_ip
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let mask = if self.prefix_len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix_len.min(32)))
        };
        u32::from(ip) & mask == u32::from(self.overlay_ip) & mask
    }

    fn alloc_index(&mut self) -> u32 {
        loop {
            self.next_index = (self.next_index + 1) & 0x00ff_ffff;
            if !self.by_index.contains_key(&self.next_index) {
                return self.next_index;
            }
        }
    }

    fn new_tunn(&self, cfg: &PeerConfig, index: u32) -> Box<Tunn> {
        Box::new(Tunn::new(
            self.secret.clone(),
            cfg.public_key.to_x25519(),
            None,
            None, // persistent keepalive is run by the node on its own clock
            index,
            None,
        ))
    }

    /// Adds a peer at runtime (enrollment). Its allowed IPs are exactly `overlay_ip/32`.
    pub fn add_peer(&mut self, cfg: PeerConfig, now: Instant) -> Result<PeerId, TunnelError> {
        if cfg.overlay_ip == self.overlay_ip {
            return Err(TunnelError::BadOverlayIp {
                ip: cfg.overlay_ip,
                why: "it is this node's own address",
            });
        }
        if !self.in_subnet(cfg.overlay_ip) {
            return Err(TunnelError::BadOverlayIp {
                ip: cfg.overlay_ip,
                why: "outside the overlay subnet",
            });
        }
        if self.by_key.contains_key(&cfg.public_key.0) {
            return Err(TunnelError::DuplicatePeer("public key"));
        }
        if self.by_ip.contains_key(&cfg.overlay_ip) {
            return Err(TunnelError::DuplicatePeer("overlay IP"));
        }
        let index = self.alloc_index();
        let id = PeerId(index);
        let peer = Peer {
            id,
            index,
            tunn: self.new_tunn(&cfg, index),
            endpoint: cfg.endpoint,
            cfg,
            wg: WgTimers::default(),
            up: false,
            added_at: now,
            last_handshake: None,
            rtt: None,
            rx_bytes: 0,
            tx_bytes: 0,
            handshakes: 0,
            drops: [0; 8],
            health: HealthTrack::new(),
        };
        self.by_index.insert(index, id);
        self.by_ip.insert(peer.cfg.overlay_ip, id);
        self.by_key.insert(peer.cfg.public_key.0, id);
        self.peers.insert(id, peer);
        if self.next_tick.is_none() {
            self.next_tick = Some(now + TICK);
        }
        self.now = now;
        // Persistent keepalive peers (targets behind NAT) connect right away.
        let mut buf = std::mem::take(&mut self.scratch);
        if let Some(p) = self.peers.get_mut(&id)
            && p.cfg.persistent_keepalive.is_some_and(|k| k > 0)
            && p.endpoint.is_some()
        {
            p.wg.last_persistent = Some(now);
            p.keepalive(now, &mut buf, &mut self.transmits, &mut self.totals);
        }
        self.scratch = buf;
        Ok(id)
    }

    /// Removes a peer (revoke). Its streams fail at once with `ConnectionAborted`.
    pub fn remove_peer(&mut self, id: PeerId) -> Result<(), TunnelError> {
        let peer = self
            .peers
            .remove(&id)
            .ok_or(TunnelError::UnknownPeer(id.0))?;
        self.by_index.retain(|_, v| *v != id);
        self.by_ip.remove(&peer.cfg.overlay_ip);
        self.by_key.remove(&peer.cfg.public_key.0);
        let gone_all = self.role == NodeRole::Target && self.peers.is_empty();
        for (sid, m) in self.streams.iter_mut() {
            if m.remote == peer.cfg.overlay_ip || gone_all {
                self.sockets.get_mut::<tcp::Socket>(m.handle).abort();
                m.aborted = true;
                if m.phase != Phase::Closed {
                    m.phase = Phase::Closed;
                    self.events.push_back(Event::StreamClosed(*sid));
                }
            }
        }
        if peer.up {
            self.events.push_back(Event::PeerDown(id));
        }
        if self.peers.is_empty() {
            self.next_tick = None;
        }
        self.dirty = true;
        Ok(())
    }

    /// The peer owning an overlay IP.
    pub fn peer_by_ip(&self, ip: Ipv4Addr) -> Option<PeerId> {
        self.by_ip.get(&ip).copied()
    }

    /// Status of every peer, sorted by overlay IP.
    pub fn status(&self, now: Instant) -> Vec<PeerStatus> {
        let mut v: Vec<PeerStatus> = self.peers.values().map(|p| p.status(now)).collect();
        v.sort_by_key(|s| s.overlay_ip);
        v
    }

    /// Node-wide monotonic counters.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    fn node_drop(&mut self, r: DropReason) {
        self.totals.drops[r.idx()] += 1;
    }

    /// Feeds one UDP datagram received from `from`.
    pub fn handle_datagram(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        self.now = now;
        let pid = match Tunn::parse_incoming_packet(bytes) {
            Err(_) => return self.node_drop(DropReason::Malformed),
            Ok(Packet::HandshakeInit(init)) => {
                let mut cookie = [0u8; 64];
                match self
                    .rate_limiter
                    .verify_packet(Some(from.ip()), bytes, &mut cookie)
                {
                    Ok(_) => {}
                    Err(TunnResult::WriteToNetwork(c)) => {
                        let payload = c.to_vec();
                        self.transmits.push_back(Transmit { dst: from, payload });
                        return;
                    }
                    Err(_) => return self.node_drop(DropReason::Rejected),
                }
                match parse_handshake_anon(&self.secret, &self.public, &init) {
                    Ok(half) => match self.by_key.get(&half.peer_static_public) {
                        Some(id) => *id,
                        None => return self.node_drop(DropReason::UnknownPeer),
                    },
                    Err(_) => return self.node_drop(DropReason::Rejected),
                }
            }
            Ok(Packet::HandshakeResponse(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(id) => *id,
                None => return self.node_drop(DropReason::UnknownPeer),
            },
            Ok(Packet::PacketCookieReply(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(id) => *id,
                None => return self.node_drop(DropReason::UnknownPeer),
            },
            Ok(Packet::PacketData(p)) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(id) => *id,
                None => return self.node_drop(DropReason::UnknownPeer),
            },
        };
        let in_type = msg_type(bytes);
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let mut buf = std::mem::take(&mut self.scratch);
        let r = peer.tunn.decapsulate(Some(from.ip()), bytes, &mut buf);
        let mut authenticated = false;
        let mut flush = false;
        match r {
            TunnResult::WriteToNetwork(p) => {
                let out_type = msg_type(p);
                authenticated = matches!((in_type, out_type), (1, 2) | (2, 4));
                if authenticated {
                    peer.endpoint = Some(from);
                }
                let pkt = p.to_vec();
                if authenticated {
                    peer.wg.last_recv = Some(now);
                    peer.handshake_done(now, in_type == 2, &mut self.totals, &mut self.events);
                }
                if out_type == 3 {
                    self.transmits.push_back(Transmit {
                        dst: from,
                        payload: pkt,
                    });
                } else {
                    peer.emit(pkt, now, &mut self.transmits, &mut self.totals);
                    flush = true;
                }
            }
            TunnResult::WriteToTunnelV4(p, src) => {
                authenticated = true;
                peer.endpoint = Some(from);
                peer.wg.last_recv = Some(now);
                peer.wg.last_data_recv = Some(now);
                if src != peer.cfg.overlay_ip {
                    peer.drop(&mut self.totals, DropReason::SpoofedSource);
                } else {
                    match ipv4_dst(p) {
                        Some(dst) if dst == self.overlay_ip => {
                            self.device.rx.push_back(p.to_vec());
                            self.dirty = true;
                        }
                        Some(dst)
                            if self.role == NodeRole::Hub && self.by_ip.contains_key(&dst) =>
                        {
                            peer.drop(&mut self.totals, DropReason::ForwardDenied)
                        }
                        _ => peer.drop(&mut self.totals, DropReason::NotForUs),
                    }
                }
            }
            TunnResult::WriteToTunnelV6(..) => {
                authenticated = true;
                peer.endpoint = Some(from);
                peer.wg.last_recv = Some(now);
                peer.drop(&mut self.totals, DropReason::Malformed);
            }
            TunnResult::Done => {
                if in_type == 4 {
                    // keepalive
                    authenticated = true;
                    peer.endpoint = Some(from);
                    peer.wg.last_recv = Some(now);
                }
            }
            TunnResult::Err(e) => {
                tracing::trace!(peer = %peer.cfg.name, error = ?e, "datagram rejected");
                peer.drop(&mut self.totals, DropReason::Rejected);
            }
        }
        if authenticated {
            peer.rx_bytes += bytes.len() as u64;
            self.totals.rx_bytes += bytes.len() as u64;
        }
        if flush {
            // Packets boringtun queued while the handshake was in flight.
            while let TunnResult::WriteToNetwork(p) = peer.tunn.decapsulate(None, &[], &mut buf) {
                let pkt = p.to_vec();
                peer.emit(pkt, now, &mut self.transmits, &mut self.totals);
            }
        }
        self.scratch = buf;
    }

    /// Runs whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.dirty = true;
        if self.next_tick.is_some_and(|t| now >= t) {
            self.next_tick = Some(now + TICK);
            self.rate_limiter.reset_count();
            let mut buf = std::mem::take(&mut self.scratch);
            for peer in self.peers.values_mut() {
                peer.tick(
                    now,
                    &mut buf,
                    &mut self.transmits,
                    &mut self.totals,
                    &mut self.events,
                );
            }
            self.scratch = buf;
            self.reap_lingering(now);
        }
        if now >= self.next_health {
            self.next_health = now + self.health_cfg.check_interval;
            self.health_check(now);
        }
    }

    fn health_check(&mut self, now: Instant) {
        let mut rebuild = Vec::new();
        let mut verdicts = Vec::new();
        for peer in self.peers.values_mut() {
            let since_hs =
                now.saturating_duration_since(peer.last_handshake.unwrap_or(peer.added_at));
            verdicts.clear();
            peer.health
                .check(&self.health_cfg, since_hs, now, &mut verdicts);
            for v in &verdicts {
                match v {
                    Verdict::BecameUnhealthy => {
                        self.events.push_back(Event::PeerUnhealthy(peer.id))
                    }
                    Verdict::BecameHealthy => self.events.push_back(Event::PeerHealthy(peer.id)),
                    Verdict::Rebuild => rebuild.push(peer.id),
                }
            }
        }
        for id in rebuild {
            self.rebuild_peer(id, now);
        }
    }

    /// Throws away a peer's WireGuard state (sessions, handshake) and starts over with a fresh
    /// `Tunn` and session index; initiates a handshake when the endpoint is known.
    fn rebuild_peer(&mut self, id: PeerId, now: Instant) {
        let index = self.alloc_index();
        let Some(peer) = self.peers.get(&id) else {
            return;
        };
        let tunn = self.new_tunn(&peer.cfg, index);
        let old = peer.index;
        self.by_index.remove(&old);
        self.by_index.insert(index, id);
        let mut buf = std::mem::take(&mut self.scratch);
        if let Some(peer) = self.peers.get_mut(&id) {
            tracing::info!(peer = %peer.cfg.name, "watchdog rebuilds the WireGuard peer state");
            peer.tunn = tunn;
            peer.index = index;
            peer.wg = WgTimers::default();
            peer.wg.last_persistent = Some(now);
            if peer.endpoint.is_some() {
                peer.force_handshake(now, &mut buf, &mut self.transmits, &mut self.totals);
            }
            self.events.push_back(Event::PeerRebuilt(id));
        }
        self.scratch = buf;
    }

    /// When the driver must call [`Node::handle_timeout`] next (`None`: only on input).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.pump();
        let ts = self.smol_now();
        let smol = self
            .iface
            .poll_at(ts, &self.sockets)
            .map(|t| self.epoch + Duration::from_micros(t.total_micros().max(0) as u64));
        let mut best = self.next_tick;
        if !self.peers.is_empty() {
            best = min_opt(best, Some(self.next_health));
        }
        min_opt(best, smol)
    }

    /// The next datagram to send, in order.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if self.transmits.is_empty() {
            self.pump();
        }
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.pump();
        self.events.pop_front()
    }

    fn smol_now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(
            self.now.saturating_duration_since(self.epoch).as_micros() as i64,
        )
    }

    /// Runs the TCP/IP stack over queued inbound packets and socket writes, and encrypts what it
    /// wants to send.
    fn pump(&mut self) {
        if !self.dirty {
            return;
        }
        self.dirty = false;
        let ts = self.smol_now();
        self.iface.poll(ts, &mut self.device, &mut self.sockets);
        self.route_outbound();
        self.update_streams();
    }

    fn route_outbound(&mut self) {
        let now = self.now;
        while let Some(pkt) = self.device.tx.pop_front() {
            let Some(dst) = ipv4_dst(&pkt) else {
                self.node_drop(DropReason::Malformed);
                continue;
            };
            let pid = match self.by_ip.get(&dst) {
                Some(p) => *p,
                None if self.role == NodeRole::Target
                    && self.peers.len() == 1
                    && self.in_subnet(dst) =>
                {
                    match self.peers.keys().next() {
                        Some(p) => *p,
                        None => continue,
                    }
                }
                None => {
                    self.node_drop(DropReason::NoRoute);
                    continue;
                }
            };
            let Some(peer) = self.peers.get_mut(&pid) else {
                continue;
            };
            let mut out = vec![0u8; (pkt.len() + 32).max(148)];
            let r = peer.tunn.encapsulate(&pkt, &mut out);
            match r {
                TunnResult::WriteToNetwork(p) => {
                    let n = p.len();
                    out.truncate(n);
                    peer.emit(out, now, &mut self.transmits, &mut self.totals);
                }
                TunnResult::Done
                    // Queued inside boringtun behind a handshake we no longer drive: restart one.
                    if peer.wg.attempt.is_none() => {
                        peer.force_handshake(now, &mut out, &mut self.transmits, &mut self.totals);
                    }
                TunnResult::Err(_) => peer.drop(&mut self.totals, DropReason::Rejected),
                _ => {}
            }
        }
    }

    fn new_socket(&self) -> tcp::Socket<'static> {
        let rx = tcp::SocketBuffer::new(vec![0u8; self.tcp_buffer]);
        let tx = tcp::SocketBuffer::new(vec![0u8; self.tcp_buffer]);
        let mut s = tcp::Socket::new(rx, tx);
        s.set_nagle_enabled(false);
        s.set_congestion_control(tcp::CongestionControl::Cubic);
        s
    }

    fn update_streams(&mut self) {
        // Listeners: hand established connections over, keep LISTEN sockets available.
        let ports: Vec<u16> = self.listeners.keys().copied().collect();
        for port in ports {
            let mut accepted = Vec::new();
            let mut relisten = 0usize;
            if let Some(l) = self.listeners.get_mut(&port) {
                l.sockets.retain(|h| {
                    let s = self.sockets.get::<tcp::Socket>(*h);
                    match s.state() {
                        tcp::State::Listen | tcp::State::SynReceived => true,
                        tcp::State::Closed => {
                            relisten += 1;
                            false
                        }
                        _ => {
                            accepted.push(*h);
                            false
                        }
                    }
                });
            }
            for h in accepted {
                let s = self.sockets.get::<tcp::Socket>(h);
                let remote = match s.remote_endpoint().map(|e| e.addr) {
                    Some(IpAddress::Ipv4(ip)) => ip,
                    _ => Ipv4Addr::UNSPECIFIED,
                };
                let id = StreamId(self.next_stream);
                self.next_stream += 1;
                self.streams.insert(
                    id,
                    StreamMeta {
                        handle: h,
                        remote,
                        phase: Phase::Open,
                        reset: false,
                        aborted: false,
                        released_at: None,
                        last_state: s.state(),
                    },
                );
                if let Some(l) = self.listeners.get_mut(&port) {
                    l.ready.push_back(id);
                }
                self.events
                    .push_back(Event::StreamIncoming { port, stream: id });
            }
            let _ = relisten;
            let (listening, total) = match self.listeners.get(&port) {
                Some(l) => (
                    l.sockets
                        .iter()
                        .filter(|h| {
                            self.sockets.get::<tcp::Socket>(**h).state() == tcp::State::Listen
                        })
                        .count(),
                    l.sockets.len(),
                ),
                None => continue,
            };
            let want = LISTEN_BACKLOG
                .saturating_sub(listening)
                .min(MAX_PENDING.saturating_sub(total));
            for _ in 0..want {
                let mut s = self.new_socket();
                if s.listen(port).is_ok() {
                    let h = self.sockets.add(s);
                    if let Some(l) = self.listeners.get_mut(&port) {
                        l.sockets.push(h);
                    }
                }
            }
        }
        // Streams: state transitions and reaping.
        let mut remove = Vec::new();
        for (id, m) in self.streams.iter_mut() {
            let s = self.sockets.get::<tcp::Socket>(m.handle);
            let st = s.state();
            if st != m.last_state {
                if st == tcp::State::Closed
                    && matches!(
                        m.last_state,
                        tcp::State::Established
                            | tcp::State::FinWait1
                            | tcp::State::FinWait2
                            | tcp::State::SynSent
                            | tcp::State::SynReceived
                            | tcp::State::CloseWait
                    )
                    && m.released_at.is_none()
                {
                    m.reset = true;
                }
                m.last_state = st;
            }
            match (m.phase, st) {
                (Phase::Connecting, tcp::State::SynSent | tcp::State::SynReceived) => {}
                (Phase::Connecting, tcp::State::Closed) => {
                    m.phase = Phase::Closed;
                    self.events.push_back(Event::StreamClosed(*id));
                }
                (Phase::Connecting, _) => {
                    m.phase = Phase::Open;
                    self.events.push_back(Event::StreamConnected(*id));
                }
                (Phase::Open, tcp::State::Closed | tcp::State::TimeWait) => {
                    m.phase = Phase::Closed;
                    self.events.push_back(Event::StreamClosed(*id));
                }
                _ => {}
            }
            if m.released_at.is_some() && matches!(st, tcp::State::Closed | tcp::State::TimeWait) {
                remove.push(*id);
            }
        }
        for id in remove {
            if let Some(m) = self.streams.remove(&id) {
                self.sockets.remove(m.handle);
            }
        }
    }

    fn reap_lingering(&mut self, now: Instant) {
        for m in self.streams.values_mut() {
            if m.released_at
                .is_some_and(|t| now.saturating_duration_since(t) >= LINGER)
            {
                self.sockets.get_mut::<tcp::Socket>(m.handle).abort();
            }
        }
    }

    fn alloc_port(&mut self) -> Result<u16, TunnelError> {
        let span = u32::from(*EPHEMERAL_PORTS.end() - *EPHEMERAL_PORTS.start()) + 1;
        for _ in 0..span {
            self.next_port = if self.next_port >= *EPHEMERAL_PORTS.end() {
                *EPHEMERAL_PORTS.start()
            } else {
                self.next_port + 1
            };
            let p = self.next_port;
            let used = self.streams.values().any(|m| {
                self.sockets
                    .get::<tcp::Socket>(m.handle)
                    .local_endpoint()
                    .is_some_and(|e| e.port == p)
            }) || self.listeners.contains_key(&p);
            if !used {
                return Ok(p);
            }
        }
        Err(TunnelError::PortsExhausted)
    }

    /// Opens an overlay TCP connection to `peer_ip:port`. Completion is signalled by
    /// [`Event::StreamConnected`] (or [`Event::StreamClosed`] when refused).
    pub fn connect(&mut self, peer_ip: Ipv4Addr, port: u16) -> Result<StreamId, TunnelError> {
        let routable = self.by_ip.contains_key(&peer_ip)
            || (self.role == NodeRole::Target
                && self.peers.len() == 1
                && self.in_subnet(peer_ip)
                && peer_ip != self.overlay_ip);
        if !routable {
            return Err(TunnelError::NoRoute(peer_ip));
        }
        let local = self.alloc_port()?;
        let mut s = self.new_socket();
        s.connect(
            self.iface.context(),
            (IpAddress::Ipv4(peer_ip), port),
            local,
        )
        .map_err(|e| TunnelError::Connect {
            ip: peer_ip,
            port,
            why: e.to_string(),
        })?;
        let h = self.sockets.add(s);
        let id = StreamId(self.next_stream);
        self.next_stream += 1;
        self.streams.insert(
            id,
            StreamMeta {
                handle: h,
                remote: peer_ip,
                phase: Phase::Connecting,
                reset: false,
                aborted: false,
                released_at: None,
                last_state: tcp::State::SynSent,
            },
        );
        self.dirty = true;
        Ok(id)
    }

    /// Starts accepting overlay TCP connections on `port`.
    pub fn listen(&mut self, port: u16) -> Result<(), TunnelError> {
        if self.listeners.contains_key(&port) {
            return Err(TunnelError::AlreadyListening(port));
        }
        self.listeners.insert(port, Listener::default());
        self.dirty = true;
        self.update_streams();
        Ok(())
    }

    /// Stops listening on `port`; connections not yet accepted are aborted.
    pub fn unlisten(&mut self, port: u16) {
        if let Some(l) = self.listeners.remove(&port) {
            for h in l.sockets {
                self.sockets.remove(h);
            }
            for id in l.ready {
                self.release(id);
            }
        }
    }

    /// The next accepted connection on `port`, if any.
    pub fn accept(&mut self, port: u16) -> Option<StreamId> {
        self.pump();
        self.listeners.get_mut(&port)?.ready.pop_front()
    }

    fn meta(&self, id: StreamId) -> io::Result<&StreamMeta> {
        self.streams
            .get(&id)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "no such tunnel stream"))
    }

    fn check_alive(m: &StreamMeta) -> io::Result<()> {
        if m.aborted {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "tunnel peer was removed",
            ));
        }
        if m.reset {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "tunnel stream was reset by the peer",
            ));
        }
        Ok(())
    }

    /// Reads received bytes. `Ok(0)` is end of stream; `WouldBlock` means nothing yet.
    pub fn recv(&mut self, id: StreamId, buf: &mut [u8]) -> io::Result<usize> {
        self.pump();
        let m = self.meta(id)?;
        let h = m.handle;
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        if s.can_recv() {
            let n = s
                .recv_slice(buf)
                .map_err(|e| io::Error::other(e.to_string()))?;
            self.dirty = true; // window update
            return Ok(n);
        }
        let st = s.state();
        Self::check_alive(self.meta(id)?)?;
        match st {
            tcp::State::SynSent | tcp::State::SynReceived | tcp::State::Listen => {
                Err(io::ErrorKind::WouldBlock.into())
            }
            tcp::State::Closed
                if self.meta(id)?.phase == Phase::Connecting
                    || self.meta(id)?.last_state == tcp::State::SynSent =>
            {
                Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "overlay TCP connection refused or timed out",
                ))
            }
            _ => {
                let s = self.sockets.get::<tcp::Socket>(h);
                if s.may_recv() {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(0)
                }
            }
        }
    }

    /// Queues bytes to send; returns how many were taken. `WouldBlock` when the send buffer is
    /// full (back-pressure) or the connection is still opening.
    pub fn send(&mut self, id: StreamId, data: &[u8]) -> io::Result<usize> {
        let m = self.meta(id)?;
        Self::check_alive(m)?;
        let h = m.handle;
        let phase = m.phase;
        let s = self.sockets.get_mut::<tcp::Socket>(h);
        match s.state() {
            tcp::State::SynSent | tcp::State::SynReceived => {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            tcp::State::Closed if phase != Phase::Open => {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    "overlay TCP connection refused or timed out",
                ));
            }
            _ => {}
        }
        if !s.may_send() {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "tunnel stream is closed for sending",
            ));
        }
        let n = s
            .send_slice(data)
            .map_err(|e| io::Error::other(e.to_string()))?;
        if n == 0 && !data.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.dirty = true;
        Ok(n)
    }

    /// Sends FIN after the queued data (half-close); reading continues.
    pub fn close(&mut self, id: StreamId) {
        if let Some(m) = self.streams.get(&id) {
            self.sockets.get_mut::<tcp::Socket>(m.handle).close();
            self.dirty = true;
        }
    }

    /// The application dropped the stream: close it and free it once TCP is done.
    pub fn release(&mut self, id: StreamId) {
        if let Some(m) = self.streams.get_mut(&id) {
            m.released_at = Some(self.now);
            let s = self.sockets.get_mut::<tcp::Socket>(m.handle);
            if s.may_recv() && s.can_recv() {
                // Unread data: a graceful close would lie to the peer; reset instead.
                s.abort();
            } else {
                s.close();
            }
            self.dirty = true;
        }
    }

    /// Readiness of a stream (closed streams are readable/writable so callers see the error).
    pub fn readiness(&mut self, id: StreamId) -> Readiness {
        let Some(m) = self.streams.get(&id) else {
            return Readiness {
                readable: true,
                writable: true,
                connected: false,
                closed: true,
            };
        };
        let s = self.sockets.get::<tcp::Socket>(m.handle);
        let dead = m.aborted || m.reset || m.phase == Phase::Closed;
        let opening = matches!(s.state(), tcp::State::SynSent | tcp::State::SynReceived);
        Readiness {
            readable: dead || s.can_recv() || (!opening && !s.may_recv()),
            writable: dead || (!opening && (s.can_send() || !s.may_send())),
            connected: m.phase != Phase::Connecting,
            closed: dead,
        }
    }

    /// Whether the node has work for its driver (datagrams or events queued, or the stack needs a
    /// run). Drivers that share the node with stream tasks check this after stream calls.
    pub fn has_output(&self) -> bool {
        self.dirty || !self.transmits.is_empty() || !self.events.is_empty()
    }

    /// Open streams (for tests and metrics).
    pub fn stream_count(&self) -> usize {
        self.streams.len()
    }

    /// The overlay IP at the other end of a stream.
    pub fn stream_peer(&self, id: StreamId) -> Option<Ipv4Addr> {
        self.streams.get(&id).map(|m| m.remote)
    }

    /// Test hook: encrypts a raw IPv4 packet to a peer as if the stack had produced it (used to
    /// prove the hub refuses target-to-target traffic from a misbehaving peer).
    #[doc(hidden)]
    pub fn inject_ip_packet(&mut self, peer: PeerId, packet: &[u8], now: Instant) {
        self.now = now;
        if let Some(p) = self.peers.get_mut(&peer) {
            let mut out = vec![0u8; (packet.len() + 32).max(148)];
            if let TunnResult::WriteToNetwork(w) = p.tunn.encapsulate(packet, &mut out) {
                let n = w.len();
                out.truncate(n);
                p.emit(out, now, &mut self.transmits, &mut self.totals);
            }
        }
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}
