//! The sans-IO core: WireGuard peers (boringtun `Tunn`) + a userspace TCP/IP stack (smoltcp).
//!
//! The [`Node`] knows nothing about sockets, tasks or the wall clock: its driver feeds it UDP
//! datagrams and the current time and drains datagrams to send ([`Node::poll_transmit`]), events
//! ([`Node::poll_event`]) and the next deadline ([`Node::poll_timeout`]).
//!
//! This module is the node proper: peer table and routing (star rules, drop accounting), the
//! datagram path, timers and the watchdog. `peer` holds one WireGuard peer and the timer rules
//! run for it; `stack` the smoltcp TCP/IP stack and its streams; `types` the ids and outputs
//! all three share.

mod autotune;
mod path;
mod peer;
mod stack;
#[cfg(test)]
mod stack_flat;
#[cfg(test)]
mod stack_tests;
mod types;

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use boringtun::x25519;

pub use self::path::PathConfig;
use self::path::{Decision, Path, RelayInfo};
use self::peer::{Control, Peer, msg_type};
pub use self::peer::{PeerConfig, PeerStatus};
use self::stack::{BufferLimits, Stack};
pub use self::stack::{
    Changed, DEFAULT_TCP_BUFFER, DEFAULT_TCP_BUFFER_MAX, DEFAULT_TCP_MEMORY_BUDGET,
    FIXED_TCP_BUFFER, MAX_STREAMS_PER_PEER, Readiness,
};
pub use self::types::{
    Dest, DropReason, Event, PeerId, RelayId, RelayStatus, StreamId, Totals, Transmit,
};
use crate::health::{HealthConfig, Verdict};
use crate::{PublicKey, SecretKey, TunnelError};

/// The hub's overlay address in the default subnet `10.99.0.0/16`.
pub const DEFAULT_HUB_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
/// Prefix length of the default overlay subnet.
pub const DEFAULT_PREFIX_LEN: u8 = 16;
/// Inner MTU: 1420 is WireGuard's default and fits IPv4 and IPv6 underlays with a 1500 MTU.
pub const DEFAULT_MTU: usize = 1420;
/// How often per-peer WireGuard timers are evaluated.
const TICK: Duration = Duration::from_secs(1);
/// Handshake initiations accepted per second from unknown senders before cookies are demanded.
const HANDSHAKE_RATE_LIMIT: u64 = 100;

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
    /// Per-direction TCP buffer each stream starts with and shrinks back to when idle.
    pub tcp_buffer: usize,
    /// Most a stream's buffer may grow to per direction with its bandwidth-delay product
    /// (autotuning); at or below `tcp_buffer`, buffers stay fixed at `tcp_buffer`.
    pub tcp_buffer_max: usize,
    /// Most bytes all streams may hold above `tcp_buffer` together (their growth).
    pub tcp_memory_budget: usize,
    /// Inner IP MTU.
    pub mtu: usize,
    /// Health / watchdog settings.
    pub health: HealthConfig,
    /// Path selection timers (direct UDP vs relays).
    pub path: PathConfig,
}

impl NodeConfig {
    /// A config with the defaults: subnet /16, stream buffers from 64 KiB growing up to 8 MiB
    /// within a 128 MiB node budget (autotuning; set `tcp_buffer_max` to `tcp_buffer`, e.g.
    /// [`FIXED_TCP_BUFFER`], for fixed buffers), MTU 1420.
    pub fn new(private_key: SecretKey, overlay_ip: Ipv4Addr, role: NodeRole) -> Self {
        NodeConfig {
            private_key,
            overlay_ip,
            prefix_len: DEFAULT_PREFIX_LEN,
            role,
            tcp_buffer: DEFAULT_TCP_BUFFER,
            tcp_buffer_max: DEFAULT_TCP_BUFFER_MAX,
            tcp_memory_budget: DEFAULT_TCP_MEMORY_BUDGET,
            mtu: DEFAULT_MTU,
            health: HealthConfig::default(),
            path: PathConfig::default(),
        }
    }
}

/// One WireGuard endpoint plus its userspace TCP/IP stack. See the module docs.
pub struct Node {
    secret: x25519::StaticSecret,
    public: x25519::PublicKey,
    overlay_ip: Ipv4Addr,
    prefix_len: u8,
    role: NodeRole,
    health_cfg: HealthConfig,
    peers: HashMap<PeerId, Peer>,
    by_index: HashMap<u32, PeerId>,
    by_ip: HashMap<Ipv4Addr, PeerId>,
    by_key: HashMap<[u8; 32], PeerId>,
    next_index: u32,
    stack: Stack,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    now: Instant,
    next_tick: Option<Instant>,
    next_health: Instant,
    rate_limiter: RateLimiter,
    scratch: Vec<u8>,
    totals: Totals,
    path_cfg: PathConfig,
    relays: Vec<RelayInfo>,
    /// Overlay IPs of peers whose path just changed: their streams retransmit at once.
    rerouted: Vec<Ipv4Addr>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("overlay_ip", &self.overlay_ip)
            .field("role", &self.role)
            .field("peers", &self.peers.len())
            .field("streams", &self.stack.stream_count())
            .finish_non_exhaustive()
    }
}

fn random_u64() -> Result<u64, TunnelError> {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).map_err(|e| TunnelError::Random(e.to_string()))?;
    Ok(u64::from_le_bytes(b))
}

fn ipv4_dst(p: &[u8]) -> Option<Ipv4Addr> {
    if p.len() >= 20 && p[0] >> 4 == 4 {
        Some(Ipv4Addr::new(p[16], p[17], p[18], p[19]))
    } else {
        None
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
        let seed = random_u64()?;
        let start_index = (random_u64()? as u32) & 0x00ff_ffff;
        let stack = Stack::new(
            cfg.overlay_ip,
            cfg.prefix_len,
            cfg.mtu,
            BufferLimits {
                floor: cfg.tcp_buffer,
                max: cfg.tcp_buffer_max,
                budget: cfg.tcp_memory_budget,
            },
            seed,
            random_u64()?,
            now,
        );
        Ok(Node {
            rate_limiter: RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT),
            secret,
            public,
            overlay_ip: cfg.overlay_ip,
            prefix_len: cfg.prefix_len,
            role: cfg.role,
            next_health: now + cfg.health.check_interval,
            health_cfg: cfg.health,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            by_ip: HashMap::new(),
            by_key: HashMap::new(),
            next_index: start_index,
            stack,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            now,
            next_tick: None,
            scratch: vec![0u8; 65536 + 64],
            totals: Totals::default(),
            path_cfg: cfg.path,
            relays: Vec::new(),
            rerouted: Vec::new(),
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
            p.reset_timers(self.now);
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
        let peer = Peer::new(id, index, self.new_tunn(&cfg, index), cfg, now);
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
            p.send_control(
                Control::Keepalive,
                now,
                &mut buf,
                &mut self.transmits,
                &mut self.totals,
            );
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
        let ip = peer.cfg.overlay_ip;
        self.stack
            .abort_streams(|remote| remote == ip || gone_all, &mut self.events);
        if peer.up {
            self.events.push_back(Event::PeerDown(id));
        }
        if self.peers.is_empty() {
            self.next_tick = None;
        }
        self.stack.mark_dirty();
        Ok(())
    }

    /// The peer owning an overlay IP.
    pub fn peer_by_ip(&self, ip: Ipv4Addr) -> Option<PeerId> {
        self.by_ip.get(&ip).copied()
    }

    /// Status of every peer, sorted by overlay IP.
    pub fn status(&self, now: Instant) -> Vec<PeerStatus> {
        let mut v: Vec<PeerStatus> = self
            .peers
            .values()
            .map(|p| p.status(now, &self.relays))
            .collect();
        v.sort_by_key(|s| s.overlay_ip);
        v
    }

    /// Node-wide monotonic counters.
    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// A peer's name (O(1); [`Node::status`] builds every peer's status).
    pub fn peer_name(&self, id: PeerId) -> Option<&str> {
        self.peers.get(&id).map(|p| p.cfg.name.as_str())
    }

    /// Number of peers.
    pub fn peer_count(&self) -> usize {
        self.peers.len()
    }

    /// The peer a receiver index (ours: peer index << 8 | session) belongs to.
    fn peer_by_index(&self, receiver_idx: u32) -> Option<PeerId> {
        self.by_index.get(&(receiver_idx >> 8)).copied()
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
                        self.transmits.push_back(Transmit {
                            dst: Dest::Udp(from),
                            payload,
                        });
                        return;
                    }
                    Err(_) => return self.node_drop(DropReason::Rejected),
                }
                match parse_handshake_anon(&self.secret, &self.public, &init) {
                    Ok(half) => self.by_key.get(&half.peer_static_public).copied(),
                    Err(_) => return self.node_drop(DropReason::Rejected),
                }
            }
            Ok(Packet::HandshakeResponse(p)) => self.peer_by_index(p.receiver_idx),
            Ok(Packet::PacketCookieReply(p)) => self.peer_by_index(p.receiver_idx),
            Ok(Packet::PacketData(p)) => self.peer_by_index(p.receiver_idx),
        };
        let Some(pid) = pid else {
            return self.node_drop(DropReason::UnknownPeer);
        };
        self.receive(pid, Src::Udp(from), bytes, now);
    }

    /// Feeds one datagram that `relay` delivered from the WireGuard key `src`. It is attributed
    /// to the peer with that key (WireGuard then checks it belongs to that peer's sessions) and
    /// never changes the peer's UDP endpoint; a key that is not a peer is dropped and counted
    /// ([`DropReason::RelayUnknownKey`]).
    pub fn handle_relayed(&mut self, relay: RelayId, src: PublicKey, bytes: &[u8], now: Instant) {
        self.now = now;
        let Some(pid) = self.by_key.get(&src.0).copied() else {
            return self.node_drop(DropReason::RelayUnknownKey);
        };
        if Tunn::parse_incoming_packet(bytes).is_err() {
            if let Some(p) = self.peers.get_mut(&pid) {
                p.drop(&mut self.totals, DropReason::Malformed);
            }
            return;
        }
        // No unknown-sender rate limiting here: the relay authenticated the key and limits
        // each key's rate itself.
        self.receive(pid, Src::Relay(relay, src), bytes, now);
    }

    /// Decrypts a datagram for peer `pid` that arrived from `src`.
    fn receive(&mut self, pid: PeerId, src: Src, bytes: &[u8], now: Instant) {
        let in_type = msg_type(bytes);
        let Some(peer) = self.peers.get_mut(&pid) else {
            return;
        };
        let mut ctx = PathCtx {
            relays: &self.relays,
            cfg: &self.path_cfg,
            follow: self.role == NodeRole::Hub,
            events: &mut self.events,
            transmits: &mut self.transmits,
            totals: &mut self.totals,
            rerouted: &mut self.rerouted,
        };
        let mut buf = std::mem::take(&mut self.scratch);
        let r = peer.tunn.decapsulate(src.ip(), bytes, &mut buf);
        let mut authenticated = false;
        let mut flush = false;
        match r {
            TunnResult::WriteToNetwork(p) => {
                let out_type = msg_type(p);
                authenticated = matches!((in_type, out_type), (1, 2) | (2, 4));
                let pkt = p.to_vec();
                if authenticated {
                    peer.wg.last_recv = Some(now);
                    peer.handshake_done(now, in_type == 2, ctx.totals, ctx.events);
                    heard(peer, src, now, &mut ctx);
                }
                if out_type == 3 {
                    ctx.transmits.push_back(Transmit {
                        dst: src.dest(),
                        payload: pkt,
                    });
                } else {
                    peer.emit(pkt, now, ctx.transmits, ctx.totals);
                    flush = true;
                }
            }
            TunnResult::WriteToTunnelV4(p, from_ip) => {
                authenticated = true;
                peer.wg.last_recv = Some(now);
                peer.wg.last_data_recv = Some(now);
                if from_ip != peer.cfg.overlay_ip {
                    peer.drop(ctx.totals, DropReason::SpoofedSource);
                } else {
                    match ipv4_dst(p) {
                        Some(dst) if dst == self.overlay_ip => self.stack.receive(p.to_vec()),
                        Some(dst)
                            if self.role == NodeRole::Hub && self.by_ip.contains_key(&dst) =>
                        {
                            peer.drop(ctx.totals, DropReason::ForwardDenied)
                        }
                        _ => peer.drop(ctx.totals, DropReason::NotForUs),
                    }
                }
                heard(peer, src, now, &mut ctx);
            }
            TunnResult::WriteToTunnelV6(..) => {
                authenticated = true;
                peer.wg.last_recv = Some(now);
                peer.drop(ctx.totals, DropReason::Malformed);
                heard(peer, src, now, &mut ctx);
            }
            TunnResult::Done => {
                if in_type == 4 {
                    // keepalive
                    authenticated = true;
                    peer.wg.last_recv = Some(now);
                    heard(peer, src, now, &mut ctx);
                }
            }
            TunnResult::Err(e) => {
                tracing::trace!(peer = %peer.cfg.name, error = ?e, "datagram rejected");
                peer.drop(ctx.totals, DropReason::Rejected);
            }
        }
        if authenticated {
            peer.rx_bytes += bytes.len() as u64;
            ctx.totals.rx_bytes += bytes.len() as u64;
        }
        if flush {
            // Packets boringtun queued while the handshake was in flight.
            while let TunnResult::WriteToNetwork(p) = peer.tunn.decapsulate(None, &[], &mut buf) {
                let pkt = p.to_vec();
                peer.emit(pkt, now, ctx.transmits, ctx.totals);
            }
        }
        self.scratch = buf;
        if !self.rerouted.is_empty() {
            self.kick_rerouted(now);
        }
    }

    /// Registers a relay (initially down) and returns its id. Relays are tried in the order
    /// they are added.
    pub fn add_relay(&mut self, name: String) -> RelayId {
        let id = RelayId(u16::try_from(self.relays.len()).unwrap_or(u16::MAX));
        self.relays.push(RelayInfo { name, up: false });
        id
    }

    /// The driver holds a working connection to `relay` now.
    pub fn relay_up(&mut self, relay: RelayId, now: Instant) {
        self.now = now;
        let Some(r) = self.relays.get_mut(usize::from(relay.0)) else {
            return;
        };
        r.up = true;
        // Peers a relay going down left on a direct path that does not work (a relay restart)
        // come back at once. O(peers), like relay_down: relays come and go rarely.
        for peer in self.peers.values_mut() {
            if !peer.path.stranded || peer.path.current != Path::Direct {
                continue;
            }
            if let Some(r) = peer.path.choose_relay(&self.relays, None)
                && peer.set_path(
                    Path::Relay(r),
                    now,
                    &self.relays,
                    &self.path_cfg,
                    &mut self.events,
                    &mut self.transmits,
                    &mut self.totals,
                )
            {
                self.rerouted.push(peer.cfg.overlay_ip);
            }
        }
        if self.role == NodeRole::Target {
            // A target whose hub has no UDP endpoint (reachable only through relays) uses the
            // relay at once; a hub waits to hear from its targets.
            for peer in self.peers.values_mut() {
                if relay_only(
                    peer,
                    now,
                    &self.relays,
                    &self.path_cfg,
                    &mut self.events,
                    &mut self.transmits,
                    &mut self.totals,
                ) {
                    self.rerouted.push(peer.cfg.overlay_ip);
                }
            }
        }
        self.kick_rerouted(now);
    }

    /// The connection to `relay` is lost (or it said it is going away): its peers move to the
    /// next relay that is up, or back to direct.
    pub fn relay_down(&mut self, relay: RelayId, now: Instant) {
        self.now = now;
        let Some(r) = self.relays.get_mut(usize::from(relay.0)) else {
            return;
        };
        r.up = false;
        for peer in self.peers.values_mut() {
            if peer.path.current != Path::Relay(relay) {
                continue;
            }
            let to = match peer.path.choose_relay(&self.relays, Some(relay)) {
                Some(r) => Path::Relay(r),
                None => {
                    peer.path.stranded = true;
                    Path::Direct
                }
            };
            if peer.set_path(
                to,
                now,
                &self.relays,
                &self.path_cfg,
                &mut self.events,
                &mut self.transmits,
                &mut self.totals,
            ) {
                self.rerouted.push(peer.cfg.overlay_ip);
            }
        }
        self.kick_rerouted(now);
    }

    /// Streams to peers whose path changed retransmit now (a backoff earned on the old path
    /// would stall them).
    fn kick_rerouted(&mut self, now: Instant) {
        for ip in std::mem::take(&mut self.rerouted) {
            self.stack.retransmit_now(ip, now);
        }
    }

    /// The relays in registration order, and whether each is connected.
    pub fn relays(&self) -> Vec<RelayStatus> {
        self.relays
            .iter()
            .map(|r| RelayStatus {
                name: r.name.clone(),
                connected: r.up,
            })
            .collect()
    }

    /// A peer's current path label (`direct` or `relay:NAME`).
    pub fn peer_path(&self, id: PeerId) -> Option<String> {
        self.peers
            .get(&id)
            .map(|p| path::label(&self.relays, p.path.current))
    }

    /// Every peer's WireGuard public key (what a relay must allow for this node).
    pub fn peer_keys(&self) -> Vec<PublicKey> {
        self.peers.values().map(|p| p.cfg.public_key).collect()
    }

    /// Runs whatever timers are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        self.stack.mark_dirty();
        if self.next_tick.is_some_and(|t| now >= t) {
            self.next_tick = Some(now + TICK);
            self.rate_limiter.reset_count();
            let mut buf = std::mem::take(&mut self.scratch);
            let target = self.role == NodeRole::Target;
            for peer in self.peers.values_mut() {
                peer.tick(
                    now,
                    &mut buf,
                    &mut self.transmits,
                    &mut self.totals,
                    &mut self.events,
                );
                // Path rules: O(1) per peer; probes only for peers on a relay.
                let switched = match peer.path.tick(now, &self.relays, &self.path_cfg, !target) {
                    Decision::Switch(to) => peer.set_path(
                        to,
                        now,
                        &self.relays,
                        &self.path_cfg,
                        &mut self.events,
                        &mut self.transmits,
                        &mut self.totals,
                    ),
                    Decision::Stay if target => relay_only(
                        peer,
                        now,
                        &self.relays,
                        &self.path_cfg,
                        &mut self.events,
                        &mut self.transmits,
                        &mut self.totals,
                    ),
                    Decision::Stay => false,
                };
                if switched {
                    self.rerouted.push(peer.cfg.overlay_ip);
                }
                if peer.path.probe_due(now, &self.path_cfg) {
                    peer.send_probe(&mut buf, &mut self.transmits, &mut self.totals);
                }
            }
            self.scratch = buf;
            self.kick_rerouted(now);
            self.stack.reap_lingering(now);
            // Once a tick the driver asks every parked stream (a safety net; between ticks it
            // asks only the streams that changed).
            self.stack.mark_all_changed();
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
            peer.reset_timers(now);
            if peer.endpoint.is_some() || matches!(peer.path.current, Path::Relay(_)) {
                peer.send_control(
                    Control::Handshake,
                    now,
                    &mut buf,
                    &mut self.transmits,
                    &mut self.totals,
                );
            }
            self.events.push_back(Event::PeerRebuilt(id));
        }
        self.scratch = buf;
    }

    /// When the driver must call [`Node::handle_timeout`] next (`None`: only on input).
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.pump();
        let smol = self.stack.poll_at(self.now);
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

    /// Runs the TCP/IP stack over queued inbound packets and socket writes, and encrypts what it
    /// wants to send.
    fn pump(&mut self) {
        if !self.stack.take_dirty() {
            return;
        }
        self.stack.poll(self.now);
        self.route_outbound();
        self.stack.update_streams(&mut self.events);
        self.stack.tune(self.now);
    }

    fn route_outbound(&mut self) {
        let now = self.now;
        while let Some(pkt) = self.stack.pop_outbound() {
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
            let wants_reply = tcp_wants_reply(&pkt);
            let r = peer.tunn.encapsulate(&pkt, &mut out);
            match r {
                TunnResult::WriteToNetwork(p) => {
                    let n = p.len();
                    out.truncate(n);
                    peer.emit(out, now, &mut self.transmits, &mut self.totals);
                    if wants_reply {
                        peer.path.expects_reply(now);
                    }
                }
                TunnResult::Done
                    // Queued inside boringtun behind a handshake we no longer drive: restart one.
                    if peer.wg.attempt.is_none() => {
                        peer.send_control(Control::Handshake, now, &mut out, &mut self.transmits, &mut self.totals);
                    }
                TunnResult::Err(_) => peer.drop(&mut self.totals, DropReason::Rejected),
                _ => {}
            }
        }
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
        self.stack.connect(peer_ip, port)
    }

    /// Starts accepting overlay TCP connections on `port`.
    pub fn listen(&mut self, port: u16) -> Result<(), TunnelError> {
        self.stack.listen(port)
    }

    /// Stops listening on `port`; connections not yet accepted are aborted.
    pub fn unlisten(&mut self, port: u16) {
        self.stack.unlisten(port, self.now);
    }

    /// The next accepted connection on `port`, if any.
    pub fn accept(&mut self, port: u16) -> Option<StreamId> {
        self.pump();
        self.stack.accept(port)
    }

    /// Reads received bytes. `Ok(0)` is end of stream; `WouldBlock` means nothing yet.
    pub fn recv(&mut self, id: StreamId, buf: &mut [u8]) -> io::Result<usize> {
        self.pump();
        self.stack.recv(id, buf)
    }

    /// Queues bytes to send; returns how many were taken. `WouldBlock` when the send buffer is
    /// full (back-pressure) or the connection is still opening.
    pub fn send(&mut self, id: StreamId, data: &[u8]) -> io::Result<usize> {
        self.stack.send(id, data)
    }

    /// Sends FIN after the queued data (half-close); reading continues.
    pub fn close(&mut self, id: StreamId) {
        self.stack.close(id);
    }

    /// The application dropped the stream: close it and free it once TCP is done.
    pub fn release(&mut self, id: StreamId) {
        self.stack.release(id, self.now);
    }

    /// Readiness of a stream (closed streams are readable/writable so callers see the error).
    pub fn readiness(&mut self, id: StreamId) -> Readiness {
        self.stack.readiness(id)
    }

    /// Whether the node has work for its driver (datagrams or events queued, or the stack needs a
    /// run). Drivers that share the node with stream tasks check this after stream calls.
    pub fn has_output(&self) -> bool {
        self.stack.is_dirty()
            || !self.transmits.is_empty()
            || !self.events.is_empty()
            || self.stack.has_changed()
    }

    /// The streams whose [`Node::readiness`] may have changed since the last call (and forgets
    /// them): a driver that parks tasks on streams asks only these, not every parked stream
    /// after every run. [`Changed::All`] after an overflow and once per timer tick.
    pub fn take_changed(&mut self) -> Changed {
        self.stack.take_changed()
    }

    /// Open streams (for tests and metrics).
    pub fn stream_count(&self) -> usize {
        self.stack.stream_count()
    }

    /// Bytes of TCP buffers the open streams hold, both directions (for tests and metrics).
    pub fn stream_buffer_bytes(&self) -> usize {
        self.stack.buffer_bytes()
    }

    /// Bytes the streams hold above their floors: the part of
    /// [`NodeConfig::tcp_memory_budget`] in use.
    pub fn stream_buffer_bytes_grown(&self) -> usize {
        self.stack.buffer_bytes_grown()
    }

    /// Incoming streams reset because their peer already held
    /// [`MAX_STREAMS_PER_PEER`] streams.
    pub fn streams_refused_over_cap(&self) -> u64 {
        self.stack.refused_over_cap
    }

    /// The overlay IP at the other end of a stream.
    pub fn stream_peer(&self, id: StreamId) -> Option<Ipv4Addr> {
        self.stack.stream_peer(id)
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

/// Where a datagram came from.
#[derive(Debug, Clone, Copy)]
enum Src {
    /// Over UDP from this address.
    Udp(SocketAddr),
    /// Through this relay from this key.
    Relay(RelayId, PublicKey),
}

impl Src {
    fn ip(self) -> Option<IpAddr> {
        match self {
            Src::Udp(a) => Some(a.ip()),
            Src::Relay(..) => None,
        }
    }

    /// Where an answer to it goes.
    fn dest(self) -> Dest {
        match self {
            Src::Udp(a) => Dest::Udp(a),
            Src::Relay(relay, key) => Dest::Relay { relay, key },
        }
    }
}

/// The node state a path switch touches, borrowed next to one peer.
struct PathCtx<'a> {
    relays: &'a [RelayInfo],
    cfg: &'a PathConfig,
    /// Follow the relay the peer uses (the hub does).
    follow: bool,
    events: &'a mut VecDeque<Event>,
    transmits: &'a mut VecDeque<Transmit>,
    totals: &'a mut Totals,
    rerouted: &'a mut Vec<Ipv4Addr>,
}

/// An authenticated packet from `peer` arrived from `src`: roam the UDP endpoint (UDP only) and
/// apply the path rules.
fn heard(peer: &mut Peer, src: Src, now: Instant, ctx: &mut PathCtx<'_>) {
    let d = match src {
        Src::Udp(from) => {
            peer.endpoint = Some(from);
            peer.path.udp_auth(now)
        }
        Src::Relay(relay, _) => peer.path.relay_auth(
            relay,
            now,
            peer.endpoint.is_some(),
            ctx.follow,
            ctx.relays,
            ctx.cfg,
        ),
    };
    if let Decision::Switch(to) = d
        && peer.set_path(
            to,
            now,
            ctx.relays,
            ctx.cfg,
            ctx.events,
            ctx.transmits,
            ctx.totals,
        )
    {
        ctx.rerouted.push(peer.cfg.overlay_ip);
    } else if peer.path.take_confirmed() {
        ctx.rerouted.push(peer.cfg.overlay_ip);
    }
}

/// A target's peer without a UDP endpoint can only be reached through a relay: use one as soon
/// as one is up.
fn relay_only(
    peer: &mut Peer,
    now: Instant,
    relays: &[RelayInfo],
    cfg: &PathConfig,
    events: &mut VecDeque<Event>,
    transmits: &mut VecDeque<Transmit>,
    totals: &mut Totals,
) -> bool {
    if peer.endpoint.is_some() || peer.path.current != Path::Direct {
        return false;
    }
    match peer.path.choose_relay(relays, None) {
        Some(r) => peer.set_path(Path::Relay(r), now, relays, cfg, events, transmits, totals),
        None => false,
    }
}

fn min_opt(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// Whether an inner IPv4 packet is a TCP segment the peer's stack must acknowledge: one with
/// payload, SYN or FIN (a bare ACK is never answered). Anything else, or a malformed header,
/// is `false`.
fn tcp_wants_reply(pkt: &[u8]) -> bool {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != 6 {
        return false;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]])).min(pkt.len());
    let Some(tcp) = pkt.get(ihl..total) else {
        return false;
    };
    if tcp.len() < 20 {
        return false;
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    let flags = tcp[13];
    tcp.len() > doff || flags & 0x03 != 0
}

#[cfg(test)]
mod tests {
    use super::tcp_wants_reply;

    fn segment(flags: u8, payload: usize) -> Vec<u8> {
        let total = 40 + payload;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[9] = 6;
        p[20 + 12] = 5 << 4;
        p[20 + 13] = flags;
        p
    }

    #[test]
    fn only_segments_the_peer_must_acknowledge_expect_a_reply() {
        assert!(tcp_wants_reply(&segment(0x18, 100)), "data");
        assert!(tcp_wants_reply(&segment(0x02, 0)), "SYN");
        assert!(tcp_wants_reply(&segment(0x11, 0)), "FIN");
        assert!(!tcp_wants_reply(&segment(0x10, 0)), "a bare ACK");
        let mut udp = segment(0x18, 100);
        udp[9] = 17;
        assert!(!tcp_wants_reply(&udp), "not TCP");
        assert!(!tcp_wants_reply(&segment(0x18, 100)[..30]), "truncated");
        assert!(!tcp_wants_reply(&[0x60; 60]), "IPv6");
    }
}
